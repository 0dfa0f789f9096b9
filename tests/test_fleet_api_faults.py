"""What a newcomer who tried to break the fleet service's REST API found, each now a test with
real components: a TLS Mosquitto, a real lockerd, the service (in-process, or ``lockerctl
serve`` as a process where a signal is the fault), PostgreSQL where the fault was its own.

- a SIGTERM while ``POST /parcels`` waited for the locker lost the codes of an assign that
  ran later; now the parcel is recorded ``pending`` before the assign goes out and the
  waiting request gets its 504 with the codes;
- a locker known to be offline cost every call the full reply time-out;
- ``extend`` could shorten the pickup window (or set it to 2106);
- a NUL in a reason or note was a 500 on PostgreSQL;
- a collected parcel's id issued again reused the old row (old dates, ``reminded`` kept);
- a parcel cancelled after its deposit showed ``cancelled`` while still inside;
- actions on a parcel in a final state were signed and sent (and rejected by the locker);
- events of an unknown locker were ``200 []``.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from locker.fleet.service import db
from locker.fleet.service.actions import ActionError, check_reason
from locker.sim.broker import Broker, free_port
from tests.conftest import wait_for
from tests.fleet_rig import add_user, api, cabinet, fleet_dir, service_broker, start_service
from tests.pg import Postgres, postgres
from tests.test_fleet_service import api_at, serve_process

_ = (service_broker, postgres)


def _state(c: httpx.Client, parcel: str) -> Any:
    return c.get(f"/api/v1/parcels/{parcel}").json().get("state")


def _wait_state(c: httpx.Client, parcel: str, state: str) -> None:
    wait_for(lambda: _state(c, parcel) == state, 15, what=f"{parcel} {state} in the ledger")


def _up(c: httpx.Client) -> bool:
    try:
        return bool(c.get("/api/v1/lockers").json())
    except httpx.TransportError:
        return False


def test_sigterm_while_an_assign_waits_answers_504_with_the_codes_and_keeps_the_parcel(
    tmp_path: Path, service_broker: Broker
) -> None:
    """The reported case: SIGTERM to ``lockerctl serve`` 2 s into ``POST /parcels`` for a
    locker that does not answer. Was: a plain-text 500, no parcels row, the codes gone while
    the assign ran later. Now: a JSON 504 with the codes, the parcel ``pending`` (with its
    token's data) before the assign was sent, and the codes work once the locker runs it."""
    d = fleet_dir(tmp_path, service_broker)
    carrier = add_user(d, "acme", "carrier")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    port = free_port()
    log = tmp_path / "serve.log"
    proc = serve_process(d, port, log)
    engine = db.make_engine(f"sqlite:///{d / 'fleet.db'}")
    got: dict[str, httpx.Response] = {}
    try:
        cab.start()
        with api_at(port, carrier.token) as c:
            wait_for(lambda: _up(c), 20, what="service up, locker known")
            assert cab.proc is not None
            cab.proc.send_signal(signal.SIGSTOP)  # online for the broker, silent
            try:
                body = {"locker": "SIM-0001", "parcel": "SIG-1", "size": "S"}
                post = threading.Thread(
                    target=lambda: got.update(r=c.post("/api/v1/parcels", json=body))
                )
                post.start()

                def sent() -> bool:
                    with engine.connect() as conn:
                        return conn.execute(select(db.commands.c.action)).first() is not None

                wait_for(sent, 10, what="the assign recorded as sent")
                with engine.connect() as conn:  # recorded before it went out
                    row = conn.execute(select(db.parcels)).one()
                assert (row.parcel, row.state) == ("SIG-1", "pending")
                assert row.token_id and row.token_exp
                time.sleep(1)  # the fault needs the request waiting inside the reply time-out
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                post.join(15)
                assert not post.is_alive()
                assert proc.wait(15) == 0
                assert time.monotonic() - started < 5  # well inside the 10 s reply time-out
            finally:
                cab.proc.send_signal(signal.SIGCONT)
        r = got["r"]
        assert r.status_code == 504, r.text
        doc = r.json()
        assert doc["error"]["code"] == "locker_timeout"
        assert "shutting down" in doc["error"]["message"]
        issued = doc["issued"]
        assert issued["pickup_token"].startswith("LK1:") and issued["dropoff_code"]
        assert "CancelledError" not in log.read_text()
        proc = serve_process(d, port, log)
        with api_at(port, carrier.token) as c:
            wait_for(lambda: _up(c), 20, what="service up again")
            _wait_state(c, "SIG-1", "reserved")  # the assign ran: the record followed it
            cab.press(issued["dropoff_code"] + "#")
            _wait_state(c, "SIG-1", "deposited")  # with the codes the 504 carried
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        engine.dispose()
        cab.close()


def test_a_locker_known_offline_is_answered_at_once_saying_since_when(
    tmp_path: Path, service_broker: Broker
) -> None:
    """Was: each call waited the full 10 s reply time-out. Now at once: 504
    ``locker_offline`` naming since when; the command waits in the locker's session (an
    assign's codes come with the 504, the parcel ``pending``) and runs when it is back."""
    d = fleet_dir(tmp_path, service_broker)
    op = add_user(d, "ops", "operator")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    try:
        cab.start()
        with api(service, op.token) as c:
            wait_for(lambda: c.get("/api/v1/lockers").json() != [], 15, what="locker known")
            cab.stop()
            wait_for(
                lambda: c.get("/api/v1/lockers/SIM-0001").json()["online"] is False,
                15,
                what="the locker's offline status",
            )
            started = time.monotonic()
            body = {"locker": "SIM-0001", "parcel": "OFF-1", "size": "S"}
            r = c.post("/api/v1/parcels", json=body)
            cmd = c.post(
                "/api/v1/lockers/SIM-0001/commands",
                json={"action": "resync", "args": {}, "reason": "check"},
            )
            assert time.monotonic() - started < 3  # two calls, no reply time-out waited
            assert r.status_code == 504, r.text
            assert r.json()["error"]["code"] == "locker_offline"
            assert "offline since 20" in r.json()["error"]["message"]
            issued = r.json()["issued"]
            assert _state(c, "OFF-1") == "pending"
            assert (cmd.status_code, cmd.json()["error"]["code"]) == (504, "locker_offline")
            assert "offline since" in cmd.json()["error"]["message"]
            cab.start()
            _wait_state(c, "OFF-1", "reserved")  # the queued assign ran when it came back
            cab.press(issued["dropoff_code"] + "#")
            _wait_state(c, "OFF-1", "deposited")
    finally:
        service.stop()
        cab.close()


def test_parcel_lifecycle_faults_extend_final_states_lives_and_cancel_after_deposit(
    tmp_path: Path, service_broker: Broker
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    carrier = add_user(d, "acme", "carrier")
    op = add_user(d, "ops", "operator")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    try:
        cab.start()
        with api(service, carrier.token) as c, api(service, op.token) as o:
            wait_for(lambda: c.get("/api/v1/lockers").json() != [], 15, what="locker known")
            first = c.post(
                "/api/v1/parcels", json={"locker": "SIM-0001", "parcel": "P-T1", "size": "S"}
            )
            assert first.status_code == 201, first.text
            cab.press(first.json()["dropoff_code"] + "#")
            _wait_state(c, "P-T1", "deposited")
            wait_for(
                lambda: c.get("/api/v1/parcels/P-T1").json()["pickup_until"] is not None,
                15,
                what="the pickup window in the ledger",
            )
            window = c.get("/api/v1/parcels/P-T1").json()["pickup_until"]

            # 3. extend never shortens the window nor sets it past the bound
            now = int(time.time())
            for until, why in (
                (now + 20, "not later than the current end"),
                (window, "not later than the current end"),
                (4294967295, "h from now"),
            ):
                r = c.post("/api/v1/parcels/P-T1/extend", json={"pickup_until": until})
                assert r.status_code == 422, r.text
                assert r.json()["error"]["message"].startswith("pickup_until: ")
                assert why in r.json()["error"]["message"]
            # ... and sent another way (a raw command), the locker refuses it itself
            r = o.post(
                "/api/v1/lockers/SIM-0001/commands",
                json={
                    "action": "extend",
                    "args": {"parcel": "P-T1", "pickup_until": now + 20},
                    "reason": "test",
                },
            )
            assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_args"), r.text
            assert c.get("/api/v1/parcels/P-T1").json()["pickup_until"] == window
            r = c.post("/api/v1/parcels/P-T1/extend", json={"pickup_until": window + 3600})
            assert (r.status_code, r.json()["status"]) == (200, "done"), r.text

            cab.scan(first.json()["pickup_token"])
            _wait_state(c, "P-T1", "collected")

            # 7. actions on a final state: refused here, nothing sent to the locker
            def rejected_at_locker() -> int:
                evs = o.get("/api/v1/lockers/SIM-0001/events?limit=1000").json()
                return sum(e["type"] == "command_rejected" for e in evs)

            wait_for(lambda: rejected_at_locker() == 1, 15, what="the raw extend's rejection")
            for action, body in (
                ("extend", {"pickup_until": now + 7200}),
                ("cancel", {"reason": "x"}),
                ("retrieve", {"reason": "x"}),
            ):
                r = c.post(f"/api/v1/parcels/P-T1/{action}", json=body)
                assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_state")
                assert r.json()["state"] == "collected", r.text
                assert "collected" in r.json()["error"]["message"], r.text
            assert rejected_at_locker() == 1  # the locker never saw them

            # 5. the id issued again: a new life, clean, the earlier one readable apart
            old = c.get("/api/v1/parcels/P-T1").json()
            again = c.post(
                "/api/v1/parcels", json={"locker": "SIM-0001", "parcel": "P-T1", "size": "S"}
            )
            assert again.status_code == 201, again.text
            doc = c.get("/api/v1/parcels/P-T1").json()
            assert (doc["life"], doc["state"]) == (2, "reserved")
            assert doc["created_at"] > old["created_at"] and doc["pickup_until"] is None
            whats = [h["what"] for h in doc["history"]]
            assert whats[0] == "issued" and "parcel_collected" not in whats, whats
            earlier = doc["earlier_lives"]
            assert [life["life"] for life in earlier] == [1]
            assert "parcel_collected" in [h["what"] for h in earlier[0]["history"]]
            with service.engine.connect() as conn:
                reminded = conn.execute(
                    select(db.parcels.c.reminded).where(db.parcels.c.parcel == "P-T1")
                ).scalar()
            assert reminded is False

            # 6. cancelled after the deposit: still inside, awaiting retrieval
            cab.press(again.json()["dropoff_code"] + "#")
            _wait_state(c, "P-T1", "deposited")
            r = c.post("/api/v1/parcels/P-T1/cancel", json={"reason": "recalled"})
            assert r.status_code == 200, r.text
            _wait_state(c, "P-T1", "awaiting_retrieval")
            r = c.post("/api/v1/parcels/P-T1/retrieve", json={"reason": "back to depot"})
            assert r.status_code == 200, r.text
            cab.press(r.json()["retrieve_code"] + "#")
            _wait_state(c, "P-T1", "retrieved")
            states = [h["state"] for h in c.get("/api/v1/parcels/P-T1").json()["history"]]
            assert "cancelled" not in states, states

            # 8. events of an unknown locker: 404 like the locker; the epoch is documented
            r = o.get("/api/v1/lockers/NOPE/events")
            assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_locker")
            epoch = o.get("/api/v1/lockers/SIM-0001").json()["epoch"]
            assert o.get(f"/api/v1/lockers/SIM-0001/events?epoch={epoch}").json()
            assert o.get("/api/v1/lockers/SIM-0001/events?epoch=other").json() == []
            spec = o.get("/api/v1/openapi.json").json()
            params = spec["paths"]["/api/v1/lockers/{locker_id}/events"]["get"]["parameters"]
            described = {p["name"]: p.get("description", "") for p in params}
            assert "current epoch" in described["epoch"]
    finally:
        service.stop()
        cab.close()


NUL = "x\u0000y"


def test_text_with_nul_or_controls_is_422_before_postgres(
    tmp_path: Path, service_broker: Broker, postgres: Postgres
) -> None:
    """Was: ``psycopg.DataError`` and a 500 for a NUL in a reason (PostgreSQL text cannot hold
    U+0000). Every text an API request carries is checked first: 422 naming the field."""
    url = postgres.create_database("nul_check")
    d = fleet_dir(tmp_path, service_broker)
    op = add_user(d, "ops", "operator", url)
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d, db_url=url)
    try:
        cab.start()
        with api(service, op.token) as o:
            wait_for(lambda: o.get("/api/v1/lockers").json() != [], 15, what="locker known")
            issued = o.post(
                "/api/v1/parcels", json={"locker": "SIM-0001", "parcel": "N-1", "size": "S"}
            )
            assert issued.status_code == 201, issued.text
            cases: list[tuple[str, str, dict[str, Any], str]] = [
                (
                    "POST",
                    "/api/v1/lockers/SIM-0001/commands",
                    {"action": "resync", "args": {}, "reason": NUL},
                    "reason",
                ),
                (
                    "POST",
                    "/api/v1/lockers/SIM-0001/commands",
                    {"action": "resync\u0007", "args": {}, "reason": "r"},
                    "action",
                ),
                ("POST", "/api/v1/parcels/N-1/cancel", {"reason": NUL}, "reason"),
                (
                    "POST",
                    "/api/v1/parcels/N-1/extend",
                    {"pickup_until": int(time.time()) + 7200, "reason": NUL},
                    "reason",
                ),
                ("POST", "/api/v1/parcels/N-1/retrieve", {"reason": NUL}, "reason"),
                ("POST", "/api/v1/alarms/1/ack", {"note": NUL}, "note"),
                (
                    "POST",
                    "/api/v1/parcels",
                    {"locker": NUL, "parcel": "N-2", "size": "S"},
                    "locker",
                ),
                (
                    "POST",
                    "/api/v1/parcels",
                    {"locker": "SIM-0001", "parcel": NUL, "size": "S"},
                    "parcel",
                ),
                (
                    "POST",
                    "/api/v1/parcels",
                    {"locker": "SIM-0001", "parcel": "N-3", "size": "S", "compartment": NUL},
                    "compartment",
                ),
                (
                    "POST",
                    "/api/v1/lockers/SIM-0001/commands",
                    {"action": "resync", "args": {}, "reason": "x" * 501},
                    "reason",
                ),
                ("GET", "/api/v1/lockers/a%00b", {}, "locker_id"),
                ("GET", "/api/v1/lockers/a%00b/events", {}, "locker_id"),
                ("GET", "/api/v1/lockers/SIM-0001/events?epoch=a%00b", {}, "epoch"),
                ("GET", "/api/v1/parcels/a%00b", {}, "parcel"),
            ]
            for method, path, body, field in cases:
                r = o.request(method, path, json=body or None)
                assert r.status_code == 422, (path, body, r.text)
                assert r.json()["error"]["code"] == "invalid_args"
                assert field in r.json()["error"]["message"], (path, r.text)
            # a note may hold line breaks (a textarea's), and the valid requests still work
            assert _state(o, "N-1") == "reserved"
            r = o.post(
                "/api/v1/lockers/SIM-0001/commands",
                json={"action": "resync", "args": {}, "reason": "ok"},
            )
            assert r.status_code == 200, r.text
            r = o.post("/api/v1/alarms/1/ack", json={"note": "line one\r\nline two"})
            assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_alarm")
    finally:
        service.stop()
        cab.close()


@pytest.mark.parametrize("reason", ["x\u0000y", "tab\tis a control here"])
def test_the_service_layer_refuses_a_reason_that_is_not_printable(reason: str) -> None:
    """The console reaches ``Actions`` without the API's bodies: the check is there too."""
    assert not reason.isprintable()
    with pytest.raises(ActionError) as caught:
        check_reason(reason)
    assert caught.value.status == 422


def test_an_assign_the_locker_refuses_leaves_the_parcel_rejected_and_the_id_free(
    tmp_path: Path, service_broker: Broker
) -> None:
    """The pending record written before the assign is closed by a definite refusal: the
    parcel is ``rejected`` (a final state, its history says why) and the id can be issued."""
    d = fleet_dir(tmp_path, service_broker)
    carrier = add_user(d, "acme", "carrier")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    try:
        cab.start()
        with api(service, carrier.token) as c:
            wait_for(lambda: _up(c), 15, what="locker known")
            body = {"locker": "SIM-0001", "parcel": "REF-1", "size": "S", "compartment": "ZZ"}
            r = c.post("/api/v1/parcels", json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_args"), r.text
            assert "issued" not in r.json()  # it never ran: no codes to keep
            doc = c.get("/api/v1/parcels/REF-1").json()
            assert doc["state"] == "rejected"
            assert [h["what"] for h in doc["history"]] == ["issued", "assign rejected"]
            del body["compartment"]
            again = c.post("/api/v1/parcels", json=body)
            assert again.status_code == 201, again.text
            assert c.get("/api/v1/parcels/REF-1").json()["life"] == 2
    finally:
        service.stop()
        cab.close()
