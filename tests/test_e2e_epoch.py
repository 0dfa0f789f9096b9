"""The real daemon when its store goes backwards (issue 11 item 21), and a server that
only knows live events (item 19), against a real TLS broker.

- The WAL is deleted after a SIGKILL (the store falls back to its last checkpoint), or
  ``locker.db`` is left zero-length: the daemon compares its store with the state it
  published itself, starts (or announces) a new epoch with ``epoch_started``, its events
  of the new epoch carry it from seq 1, and a signed ``open`` that already ran is refused
  when replayed.
- ``lockerctl watch``'s bookkeeping (``FleetView``) that first sees a live event while 21
  are queued acknowledges nothing past the gap: every queued event survives.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from locker.fleet.client import Incoming
from locker.fleet.watch import FleetView
from locker.sim.broker import Broker
from locker.sim.cabinet import SimCabinet
from tests.broker import ServerClient, broker  # noqa: F401 - fixture
from tests.conftest import small_tmpfs, wait_for
from tests.e2e import (
    Cabinets,
    cabinets,  # noqa: F401 - fixture
    command,
    db_last_seq,
    db_outbox_depth,
    failure_context,
    guess_burst,
    signed,
    start_online,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

LOCKER = "SIM-0001"
P = f"lockers/{LOCKER}"


@pytest.fixture
def server(broker: Broker) -> Iterator[ServerClient]:  # noqa: F811
    srv = ServerClient(broker, auto_ack=False)
    srv.start()
    yield srv
    srv.stop()


def last_state(srv: ServerClient) -> dict[str, Any]:
    states = [r.json() for r in srv.messages(f"{P}/state")]
    return states[-1] if states else {}


def epoch_started(srv: ServerClient) -> list[dict[str, Any]]:
    return [e for e in srv.events(LOCKER) if e["type"] == "epoch_started"]


def commit_events(cab: SimCabinet, upto: int) -> int:
    """Wrong keypad codes until the daemon's last seq reaches ``upto`` (keys typed before the
    keypad port is open are lost, so type again until they count); returns the last seq."""

    def done() -> bool:
        missing = upto - db_last_seq(cab)
        if missing > 0:
            guess_burst(cab, missing, stall_s=0.5)
        return missing <= 0

    wait_for(done, 10, interval=0.2, what=f"events up to seq {upto}")
    return db_last_seq(cab)


def run_open_then_crash(srv: ServerClient, cab: SimCabinet) -> tuple[bytes, str, int]:
    """Start, open A1 by a signed command, commit a few events, checkpoint, commit more (in
    the WAL only), wait until the retained state shows them, SIGKILL. Returns the open's
    token, the epoch, and the last seq the broker saw published."""
    start_online(srv, cab)
    token, _ = signed(cab, "open", {"compartment": "A1", "reason": "test"})
    assert command(srv, cab, token, b"first")["status"] == "done"
    commit_events(cab, db_last_seq(cab) + 3)
    with contextlib.closing(sqlite3.connect(cab.state_dir / "locker.db")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpointed = db_last_seq(cab)
    guess_burst(cab, 6)
    wait_for(lambda: db_last_seq(cab) > checkpointed + 1, 10, what="events in the WAL only")
    last = db_last_seq(cab)
    wait_for(lambda: last_state(srv).get("last_seq", 0) >= last, 10, what="state published")
    epoch = str(last_state(srv)["epoch"])
    cab.kill()
    return token, epoch, last


def lose_store_and_restart(
    srv: ServerClient, cab: SimCabinet, *, zero_length: bool
) -> tuple[bytes, str, int, dict[str, Any]]:
    """``run_open_then_crash``, then the WAL is lost (and, with ``zero_length``, the main
    file too), then a restart; returns what ``run_open_then_crash`` does and the
    ``epoch_started`` event the restarted daemon published."""
    token, epoch, published = run_open_then_crash(srv, cab)
    for suffix in ("-wal", "-shm"):
        (cab.state_dir / f"locker.db{suffix}").unlink(missing_ok=True)
    if zero_length:
        (cab.state_dir / "locker.db").write_bytes(b"")
    start_online(srv, cab)
    wait_for(lambda: epoch_started(srv), 15, what="epoch_started\n" + failure_context(cab))
    return token, epoch, published, epoch_started(srv)[-1]


def test_wal_lost_after_a_crash_starts_a_new_epoch_and_a_replay_is_refused(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    cabinets: Cabinets,  # noqa: F811
) -> None:
    cab = cabinets.make(broker, timing={"door_open_timeout_s": 3.0})
    token, epoch, published, ev = lose_store_and_restart(server, cab, zero_length=False)
    assert ev["data"]["reason"] == "rolled_back", ev
    assert ev["data"]["previous_epoch"] == epoch
    data = ev["data"]
    assert isinstance(data, dict) and data["previous_last_seq"] >= published
    assert data["abandoned_last_seq"] < published  # the store fell back to its checkpoint
    assert ev["epoch"] != epoch
    replay = command(server, cab, token, b"replay")
    assert replay["status"] != "done", replay
    assert replay["error"]["code"] == "expired"
    new = [e for e in server.events(LOCKER) if e["epoch"] == ev["epoch"]]
    assert sorted({e["seq"] for e in new}) == list(range(1, max(e["seq"] for e in new) + 1))
    assert last_state(server)["epoch"] == ev["epoch"]


def test_a_zero_length_database_is_a_new_store_that_refuses_older_commands(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    cabinets: Cabinets,  # noqa: F811
) -> None:
    cab = cabinets.make(broker, timing={"door_open_timeout_s": 3.0})
    token, epoch, published, ev = lose_store_and_restart(server, cab, zero_length=True)
    assert ev["data"]["reason"] == "store_replaced", ev
    data = ev["data"]
    assert isinstance(data, dict) and data["previous_epoch"] == epoch
    assert data["previous_last_seq"] >= published
    replay = command(server, cab, token, b"replay")
    assert replay["status"] != "done", replay


def test_first_contact_on_a_live_event_loses_no_queued_event(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    cabinets: Cabinets,  # noqa: F811
) -> None:
    """Issue 11 item 19 with the real daemon: 21 events are queued (nobody acks), then a
    server with FleetView's bookkeeping sees a live event first and acks what it holds."""
    cab = cabinets.make(broker)
    start_online(server, cab)
    commit_events(cab, 21)
    view = FleetView()
    live_seq = commit_events(cab, db_last_seq(cab) + 1)
    wait_for(lambda: live_seq in server.unique_seqs(LOCKER), 10, what="the live event")
    live = next(
        r for r in server.messages(lambda r: "/evt/" in r.topic) if r.json()["seq"] == live_seq
    )
    view.handle(Incoming(live.topic, live.payload, False, 1))
    assert view.acks_due() == {}  # nothing held contiguously yet: no ack at all
    assert view.resyncs_due() == [LOCKER]
    resync, _ = signed(cab, "resync", {})
    before = len(server.messages(lambda r: "/evt/" in r.topic))
    assert command(server, cab, resync, b"resync")["status"] == "done"
    wait_for(
        lambda: len(server.messages(lambda r: "/evt/" in r.topic)) >= before + 22,
        10,
        what="the backlog re-sent",
    )
    for r in server.messages(lambda r: "/evt/" in r.topic)[before:]:
        view.handle(Incoming(r.topic, r.payload, False, 1))
    ack = view.acks_due()[LOCKER]
    assert ack.upto_seq >= 22
    server.publish(f"{P}/ack", json.dumps(ack.payload()))
    wait_for(lambda: db_outbox_depth(cab) == db_last_seq(cab) - ack.upto_seq, 10, what="acked")
    held = [e["seq"] for e in view.lockers[LOCKER].events]
    assert held == list(range(1, ack.upto_seq + 1))


