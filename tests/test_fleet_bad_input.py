"""Bad input to the running fleet service: one locker's message, one HTTP request.

A real Mosquitto with TLS, the service in-process on real SQLite, a real ``lockerd`` and a
light locker (a paho client with its own certificate) that publishes what a newcomer's
break-test published: numbers past SQLite's signed 64-bit range. Each such message is
rejected, logged with its locker and topic and counted in ``fleet_ingest_errors_total``;
ingest goes on for every locker, across a restart that brings the retained poison back; a
message the store fails on for any other reason costs only itself; a dead ingest thread
shows in ``/healthz`` and ``/metrics``. Over HTTP, out-of-range integers and wrong JSON
types are 422 naming the parameter, never 500.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from locker.fleet.service.app import FleetService
from locker.fleet.service.ingest import Ingest, Message, Outcome
from locker.fleet.service.metrics import METRICS
from locker.sim.broker import SERVER_CN, Broker, Pki
from locker.sim.fleet import SERVICE_CN, SERVICE_LOGGER, SimFleet
from tests.broker import paho_client
from tests.conftest import wait_for
from tests.fleet_rig import add_user, api, cabinet, fleet_dir, service_broker, start_service

_ = service_broker
HUGE = 99999999999999999999999  # the break-test's value
LIGHT = "LKR-1"
POISON_STATE = {
    "v": 1,
    "epoch": "e3",
    "last_seq": HUGE,
    "outbox_depth": HUGE,
    "compartments": [],
    "lockdown": False,
    "keypad_locked": False,
}
PLAIN_HTTP = "[http]\nsecure_cookies = false\n"  # the console test talks plain HTTP


def errors(reason: str) -> float:
    """This process's ``fleet_ingest_errors_total{reason}`` (the service runs in-process)."""
    value = METRICS.registry.get_sample_value("fleet_ingest_errors_total", {"reason": reason})
    return value or 0.0


def event(seq: int, type_: str = "door_opened", epoch: str = "e3") -> dict[str, Any]:
    return {"v": 1, "epoch": epoch, "seq": seq, "type": type_, "ts": "2026-11-29T10:00:00Z"}


