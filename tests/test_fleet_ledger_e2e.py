"""The parcel ledger and the worker's session with real components: a TLS Mosquitto, the
fleet service, a real lockerd (SimCabinet) and light lockers publishing as another locker.

Found by a newcomer trying to break the fleet service:
- any locker's event moved any parcel (a stolen certificate could falsify the ledger);
- a parcel pending at a locker that never answers stayed pending, its id blocked, even after
  an operator's cancel;
- ``extend`` to exactly the current end went to the locker and came back as a 409;
- a cleanly stopped worker kept its share of the shared subscription for an hour, and
  ``serve --mqtt-client lockerctl`` (no right to ack) was accepted silently.
"""

from __future__ import annotations

import io
import shutil
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from locker.fleet import ctl, provision
from locker.fleet.service import db, parcel_ledger
from locker.fleet.service.app import FleetService
from locker.fleet.service.config import ConfigError, ServiceConfig
from locker.sim.broker import Broker
from tests.conftest import wait_for
from tests.fleet_rig import (
    WORKER_2,
    LightLocker,
    add_user,
    api,
    cabinet,
    fleet_dir,
    service_broker,
    start_service,
    wait_online,
)

_ = service_broker


def _alarms(client: object, kind: str) -> list[dict[str, object]]:
    got = client.get("/api/v1/alarms", params={"state": "open"}).json()  # type: ignore[attr-defined]
    return [a for a in got if a["kind"] == kind]


def test_a_locker_moves_only_its_own_parcels_and_a_pending_one_can_be_given_up(
    tmp_path: Path, service_broker: Broker
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    carrier = add_user(d, "acme", "carrier")
    operator = add_user(d, "olga", "operator")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    # a second locker of the fleet that never answers (its device key only)
    (d / "lockers" / "SIM-0002").mkdir(parents=True)
    provision.write_private(d / "lockers" / "SIM-0002" / "device.key", b"\x01" * 32)
    service = start_service(d)
    service.actions.reply_timeout_s = 1.0
    l2 = None
    try:
        cab.start()
        with api(service, carrier.token) as c, api(service, operator.token) as o:
            wait_online(o)
            r = c.post("/api/v1/parcels", json={"locker": "SIM-0001", "parcel": "P1", "size": "S"})
            assert r.status_code == 201, r.text
            issued = r.json()
            # 1. another locker of the fleet says it delivered P1
            l2 = LightLocker(service_broker, "L2", epoch="e-l2")
            l2.publish([1], type="parcel_collected", parcel="P1", compartment="A1")
            wait_for(lambda: l2.acked == 1, 15, what="L2's event stored and acked")
            doc = o.get("/api/v1/parcels/P1").json()
            assert (doc["locker"], doc["state"]) == ("SIM-0001", "reserved")
            assert all(h["detail"].get("locker") != "L2" for h in doc["history"])
            [alarm] = _alarms(o, "foreign_parcel_event")
            assert alarm["locker"] == "L2"
            # 7. extend to exactly the current end: refused by the service itself
            cab.press(issued["dropoff_code"] + "#")
            wait_for(
                lambda: o.get("/api/v1/parcels/P1").json()["state"] == "deposited",
                15,
                what="P1 deposited",
            )
            end = o.get("/api/v1/parcels/P1").json()["pickup_until"]
            r = o.post("/api/v1/parcels/P1/extend", json={"pickup_until": end, "reason": "x"})
            assert r.status_code == 422, r.text
            message = r.json()["error"]["message"]
            assert (
                message.startswith("pickup_until:") and "not later than the current end" in message
            )
            # 2. a pending parcel at a locker that does not answer, cancelled by an operator
            assert cab.proc is not None
            cab.proc.send_signal(signal.SIGSTOP)
            try:
                p5 = {"locker": "SIM-0001", "parcel": "P5", "size": "S"}
                assert c.post("/api/v1/parcels", json=p5).status_code == 504
                r = o.post("/api/v1/parcels/P5/cancel", json={"reason": "locker silent"})
                assert r.status_code == 504, r.text
                assert "withdrawn for the fleet" in r.json()["error"]["message"]
                assert o.get("/api/v1/parcels/P5").json()["state"] == "withdrawn"
                moved = {"locker": "SIM-0002", "parcel": "P5", "size": "S"}
                r = c.post("/api/v1/parcels", json=moved)
                assert r.status_code == 504, r.text  # sent (not 409 assign_pending)
                assert r.json()["error"]["code"] == "locker_timeout"
            finally:
                cab.proc.send_signal(signal.SIGCONT)
            # SIM-0001 runs the withdrawn assign, then the cancel queued behind it: its events
            # about P5, which SIM-0002 now holds, change nothing
            wait_for(
                lambda: any(a["locker"] == "SIM-0001" for a in _alarms(o, "foreign_parcel_event")),
                20,
                what="SIM-0001's late events about P5 reported",
            )
            doc = o.get("/api/v1/parcels/P5").json()
            assert (doc["locker"], doc["state"]) == ("SIM-0002", "pending")
            # its assign issued two days ago (the clock moved on): it can never run now
            past = time.time() - parcel_ledger.ASSIGN_RUNS_FOR_S - 1
            with service.engine.begin() as conn:
                conn.execute(
                    update(db.parcels).where(db.parcels.c.parcel == "P5").values(created_at=past)
                )
            wait_for(
                lambda: o.get("/api/v1/parcels/P5").json()["state"] == "withdrawn",
                15,
                what="the worker's sweep withdraws the expired pending parcel",
            )
            again = {"locker": "SIM-0001", "parcel": "P5", "size": "S"}
            assert c.post("/api/v1/parcels", json=again).status_code == 201, "the id is free"
    finally:
        if l2 is not None:
            l2.close()
        service.stop()
        cab.close()


def test_a_cleanly_stopped_worker_leaves_its_share_to_the_live_one(
    tmp_path: Path, service_broker: Broker
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)  # the reported case: a copied fleet directory run elsewhere
    live = start_service(d)
    stray = start_service(copy, client=WORKER_2)
    locker = None
    try:
        stray.stop()  # a clean stop (what SIGTERM does)
        locker = LightLocker(service_broker, "LKR-9", epoch="e9")
        locker.publish(list(range(1, 9)))
        wait_for(lambda: locker.acked == 8, 15, what="all 8 events stored by the live worker")
        with live.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(db.events)).scalar_one()
        assert stored == 8
    finally:
        if locker is not None:
            locker.close()
        live.stop()


def test_serve_refuses_an_identity_that_may_not_acknowledge(
    tmp_path: Path, service_broker: Broker
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    with pytest.raises(ConfigError, match="operator identity"):
        FleetService(ServiceConfig.load(d, mqtt_client="lockerctl"))
    out = io.StringIO()
    status = ctl.main(["serve", "--fleet", str(d), "--mqtt-client", "lockerctl"], out)
    assert status == 5
    acl = d / "broker" / "acl"  # the fleet's own ACL: an identity listed without ack
    acl.write_text(acl.read_text() + "\nuser watcher\ntopic read lockers/+/evt/#\n")
    with pytest.raises(ConfigError, match="no write on lockers/"):
        FleetService(ServiceConfig.load(d, mqtt_client="watcher"))
