"""Who may do what in the fleet service's API: every endpoint against every role.

The service runs for real (uvicorn, TLS broker); no locker is needed, since authorisation is
decided before anything is sent. Also: the OpenAPI document lists exactly the endpoints of
the permission table, secrets are stored only as hashes, /metrics is open, and webhook
deliveries are retried with the same idempotency key and a verifiable signature.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from locker.fleet.service import api as api_mod
from locker.fleet.service import db, delivery
from locker.fleet.service.app import FleetService
from locker.fleet.service.config import ServiceSettings
from locker.sim.broker import Broker
from tests.conftest import wait_for
from tests.fleet_rig import add_user, fleet_dir, service_broker, start_service

_ = service_broker
ROLES = ("viewer", "carrier", "operator", "admin")
BODIES: dict[str, dict[str, Any]] = {
    "POST /api/v1/lockers/{id}/commands": {"action": "resync", "args": {}, "reason": "t"},
    "POST /api/v1/parcels": {"locker": "NOPE", "parcel": "P1", "size": "S"},
    "POST /api/v1/parcels/{parcel}/extend": {"pickup_until": 2_000_000_000},
    "POST /api/v1/alarms/{id}/ack": {"note": "seen"},
}


@pytest.fixture
def running(
    tmp_path: Path, service_broker: Broker
) -> Iterator[tuple[FleetService, dict[str, str], Path]]:
    d = fleet_dir(tmp_path, service_broker)
    tokens = {role: add_user(d, f"u-{role}", role).token for role in ROLES}
    service = start_service(d)
    try:
        yield service, tokens, d
    finally:
        service.stop()


def _call(base: str, endpoint: str, token: str | None) -> httpx.Response:
    method, path = endpoint.split(" ", 1)
    path = path.replace("{id}", "1").replace("{parcel}", "P1")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        method, base + path, headers=headers, json=BODIES.get(endpoint), timeout=20
    )


def test_every_endpoint_every_role(running: tuple[FleetService, dict[str, str], Path]) -> None:
    service, tokens, _d = running
    base = f"http://127.0.0.1:{service.port}"
    for endpoint, allowed in api_mod.PERMISSIONS.items():
        r = _call(base, endpoint, None)
        assert r.status_code == 401, (endpoint, r.text)
        assert r.json()["error"]["code"] == "unauthenticated"
        assert _call(base, endpoint, "not-a-token").status_code == 401, endpoint
        for role in ROLES:
            r = _call(base, endpoint, tokens[role])
            if role in allowed:
                assert r.status_code not in (401, 403), (endpoint, role, r.text)
            else:
                assert r.status_code == 403, (endpoint, role, r.text)
                assert r.json()["error"]["code"] == "forbidden"
    assert httpx.get(base + "/metrics", timeout=10).status_code == 200


def test_openapi_lists_exactly_the_permission_table(
    running: tuple[FleetService, dict[str, str], Path],
) -> None:
    service, _tokens, _d = running
    doc = httpx.get(f"http://127.0.0.1:{service.port}/api/v1/openapi.json", timeout=10).json()
    listed = {
        f"{m.upper()} {p}".replace("{locker_id}", "{id}").replace("{alarm_id}", "{id}")
        for p, ops in doc["paths"].items()
        for m in ops
    }
    assert listed == set(api_mod.PERMISSIONS)


def test_secrets_are_stored_only_as_hashes(
    running: tuple[FleetService, dict[str, str], Path],
) -> None:
    service, tokens, d = running
    with service.engine.connect() as conn:
        rows = conn.execute(select(db.users)).all()
    dumped = json.dumps([list(map(str, r)) for r in rows])
    for token in tokens.values():
        assert token not in dumped
    assert all(r.password_hash.startswith("$argon2id$") for r in rows)
    raw = (d / "fleet.db").read_bytes()
    assert not any(t.encode() in raw for t in tokens.values())


def test_invalid_input_is_a_json_error_with_a_code(
    running: tuple[FleetService, dict[str, str], Path],
) -> None:
    service, tokens, _d = running
    base = f"http://127.0.0.1:{service.port}"
    h = {"Authorization": f"Bearer {tokens['carrier']}"}
    r = httpx.post(base + "/api/v1/parcels", headers=h, json={"locker": "X", "size": "Q"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_args")
    r = httpx.post(
        base + "/api/v1/parcels", headers=h, json={"locker": "NOPE", "parcel": "P", "size": "S"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_locker")
    r = httpx.post(
        base + "/api/v1/parcels",
        headers=h,
        json={"locker": "NOPE", "parcel": "bad id!", "size": "S"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_args")


class _Receiver(BaseHTTPRequestHandler):
    fail_first = 2
    seen: list[tuple[int, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        failing = len(self.seen) < self.fail_first
        self.seen.append((500 if failing else 200, dict(self.headers), body))
        self.send_response(500 if failing else 200)
        self.end_headers()

    def log_message(self, *_a: Any) -> None:
        return


def test_webhook_that_fails_then_recovers_gets_one_message_retried_with_one_key(
    tmp_path: Path,
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"sqlite:///{tmp_path / 'f.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    secret = "s3cret-s3cret-s3cret"
    settings = ServiceSettings.model_validate(
        {"webhooks": [{"url": f"http://127.0.0.1:{server.server_port}/hook", "secret": secret}]}
    )
    with engine.begin() as conn:
        for _ in range(2):  # the same alarm enqueued twice is one message
            delivery.enqueue(conn, [("webhook", 0)], "alarm-7", {"type": "alarm"}, 0.0)
    sender = delivery.Deliverer(engine, settings, poll_s=0.02, base_s=0.05)
    sender.start()
    try:
        wait_for(lambda: sender.sent == 1, 10, what="delivered after two failures")
    finally:
        sender.stop()
        server.shutdown()
    assert [s for s, _h, _b in _Receiver.seen] == [500, 500, 200]
    keys = {h["Idempotency-Key"] for _s, h, _b in _Receiver.seen}
    assert keys == {"alarm-7"}
    _s, headers, body = _Receiver.seen[-1]
    expected = delivery.sign(secret, headers[delivery.TIMESTAMP_HEADER], body)
    assert hmac.compare_digest(headers[delivery.SIGNATURE_HEADER], expected)
    with engine.connect() as conn:
        row = conn.execute(select(db.deliveries)).one()
    assert (row.state, row.attempts) == ("sent", 3)


def test_console_cookies_are_secure_httponly_strict_by_default(
    running: tuple[FleetService, dict[str, str], Path],
) -> None:
    service, _tokens, _d = running
    header = httpx.get(f"http://127.0.0.1:{service.port}/login", timeout=10).headers["set-cookie"]
    assert {"secure", "httponly", "samesite=strict"} <= {
        part.strip().lower() for part in header.split(";")
    }


def test_metrics_are_prometheus_text_with_the_fleet_gauges(
    running: tuple[FleetService, dict[str, str], Path],
) -> None:
    service, _tokens, _d = running
    r = httpx.get(f"http://127.0.0.1:{service.port}/metrics", timeout=10)
    assert r.headers["content-type"].startswith("text/plain")
    names = {
        line.split(" ")[0].split("{")[0]
        for line in r.text.splitlines()
        if line and not line.startswith("#")
    }
    for name in (
        "fleet_events_ingested_total",
        "fleet_lockers_online",
        "fleet_open_alarms",
        "fleet_seconds_since_last_event",
    ):
        assert name in names, sorted(names)
    assert "fleet_command_round_trip_seconds" in r.text
