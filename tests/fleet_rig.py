"""A fleet directory wired to a test broker, the fleet service in-process, and its lockers.

- ``fleet_dir(tmp, broker)``: ``provision_fleet`` (real keys, fleet.toml), then pointed at the
  test broker: its CA and the server identities' certificates come from the broker's Pki.
- ``service_broker``: a TLS broker whose ACL gives the whole tree to ``backend`` and to the
  second worker identity ``fleet-2`` (the broker forces client id = certificate CN).
- ``start_service``: a :class:`FleetService` on a free HTTP port (uvicorn in a thread).
- ``cabinet``: a real ``lockerd`` (SimCabinet) that trusts the fleet's command keys (every
  user's too) and token key, its device key registered in the fleet.
- ``LightLocker``: a locker reduced to the contract (a paho client with its own certificate):
  publishes the events it is given, records the acks of its epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST

from locker.fleet import provision
from locker.fleet.service import db, users
from locker.fleet.service.app import FleetService
from locker.fleet.service.config import ServiceConfig
from locker.sim.broker import SERVER_CN, Broker, Pki
from locker.sim.cabinet import SimCabinet
from tests.broker import paho_client
from tests.conftest import wait_for

WORKER_2 = "fleet-2"
FAST_HASHER = PasswordHasher.from_parameters(CHEAPEST)


@pytest.fixture
def service_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", pki=Pki(tmp_path / "pki"), server_users=(SERVER_CN, WORKER_2))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def fleet_dir(tmp: Path, broker: Broker, toml: str = "") -> Path:
    d = tmp / "fleet"
    provision.provision_fleet(
        d, "test", "127.0.0.1", broker_port=broker.port, run_as_root=os.geteuid() == 0
    )
    assert broker.pki is not None
    shutil.copyfile(broker.pki.ca_file, d / "ca.pem")
    for name in (SERVER_CN, WORKER_2, "lockerctl"):
        cert = broker.pki.client(name)
        shutil.copyfile(cert.cert_file, d / "clients" / f"{name}.pem")
        shutil.copyfile(cert.key_file, d / "clients" / f"{name}-key.pem")
    if toml:
        with (d / "fleet.toml").open("a") as f:
            f.write("\n" + toml)
    return d


def add_user(d: Path, name: str, role: str, url: str | None = None) -> users.NewUser:
    cfg = ServiceConfig.load(d, db=url)
    db.upgrade(cfg.db_url)
    engine = db.make_engine(cfg.db_url)
    try:
        return users.add_user(engine, cfg.fleet, name, role, hasher=FAST_HASHER)
    finally:
        engine.dispose()


def start_service(d: Path, *, db_url: str | None = None, client: str | None = None) -> FleetService:
    cfg = ServiceConfig.load(d, db=db_url, http="127.0.0.1:0", mqtt_client=client)
    service = FleetService(cfg)
    service.start()
    return service


def cabinet(
    d: Path, broker: Broker, workdir: Path, locker_id: str = "SIM-0001", **kw: Any
) -> SimCabinet:
    """A lockerd trusting this fleet's keys; its device key registered in the fleet."""
    fleet = provision.Fleet.load(d)
    security = {
        "command_keys": fleet.command_public_keys(),
        "token_keys": {str(fleet.token_kid): provision.encode_public_key(fleet.token_key())},
    }
    cab = SimCabinet(workdir, broker=broker, locker_id=locker_id, security=security, **kw)
    where = fleet.dir / "lockers" / locker_id
    where.mkdir(parents=True, exist_ok=True)
    provision.write_private(where / "device.key", cab.device_key)
    return cab


@contextlib.contextmanager
def site(
    tmp: Path, broker: Broker, role: str = "viewer"
) -> Iterator[tuple[FleetService, SimCabinet, users.NewUser]]:
    """A fleet with one user of ``role``, its service started and a lockerd running."""
    d = fleet_dir(tmp, broker)
    user = add_user(d, f"u-{role}", role)
    cab = cabinet(d, broker, tmp / "cab")
    service = start_service(d)
    try:
        cab.start()
        yield service, cab, user
    finally:
        service.stop()
        cab.close()


def api(service: FleetService, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{service.port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def wait_online(client: httpx.Client, lockers: int = 1) -> None:
    """Until the API shows ``lockers`` lockers, all online."""
    wait_for(
        lambda: [x["online"] for x in client.get("/api/v1/lockers").json()] == [True] * lockers,
        15,
        what="lockers online in the API",
    )


class LightLocker:
    """A locker reduced to the contract: publishes events, records the acks it gets."""

    def __init__(self, broker: Broker, locker: str, *, epoch: str) -> None:
        self.locker, self.epoch = locker, epoch
        self.acked = 0
        self._lock = threading.Lock()
        self.client = paho_client(broker.endpoint(locker), locker)
        self.client.on_message = self._on_ack
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"lockers/{locker}/ack", qos=1)

    def _on_ack(self, _c: Any, _u: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        if doc.get("epoch") == self.epoch:
            with self._lock:
                self.acked = max(self.acked, int(doc["upto_seq"]))

    def publish(self, seqs: list[int], **fields: Any) -> None:
        """Events ``seqs`` of this locker's epoch (type door_opened), ``fields`` on top."""
        for seq in seqs:
            body = {"v": 1, "epoch": self.epoch, "seq": seq, "type": "door_opened", "data": {}}
            info = self.client.publish(
                f"lockers/{self.locker}/evt/door_opened", json.dumps(body | fields), qos=1
            )
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
