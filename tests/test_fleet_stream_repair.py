"""A fleet stream stuck for a real reason, with real components: Mosquitto with TLS, a real
``lockerd`` (SimCabinet) or a light locker speaking the contract, the real fleet service on
SQLite and on PostgreSQL.

1. A mid-stream gap. The locker's ``mqtt.ack_timeout_s`` is 600 s, so only the service's
   ``resync`` can fill it within the test's deadline. The gap is made as ``make simulate``
   saw it after a broker restart: the service's worker goes away and its session with it
   (Mosquitto kept no shared-subscription messages for it), the locker publishes some events
   that nobody in the share receives, then the worker comes back while more events come.
   ``lockerctl watch`` (its ``Watcher`` restarted on its event log) follows the same rule.
2. An event the service cannot store as sent (a 70-character compartment at seq 5, between
   good seqs 4 and 6) is held as a placeholder: the locker is acknowledged up to 6, and the
   report and the operator alarm exist.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from locker.fleet.client import CommandSigner
from locker.fleet.service import db
from locker.fleet.watch import EventLog, FleetView, Watcher
from locker.sim.broker import SERVER_CN, Broker, Pki, server_client
from locker.sim.cabinet import COMMAND_KID, SimCabinet
from tests.broker import paho_client
from tests.conftest import wait_for
from tests.fleet_rig import WORKER_2, LightLocker, cabinet, fleet_dir, start_service
from tests.pg import Postgres, postgres

_ = postgres
OBSERVER = "observer"  # a server identity that watches the locker's events outside the share
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(
        tmp_path / "broker",
        pki=Pki(tmp_path / "pki"),
        server_users=(SERVER_CN, WORKER_2, OBSERVER),
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _db_url(request: pytest.FixtureRequest, database: str, name: str) -> str | None:
    """None: the fleet directory's SQLite file; else a fresh PostgreSQL database."""
    if database == "sqlite":
        return None
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database(name)


