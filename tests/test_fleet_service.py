"""The fleet service end to end: a real Mosquitto with TLS, a real lockerd, the REST API.

A carrier's system issues a parcel through the API; a courier deposits it with the keypad
code the API returned; the customer collects it with the QR token the API returned; the
ledger shows each step. Then ``lockerctl serve`` is SIGKILLed while events stream and started
again: nothing lost or doubled, and the locker's outbox is emptied by the acks.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from locker.fleet.service import db
from locker.sim.broker import Broker, free_port
from locker.sim.cabinet import ACCESSIBLE
from tests.conftest import wait_for
from tests.fleet_rig import (
    add_user,
    api,
    cabinet,
    fleet_dir,
    service_broker,
    site,
    start_service,
    wait_online,
)

_ = service_broker


def _states(client: object, parcel: str) -> list[str]:
    doc = client.get(f"/api/v1/parcels/{parcel}").json()  # type: ignore[attr-defined]
    return [h["what"] for h in doc["history"]]


def test_parcel_issued_by_api_deposited_by_keypad_collected_by_qr(
    tmp_path: Path, service_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    d = fleet_dir(tmp_path, service_broker)
    carrier = add_user(d, "acme", "carrier")
    viewer = add_user(d, "watcher", "viewer")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    try:
        cab.start()
        with api(service, carrier.token) as c, api(service, viewer.token) as v:
            wait_online(v)
            r = c.post(
                "/api/v1/parcels",
                json={"locker": "SIM-0001", "parcel": "PCL-1", "size": "S"},
            )
            assert r.status_code == 201, r.text
            issued = r.json()
            assert issued["compartment"] and issued["pickup_token"].startswith("LK1:")
            assert issued["dropoff_code"] != issued["pickup_code"]
            assert issued["qr_svg"].lstrip().startswith("<")
            cab.press(issued["dropoff_code"] + "#")
            wait_for(
                lambda: v.get("/api/v1/parcels/PCL-1").json()["state"] == "deposited",
                15,
                what="deposit in the ledger",
            )
            cab.scan(issued["pickup_token"])
            wait_for(
                lambda: v.get("/api/v1/parcels/PCL-1").json()["state"] == "collected",
                15,
                what="collection in the ledger",
            )
            hist = _states(v, "PCL-1")
            for step in ("issued", "parcel_reserved", "parcel_deposited", "parcel_collected"):
                assert step in hist, hist
            # the locker's own event names the signer: the carrier's own key, kid acme
            reserved = [h for h in v.get("/api/v1/parcels/PCL-1").json()["history"]]
            reserved = [h for h in reserved if h["what"] == "parcel_reserved"]
            assert [h["actor"] for h in reserved] == ["acme"]
            assert reserved[0]["detail"]["data"]["kid"] == "acme"
            with service.engine.connect() as conn:
                actors = conn.execute(select(db.commands.c.actor, db.commands.c.status)).all()
            assert ("acme", "done") in [tuple(a) for a in actors]
            # the QR image can be fetched again, identical token
            assert c.get("/api/v1/parcels/PCL-1/qr.svg").text == issued["qr_svg"]
            assert c.get("/api/v1/parcels/PCL-1/qr.png").content.startswith(b"\x89PNG")
            # codes never reach the locker's or the service's logs
            assert issued["dropoff_code"] not in cab.log()
            assert issued["pickup_code"] not in cab.log()
            for secret in (issued["dropoff_code"], issued["pickup_code"], issued["pickup_token"]):
                assert secret not in caplog.text
            assert "acme" in caplog.text  # the service's log names who sent the command
            # a second issue of the same active parcel is refused with its code
            again = {"locker": "SIM-0001", "parcel": "PCL-2", "size": "M"}
            first = c.post("/api/v1/parcels", json=again)
            assert first.status_code == 201
            r = c.post("/api/v1/parcels", json=again)  # a retry after a 201 that got lost
            assert (r.status_code, r.json()["error"]["code"]) == (409, "duplicate_parcel")
            # ... says how to get codes again, and that way works: cancel, issue again
            assert "cancel it (POST /api/v1/parcels/PCL-2/cancel)" in r.json()["error"]["message"]
            lost = c.post("/api/v1/parcels/PCL-2/cancel", json={"reason": "codes lost"})
            assert lost.status_code == 200, lost.text
            wait_for(
                lambda: v.get("/api/v1/parcels/PCL-2").json()["state"] == "cancelled",
                15,
                what="PCL-2 cancelled in the ledger",
            )
            reissued = c.post("/api/v1/parcels", json=again)
            assert reissued.status_code == 201, reissued.text
            assert reissued.json()["dropoff_code"] != first.json()["dropoff_code"]
            # accessible: the locker picks among its accessible compartments only
            step_free = {"locker": "SIM-0001", "parcel": "PCL-3", "size": "S", "accessible": True}
            r = c.post("/api/v1/parcels", json=step_free)
            assert r.status_code == 201, r.text
            assert r.json()["compartment"] in ACCESSIBLE
            # cancelled through the API: the locker's assignment_cancelled moves the ledger
            r = c.post("/api/v1/parcels/PCL-3/cancel", json={"reason": "customer moved"})
            assert (r.status_code, r.json()["status"]) == (200, "done"), r.text
            wait_for(
                lambda: v.get("/api/v1/parcels/PCL-3").json()["state"] == "cancelled",
                15,
                what="cancellation in the ledger",
            )
            assert c.post("/api/v1/parcels/NOPE/cancel").json()["error"]["code"] == (
                "unknown_parcel"
            )
    finally:
        service.stop()
        cab.close()


def test_an_unanswered_assign_gives_its_codes_with_the_504_and_they_work_when_it_runs(
    tmp_path: Path, service_broker: Broker
) -> None:
    """Found by a newcomer: a 504 lost the codes while the locker, back a moment later,
    reserved a compartment for them: blocked for 48 h with codes nobody had. The 504 now
    carries the codes (given once), the parcel is ``pending`` (its QR renders), a second
    issue is refused while it is, and the codes work once the assign runs."""
    d = fleet_dir(tmp_path, service_broker)
    carrier = add_user(d, "acme", "carrier")
    viewer = add_user(d, "watcher", "viewer")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    service.actions.reply_timeout_s = 1.0
    parcel = {"locker": "SIM-0001", "parcel": "SLOW-1", "size": "S"}
    try:
        cab.start()
        with api(service, carrier.token) as c, api(service, viewer.token) as v:
            wait_online(v)
            assert cab.proc is not None
            cab.proc.send_signal(signal.SIGSTOP)  # connected, but not answering
            try:
                r = c.post("/api/v1/parcels", json=parcel)
                assert v.get("/api/v1/parcels/SLOW-1").json()["state"] == "pending"
                again = c.post("/api/v1/parcels", json=parcel)
            finally:
                cab.proc.send_signal(signal.SIGCONT)
            assert r.status_code == 504, r.text
            body = r.json()
            assert body["error"]["code"] == "locker_timeout"
            assert "cancel" in body["error"]["message"]
            issued = body["issued"]
            assert issued["pickup_token"].startswith("LK1:") and issued["qr_svg"]
            assert again.status_code == 409
            assert again.json()["error"]["code"] == "assign_pending"
            assert "issued" not in again.json()  # the codes are given once
            wait_for(
                lambda: v.get("/api/v1/parcels/SLOW-1").json()["state"] == "reserved",
                15,
                what="the assign run once the locker answers again",
            )
            assert c.get("/api/v1/parcels/SLOW-1/qr.svg").status_code == 200  # carriers may
            cab.press(issued["dropoff_code"] + "#")
            wait_for(
                lambda: v.get("/api/v1/parcels/SLOW-1").json()["state"] == "deposited",
                15,
                what="deposit with the codes of the 504",
            )
    finally:
        service.stop()
        cab.close()


def test_service_sigkilled_while_events_stream_loses_and_doubles_nothing(
    tmp_path: Path, service_broker: Broker
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    op = add_user(d, "ops", "operator")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    port = free_port()
    proc = serve_process(d, port, tmp_path / "serve.log")
    cab.start()
    url = f"sqlite:///{d / 'fleet.db'}"
    engine = db.make_engine(url)
    try:
        with api_at(port, op.token) as c:
            wait_for(lambda: _get_ok(c, "/api/v1/lockers"), 20, what="service up, locker known")
            for i in range(4):
                r = c.post(
                    "/api/v1/lockers/SIM-0001/commands",
                    json={"action": "lockdown", "args": {"on": i % 2 == 0}, "reason": "drill"},
                )
                assert r.status_code == 200, r.text
            # Wrong codes: counted guesses, so one access_denied each (garbage such as "1#" is
            # aggregated per burst); the sixth meets the back-off and is refused "throttled".
            for i in range(3):
                cab.press(f"9000000{i}#")  # access_denied events streaming in
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            for i in range(3, 6):
                cab.press(f"9000000{i}#")  # more while the service is dead
            proc = serve_process(d, port, tmp_path / "serve.log")

            def complete() -> bool:
                with engine.connect() as conn:
                    last = conn.execute(select(db.lockers.c.last_seq)).scalar()
                    n = conn.execute(select(func.count()).select_from(db.events)).scalar_one()
                    upto = conn.execute(select(db.streams.c.contiguous)).scalar()
                return (
                    bool(last) and n == last == upto and _types(engine).count("access_denied") >= 6
                )

            wait_for(complete, 40, what="every event stored once after the SIGKILL")
            with engine.connect() as conn:
                seqs = list(
                    conn.execute(select(db.events.c.seq).order_by(db.events.c.seq)).scalars()
                )
            assert seqs == list(range(1, len(seqs) + 1))
            wait_for(lambda: _outbox_empty(c), 20, what="the locker's outbox emptied by acks")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        engine.dispose()
        cab.close()


def _types(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(db.events.c.type)).scalars())


def _get_ok(c: httpx.Client, path: str) -> bool:
    try:
        r = c.get(path)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and bool(r.json())  # bool(): json() is Any


def _outbox_empty(c: httpx.Client) -> bool:
    try:  # the restarted service may store events before its HTTP server is up
        doc = c.get("/api/v1/lockers/SIM-0001").json()
    except httpx.TransportError:
        return False
    return bool(doc["outbox_depth"] == 0)


def serve_process(d: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locker.fleet.ctl",
                "serve",
                "--fleet",
                str(d),
                "--http",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def api_at(port: int, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_broker_restart_the_service_reconnects_and_keeps_ingesting(
    tmp_path: Path, service_broker: Broker
) -> None:
    with site(tmp_path, service_broker) as (service, cab, viewer), api(service, viewer.token) as v:

        def denied() -> int:
            evs = v.get("/api/v1/lockers/SIM-0001/events?limit=1000").json()
            return sum(e["type"] == "access_denied" for e in evs)

        wait_for(lambda: v.get("/api/v1/lockers").json(), 15, what="locker known")
        service_broker.restart()
        cab.press("1#")
        wait_for(lambda: denied() == 1, 40, what="an event after the broker restart")
        wait_for(
            lambda: v.get("/api/v1/lockers/SIM-0001").json()["outbox_depth"] == 0,
            30,
            what="acked after the restart",
        )


def test_a_wiped_state_directory_is_a_new_epoch_not_duplicates(
    tmp_path: Path, service_broker: Broker
) -> None:
    with site(tmp_path, service_broker) as (service, cab, viewer):
        with api(service, viewer.token) as v:

            def doc() -> dict[str, Any]:
                found: dict[str, Any] = v.get("/api/v1/lockers/SIM-0001").json()
                return found

            wait_for(lambda: v.get("/api/v1/lockers").json(), 15, what="locker known")
            wait_for(lambda: doc()["outbox_depth"] == 0, 15, what="first epoch acked")
            first = doc()["epoch"]
            cab.stop()
            shutil.rmtree(cab.state_dir)  # a new SD card: the store starts again at seq 1
            cab.state_dir.mkdir()
            cab.start()
            wait_for(lambda: doc()["epoch"] not in ("", first), 20, what="a new epoch")
            wait_for(lambda: doc()["outbox_depth"] == 0, 20, what="new epoch acked")
            second = doc()["epoch"]
        with service.engine.connect() as conn:
            streams = dict(conn.execute(select(db.streams.c.epoch, db.streams.c.contiguous)).all())
            kinds = conn.execute(select(db.reports.c.kind)).scalars().all()
            started = conn.execute(
                select(func.count())
                .select_from(db.events)
                .where(db.events.c.type == "started", db.events.c.seq == 1)
            ).scalar_one()
        assert set(streams) == {first, second} and all(streams.values())
        assert "epoch_change" in kinds
        assert started == 2, "seq 1 of each epoch stored, neither taken for a duplicate"