class Light:
    """A locker reduced to the contract: publishes as ``locker``, records its acks."""

    def __init__(self, broker: Broker, locker: str = LIGHT) -> None:
        self.locker = locker
        self.acks: list[dict[str, Any]] = []
        self.client = paho_client(broker.endpoint(locker), locker)
        self.client.on_message = lambda _c, _u, m: self.acks.append(json.loads(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, what=f"{locker} connected")
        self.client.subscribe(f"lockers/{locker}/ack", qos=1)

    def send(self, channel: str, doc: dict[str, Any], *, retain: bool = False) -> None:
        topic = f"lockers/{self.locker}/{channel}"
        info = self.client.publish(topic, json.dumps(doc), qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS

    def acked(self) -> int:
        return max((a["upto_seq"] for a in self.acks), default=0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stored(service: FleetService, token: str, locker: str) -> list[int]:
    with api(service, token) as c:
        r = c.get(f"/api/v1/lockers/{locker}/events")
        assert r.status_code == 200, r.text
        return [e["seq"] for e in r.json()]


def health(service: FleetService) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{service.port}/healthz", timeout=10)


def lines_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_poisoned_retained_state_costs_only_itself_across_restarts(
    tmp_path: Path, service_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    d = fleet_dir(tmp_path, service_broker)
    viewer = add_user(d, "watcher", "viewer")
    light = Light(service_broker)
    cab = cabinet(d, service_broker, tmp_path / "cab")
    rejected = errors("rejected")
    light.send("state", POISON_STATE, retain=True)  # before the service: it comes on subscribe
    service = start_service(d)
    try:
        wait_for(lambda: errors("rejected") == rejected + 1, 15, what="the poison rejected")
        light.send("evt/door_opened", event(HUGE))  # the break-test's event
        wait_for(lambda: errors("rejected") == rejected + 2, 15, what="the event rejected")
        # the same locker goes on: 1, then 3 (a gap), then 2 (filled), each stored and acked
        light.send("evt/door_opened", event(1))
        wait_for(lambda: light.acked() == 1, 15, what="LKR-1 acked up to 1")
        light.send("evt/door_opened", event(3))
        wait_for(lambda: lines_with(caplog, f"{LIGHT}: gap "), 15, what="the gap reported")
        light.send("evt/door_opened", event(2))
        wait_for(lambda: light.acked() == 3, 15, what="LKR-1 acked up to 3")
        assert stored(service, viewer.token, LIGHT) == [1, 2, 3]
        # so does a real lockerd that connects afterwards: marked online AND ingested
        cab.start()
        wait_for(lambda: stored(service, viewer.token, "SIM-0001"), 20, what="lockerd ingested")
        assert health(service).json() == {
            "status": "ok",
            "threads": {"fleet-delivery": True, "fleet-housekeeping": True, "fleet-ingest": True},
            "database": True,
            "mqtt": {"identity": "backend", "connected": True, "contested": False, "takeovers": 0},
        }
        metrics = httpx.get(f"http://127.0.0.1:{service.port}/metrics", timeout=10).text
        assert 'fleet_thread_alive{thread="fleet-ingest"} 1.0' in metrics
        assert re.search(r'fleet_ingest_errors_total\{reason="rejected"\} [1-9]', metrics)
        # each rejection is one WARNING naming the locker, the topic and the field
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            "LKR-1: message on lockers/LKR-1/state rejected: last_seq" in r.getMessage()
            for r in warned
        ), [r.getMessage() for r in warned]
        # one report, one log line (it was logged by ingest and again by the worker)
        for kind in ("first_contact", "gap ", "gap_filled"):
            assert len(lines_with(caplog, f"{LIGHT}: {kind}")) == 1, (kind, caplog.text)
        # restarted, the service gets the retained poison again: rejected again, ingest goes on
        service.stop()
        service = start_service(d)
        wait_for(lambda: errors("rejected") == rejected + 3, 15, what="rejected after restart")
        light.send("evt/door_opened", event(4))
        wait_for(lambda: light.acked() == 4, 15, what="LKR-1 acked up to 4 after the restart")
        assert health(service).status_code == 200
    finally:
        service.stop()
        cab.close()
        light.close()


class FailsOn(Ingest):
    """The real store, failing on one topic the way an unforeseen bug would."""

    def __init__(self, base: Ingest, topic: str) -> None:
        super().__init__(base.engine, base.prefix, rules=base.rules)
        self.topic = topic

    def store(self, batch: list[Message]) -> Outcome:  # type: ignore[override]
        if any(m.topic == self.topic for m in batch):
            raise ArithmeticError("an unforeseen fault of this one message")
        return super().store(batch)


def test_a_message_the_store_fails_on_costs_only_itself_and_a_dead_thread_shows(
    tmp_path: Path, service_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    viewer = add_user(d, "watcher", "viewer")
    service = start_service(d)
    light = Light(service_broker)
    try:
        poison = f"lockers/{LIGHT}/evt/door_forced"
        service.worker.ingest = FailsOn(service.ingest, poison)
        dropped = errors("dropped")
        batch = [
            Message(f"lockers/{LIGHT}/evt/door_opened", json.dumps(event(1)).encode()),
            Message(poison, json.dumps(event(2, "door_forced")).encode()),
            Message(f"lockers/{LIGHT}/evt/door_opened", json.dumps(event(3)).encode()),
        ]
        service.worker.process(batch)  # one batch: split, the poison alone dropped
        assert errors("dropped") == dropped + 1
        assert stored(service, viewer.token, LIGHT) == [1, 3]
        wait_for(lambda: light.acked() == 1, 15, what="acked up to the gap the drop left")
        assert any(
            r.levelno == logging.ERROR
            and "LKR-1: message on 'lockers/LKR-1/evt/door_forced' dropped" in r.getMessage()
            and "ArithmeticError" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        # a fault of the loop itself (here: a queued item that is no message) is survived
        worker_faults = errors("worker")
        service.worker._queue.put(object())  # type: ignore[arg-type]
        wait_for(lambda: errors("worker") == worker_faults + 1, 15, what="the loop fault")
        light.send("evt/door_opened", event(2))
        wait_for(lambda: light.acked() == 3, 15, what="ingest went on after the loop fault")
        assert service.worker.alive and health(service).status_code == 200
        # a dead ingest thread is visible: /healthz fails, the gauge says which thread
        service.worker.stop()
        r = health(service)
        assert r.status_code == 503, r.text
        threads = {"fleet-delivery": True, "fleet-housekeeping": True, "fleet-ingest": False}
        assert r.json()["threads"] == threads
        metrics = httpx.get(f"http://127.0.0.1:{service.port}/metrics", timeout=10).text
        assert 'fleet_thread_alive{thread="fleet-ingest"} 0.0' in metrics
    finally:
        light.close()
        service.stop()


@pytest.fixture
def running(tmp_path: Path, service_broker: Broker) -> Iterator[tuple[FleetService, Path]]:
    d = fleet_dir(tmp_path, service_broker, PLAIN_HTTP)
    service = start_service(d)
    try:
        yield service, d
    finally:
        service.stop()


def console_login(base: str, name: str, password: str) -> tuple[httpx.Client, str]:
    """An HTTP session of the console and its CSRF token."""
    client = httpx.Client(base_url=base, timeout=20)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert token
    form = {"name": name, "password": password, "csrf": token.group(1)}
    assert client.post("/login", data=form).status_code == 303
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/alarms").text)
    assert csrf
    return client, csrf.group(1)


def invalid(r: httpx.Response, name: str) -> bool:
    """A 422 ``invalid_args`` whose message names ``name``."""
    doc = r.json()
    return (
        r.status_code == 422
        and doc["error"]["code"] == "invalid_args"
        and (name in doc["error"]["message"])
    )


def test_large_integers_and_wrong_json_types_are_422_naming_the_parameter(
    running: tuple[FleetService, Path],
) -> None:
    service, d = running
    operator = add_user(d, "olga", "operator")
    with api(service, operator.token) as c:
        # the break-test's requests (each was 500 with an OverflowError)
        r = c.get(f"/api/v1/lockers/SIM-0001/events?after_seq={HUGE}")
        assert invalid(r, "after_seq"), r.text
        r = c.post(f"/api/v1/alarms/{HUGE}/ack", json={"note": "x"})
        assert invalid(r, "alarm_id"), r.text
        # the kind: every integer parameter is bounded, the edge of the range is accepted
        # (no locker of that name in this fleet: the bound passes, the name is then 404)
        r = c.get(f"/api/v1/lockers/SIM-0001/events?after_seq={2**63 - 1}")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_locker")
        assert invalid(c.get(f"/api/v1/lockers/SIM-0001/events?after_seq={2**63}"), "after_seq")
        assert invalid(c.get(f"/api/v1/lockers/SIM-0001/events?limit={HUGE}"), "limit")
        assert invalid(c.get(f"/api/v1/alarms?limit={HUGE}"), "limit")
        r = c.post(f"/api/v1/alarms/{2**63 - 1}/ack", json={"note": "x"})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_alarm")
        assert invalid(c.post("/api/v1/alarms/0/ack"), "alarm_id")
        for until in (HUGE, 2**32, True, 1.5, "2000000000"):
            r = c.post("/api/v1/parcels/P1/extend", json={"pickup_until": until})
            assert invalid(r, "pickup_until"), (until, r.text)
        r = c.post("/api/v1/parcels/P1/retrieve", json={"valid_hours": HUGE})
        assert invalid(r, "valid_hours"), r.text
        # strict JSON types: "yes" is no boolean, "5" no integer, 1 no string
        base = {"locker": "NOPE", "parcel": "P1", "size": "S"}
        for field, value in (("accessible", "yes"), ("accessible", 1), ("pickup_hours", "5"),
                             ("pickup_hours", HUGE), ("parcel", 1), ("size", ["S"])):  # fmt: skip
            r = c.post("/api/v1/parcels", json=base | {field: value})
            assert invalid(r, field), (field, value, r.text)
        # and well-typed, the same request goes on to the next check
        r = c.post("/api/v1/parcels", json=base | {"accessible": True})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_locker")
        r = c.post("/api/v1/lockers/SIM-0001/commands", json={"action": 1, "reason": "t"})
        assert invalid(r, "action"), r.text
    # the console's form route
    session, csrf = console_login(f"http://127.0.0.1:{service.port}", "olga", operator.password)
    try:
        r = session.post(f"/alarms/{HUGE}/ack", data={"csrf": csrf, "note": "x"})
        # the console answers a browser with its own page: a malformed id is no such page,
        # as /alarms/abc/ack is (console_errors), never the 500 it was
        assert r.status_code == 404 and "Page not found" in r.text, r.text
    finally:
        session.close()


def test_a_parcel_known_only_from_events_shows_its_reservation_and_an_unknown_issuer(
    running: tuple[FleetService, Path],
) -> None:
    service, d = running
    operator = add_user(d, "olga", "operator")
    reserved = event(1, "parcel_reserved") | {
        "parcel": "PX-1",
        "compartment": "A3",
        "data": {"kind": "delivery", "size": "M", "dropoff_until": 1_900_000_000},
    }
    topic = "lockers/SIM-0009/evt/parcel_reserved"
    assert service.ingest.store([Message(topic, json.dumps(reserved).encode())]).new_events == 1
    with api(service, operator.token) as c:
        doc = c.get("/api/v1/parcels/PX-1").json()
    assert (doc["kind"], doc["size"], doc["created_by"]) == ("delivery", "M", None)
    session, _csrf = console_login(f"http://127.0.0.1:{service.port}", "olga", operator.password)
    try:
        page = session.get("/parcels", params={"q": "PX-1"}).text
    finally:
        session.close()
    facts = re.search(r'<p id="parcel-facts">(.*?)</p>', page, re.S)
    assert facts, page
    text = re.sub(r"<[^>]+>", "", facts.group(1))
    assert text == (
        "locker SIM-0009 · compartment A3 · delivery, size M · "
        "issued outside this service (issuer unknown)"
    )


def test_the_simulators_service_log_has_one_line_per_record(tmp_path: Path) -> None:
    broker = Broker(
        tmp_path / "broker", pki=Pki(tmp_path / "pki"), server_users=(SERVER_CN, SERVICE_CN)
    )
    broker.start()
    fleet = SimFleet(tmp_path / "fleet", broker, "127.0.0.1:0")
    light: Light | None = None
    try:
        fleet.start()
        light = Light(broker)
        log = tmp_path / "fleet" / "service.log"
        light.send("evt/door_opened", event(1))
        wait_for(lambda: light is not None and light.acked() == 1, 15, what="acked")
        light.send("evt/door_opened", event(3))
        wait_for(lambda: "gap " in log.read_text(), 15, what="the gap in service.log")
        light.send("evt/door_opened", event(2))
        wait_for(lambda: "gap_filled" in log.read_text(), 15, what="gap_filled in service.log")
    finally:
        if light is not None:
            light.close()
        fleet.stop()
        broker.stop()
    text = log.read_text()
    for kind in ("first_contact", "gap ", "gap_filled"):
        assert text.count(f"{LIGHT}: {kind}") == 1, (kind, text)
    assert not logging.getLogger(SERVICE_LOGGER).handlers, "stop removed this run's handler"