@pytest.fixture
def small_state_dir(cabinets: Cabinets, broker: Broker) -> Iterator[SimCabinet]:  # noqa: F811
    """A cabinet whose state directory is a small tmpfs of its own (needs root)."""
    cab = cabinets.make(broker, timing={"door_open_timeout_s": 3.0})
    with small_tmpfs(cab.state_dir, "size=4m,mode=0700"):
        try:
            yield cab
        finally:
            cab.close()  # before the unmount, as the daemon writes there until it stops


def test_a_daemon_killed_during_a_storage_fault_reuses_no_seq(
    server: ServerClient, small_state_dir: SimCabinet
) -> None:
    """Issue 11, storage_fault's open variant: the event sent from memory while the disk is
    full holds a seq the database does not; lockerd SIGKILLed before the disk comes back
    used to give that seq to its next ``started``. The retained state counting it goes out
    before the event, the restarted daemon compares with it on the store as opened and sends
    nothing before: a new epoch, and no (epoch, seq) is ever two different events."""
    cab = small_state_dir
    start_online(server, cab)
    commit_events(cab, db_last_seq(cab) + 3)
    ballast = cab.state_dir / "ballast"
    with ballast.open("wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)

    def faults() -> list[dict[str, Any]]:
        return [e for e in server.events(LOCKER) if e["type"] == "storage_fault"]

    def fault_seen() -> bool:
        if not faults():
            guess_burst(cab, 1, stall_s=0.2)  # a commit that cannot be written
        return bool(faults())

    wait_for(fault_seen, 15, interval=0.2, what="storage_fault\n" + failure_context(cab))
    fault = faults()[0]
    state = last_state(server)
    assert (state["epoch"], state["last_seq"]) == (fault["epoch"], fault["seq"])
    assert state["last_seq"] - state["outbox_depth"] == 0  # nothing acked: nothing gone
    cab.kill()
    ballast.unlink()
    start_online(server, cab)
    wait_for(lambda: epoch_started(server), 15, what="epoch_started\n" + failure_context(cab))
    ev = epoch_started(server)[-1]
    assert ev["data"]["reason"] == "rolled_back"
    assert ev["data"]["previous_last_seq"] == fault["seq"]
    assert ev["epoch"] != fault["epoch"]
    wait_for(lambda: last_state(server).get("epoch") == ev["epoch"], 10, what="new state")
    ids: dict[tuple[str, int], set[str]] = {}
    for e in server.events(LOCKER):
        ids.setdefault((e["epoch"], e["seq"]), set()).add(e["event_id"])
    assert all(len(v) == 1 for v in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}
    started = [e for e in server.events(LOCKER) if e["type"] == "started"]
    assert started[-1]["epoch"] == ev["epoch"]