class Observer:
    """Every seq the locker publishes, seen through a plain (not shared) subscription."""

    def __init__(self, broker: Broker, locker: str) -> None:
        self.seqs: set[int] = set()
        self._lock = threading.Lock()
        self.client = paho_client(broker.endpoint(OBSERVER), OBSERVER)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"lockers/{locker}/evt/#", qos=1)
        assert subscribed.wait(10), "observer subscribed"

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.seqs.add(int(json.loads(msg.payload)["seq"]))

    @property
    def last(self) -> int:
        with self._lock:
            return max(self.seqs, default=0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def forget_session(broker: Broker, client_id: str) -> None:
    """End ``client_id``'s persistent session (and its shared subscription) on the broker:
    connect with a clean start and no session expiry, then leave."""
    client = paho_client(broker.endpoint(client_id), client_id)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(broker.host, broker.port, clean_start=True)
    client.loop_start()
    try:
        assert connected.wait(10), f"{client_id} connected to end its session"
    finally:
        client.disconnect()
        client.loop_stop()


def _held(engine: Engine, locker: str = "SIM-0001") -> tuple[int, list[int]]:
    """(the stream's contiguous, every stored seq in order) of ``locker``'s one epoch."""
    with engine.connect() as conn:
        upto = conn.execute(
            select(func.max(db.streams.c.contiguous)).where(db.streams.c.locker == locker)
        ).scalar()
        seqs = conn.execute(
            select(db.events.c.seq).where(db.events.c.locker == locker).order_by(db.events.c.seq)
        ).scalars()
        return int(upto or 0), list(seqs)


def _reports(engine: Engine, kind: str) -> list[tuple[float, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.reports.c.at, db.reports.c.detail)
            .where(db.reports.c.kind == kind)
            .order_by(db.reports.c.id)
        ).all()
    return [(r.at, r.detail) for r in rows]


@pytest.mark.parametrize("database", DATABASES)
def test_a_gap_in_mid_stream_is_filled_by_resync_not_by_the_ack_timeout(
    tmp_path: Path, broker: Broker, request: pytest.FixtureRequest, database: str
) -> None:
    url = _db_url(request, database, "gap_resync")
    d = fleet_dir(tmp_path, broker)  # gap_resync_s: the default, 2 s
    cab = cabinet(d, broker, tmp_path / "cab", mqtt={"ack_timeout_s": 600})
    observer = Observer(broker, "SIM-0001")
    service = start_service(d, db_url=url)
    engine = db.make_engine(service.cfg.db_url)
    second = None
    try:
        cab.start()
        wait_for(
            lambda: observer.last > 0 and _held(engine)[0] == observer.last,
            20,
            what="the locker's first events held",
        )
        service.stop()
        forget_session(broker, SERVER_CN)  # nobody is in the share: what follows is lost
        before = observer.last
        cab.press("90000001#")
        cab.press("90000002#")
        wait_for(lambda: observer.last >= before + 2, 15, what="events while no worker is up")
        lost = observer.last
        second = start_service(d, db_url=url)  # subscribed when it returns
        cab.press("90000003#")
        wait_for(lambda: _held(engine)[1][-1] > lost, 10, what="an event past the gap")
        started = time.monotonic()
        wait_for(
            lambda: _held(engine) == (observer.last, list(range(1, observer.last + 1))),
            10,
            what="every seq held contiguously, the gap filled by resync",
        )
        took = time.monotonic() - started
        # the first report of the gap (the resent events may arrive in more than one batch,
        # each reporting the rest of the gap as it shrinks)
        made = [r for r in _reports(engine, "gap") if r[1]["missing_from"] == before + 1]
        assert made, "a real gap was made"
        gap = made[0]
        resyncs = _reports(engine, "gap_resync")
        assert [r[1]["missing_from"] for r in resyncs] == [before + 1]
        assert resyncs[0][1]["age_s"] >= 2.0, "not before gap_resync_s"
        filled = [r for r in _reports(engine, "gap_filled") if r[0] >= gap[0]]
        assert filled, "the gap was reported filled"
        print(
            f"\n[{database}] gap {before + 1}-{lost}: open {filled[0][0] - gap[0]:.2f} s, "
            f"resync at {resyncs[0][1]['age_s']:.2f} s; held {took:.2f} s after the next event"
        )
        wait_for(
            lambda: second is not None and second.worker.alive,
            1,
            what="the second worker still runs",
        )
    finally:
        if second is not None:
            second.stop()
        service.stop()
        engine.dispose()
        observer.close()
        cab.close()


def _watch(broker: Broker, cab: SimCabinet, journal: Path, lines: list[str]) -> Watcher:
    """``lockerctl watch``'s machinery on its event log, connected and started."""
    log = EventLog(journal)
    client = server_client(broker, keepalive_s=5)
    watcher = Watcher(
        client,
        FleetView(log=log),
        lines.append,
        log=log,
        signer=CommandSigner(cab.command_key, COMMAND_KID),
    )
    client.connect()
    watcher.start()
    return watcher


def _close(watcher: Watcher) -> None:
    watcher.stop()
    watcher.client.close()
    assert watcher.log is not None
    watcher.log.close()


def test_lockerctl_watch_fills_a_gap_in_mid_stream_with_resync(
    tmp_path: Path, broker: Broker
) -> None:
    cab = SimCabinet(tmp_path / "cab", broker=broker, mqtt={"ack_timeout_s": 600})
    observer = Observer(broker, cab.locker_id)
    lines: list[str] = []
    journal = tmp_path / "events"
    watcher = _watch(broker, cab, journal, lines)

    def held() -> int:
        stream = (
            watcher.view.lockers[cab.locker_id].stream
            if cab.locker_id in watcher.view.lockers
            else None
        )
        return 0 if stream is None else stream.contiguous

    try:
        cab.start()
        wait_for(lambda: 0 < observer.last == held(), 20, what="the first events held")
        _close(watcher)
        forget_session(broker, SERVER_CN)  # what follows is lost to the watch
        before = observer.last
        cab.press("90000001#")
        cab.press("90000002#")
        wait_for(lambda: observer.last >= before + 2, 15, what="events while the watch is away")
        lost = observer.last
        watcher = _watch(broker, cab, journal, lines)  # restarted on its log
        assert held() == before
        cab.press("90000003#")
        wait_for(lambda: any("gap, missing seq" in line for line in lines), 10, what="the gap")
        wait_for(lambda: held() == observer.last > lost, 10, what="the gap filled by resync")
        assert any(
            line.startswith(f"{cab.locker_id}: gap {before + 1}-{lost} for ")
            and line.endswith(" s: resync sent")
            for line in lines
        ), lines
        assert watcher.errors == []
    finally:
        _close(watcher)
        observer.close()
        cab.close()


@pytest.mark.parametrize("database", DATABASES)
def test_an_event_that_cannot_be_stored_as_sent_does_not_block_its_stream(
    tmp_path: Path, broker: Broker, request: pytest.FixtureRequest, database: str
) -> None:
    url = _db_url(request, database, "bad_event")
    d = fleet_dir(tmp_path, broker)
    service = start_service(d, db_url=url)
    light = LightLocker(broker, "LIGHT-9", epoch="e-bad")
    try:
        light.publish([1, 2, 3, 4])
        light.publish([5], compartment="C" * 70)  # the failing input
        light.publish([6])
        wait_for(lambda: light.acked == 6, 15, what="the ack past the bad event at seq 5")
        with service.engine.connect() as conn:
            held = conn.execute(
                select(db.events.c.type, db.events.c.body).where(db.events.c.seq == 5)
            ).one()
            alarms = conn.execute(select(db.alarms.c.kind, db.alarms.c.state)).all()
        assert held.type == "invalid_event"
        assert held.body["data"]["problem"].startswith("compartment is not a printable")
        assert '"compartment":"' + "C" * 70 in held.body["data"]["raw"]
        assert [tuple(a) for a in alarms] == [("invalid_event", "open")]
        reports = _reports(service.engine, "invalid_event")
        assert [r[1]["seq"] for r in reports] == [5]
        # the locker resends it (its ack was lost, say): a duplicate, no second report
        light.publish([5], compartment="C" * 70)
        light.publish([7])
        wait_for(lambda: light.acked == 7, 15, what="the stream goes on")
        assert len(_reports(service.engine, "invalid_event")) == 1
    finally:
        light.close()
        service.stop()
