"""The server side's MQTT connection tells what happens to it: takeovers, TLS causes, drops.

Reported by a newcomer, each reproduced here with a real Mosquitto (TLS, ACL):
- two services on ONE identity fought silently (the broker closed one every 2 s, neither
  warned): now each says "another client uses identity ..." once per episode, and /metrics
  and /healthz show it;
- ``lockerctl`` against the simulator's fleet said "broker refused the connection:
  Unspecified error" (its lockerctl.pem came from another CA): the simulator's fleet now
  works with lockerctl, and a TLS failure's message names its cause;
- ``lockerctl watch`` said nothing on stderr when the broker dropped: now it says so, and
  when it is back.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from locker.fleet import ctl, provision, tls_cause
from locker.fleet.client import BrokerError, FleetClient
from locker.sim.broker import SERVER_CN, Broker, Pki
from locker.sim.cabinet import SimCabinet
from locker.sim.fleet import SERVICE_CN, SimFleet
from tests.conftest import wait_for
from tests.fleet_rig import fleet_dir, service_broker, start_service

_ = service_broker
TAKEOVER = "another client uses identity 'backend'"


def test_two_services_on_one_identity_are_told_once_and_shown(
    tmp_path: Path, service_broker: Broker, caplog: Any
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    caplog.set_level(logging.WARNING, logger="locker.fleet.client")
    service = start_service(d)  # identity backend
    intruder = FleetClient.for_fleet(provision.Fleet.load(d), SERVER_CN)
    try:
        intruder.connect()  # the broker closes the service's connection: 0x8E
        watch = service.client.watch
        # paho reconnects both: the fight goes on, each loses its connection again and again
        wait_for(lambda: watch.takeovers >= 3, 30, interval=0.1, what="three takeovers")
        told = [r.getMessage() for r in caplog.records if TAKEOVER in r.getMessage()]
        assert len(told) <= 2, told  # once per client per episode, not once per takeover
        # Mosquitto 2.0.11 closes the old connection without a DISCONNECT 0x8E: the repeated
        # short connections tell it
        assert any("connections in a row lost" in t and "--mqtt-client" in t for t in told)
        base = f"http://127.0.0.1:{service.port}"
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert "fleet_mqtt_identity_contested 1.0" in metrics
        taken = [x for x in metrics.splitlines() if x.startswith("fleet_mqtt_takeovers_total ")]
        assert taken and float(taken[0].split()[1]) >= 3
        health = httpx.get(base + "/healthz", timeout=10).json()
        assert health["mqtt"]["contested"] is True and health["mqtt"]["identity"] == SERVER_CN
        assert "another client" in health["mqtt"]["note"]
    finally:
        intruder.close()
        service.stop()


def _foreign_client_fleet(tmp_path: Path, broker: Broker) -> Path:
    """The simulator's old fleet directory: the broker's ca.pem, but lockerctl.pem from the
    fleet's own CA."""
    d = tmp_path / "fleet"
    provision.provision_fleet(
        d, "simulated fleet", "127.0.0.1", broker_port=broker.port, run_as_root=os.geteuid() == 0
    )
    assert broker.pki is not None
    shutil.copyfile(broker.pki.ca_file, d / "ca.pem")
    return d


def test_a_client_certificate_from_another_ca_is_named_as_the_cause(
    tmp_path: Path, service_broker: Broker, capsys: Any
) -> None:
    d = _foreign_client_fleet(tmp_path, service_broker)
    rc = ctl.main(["watch", "--fleet", str(d), "--as", "lockerctl", "--duration", "1"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "unknown CA" in err, err
    assert "lockerctl.pem is issued by 'simulated fleet locker CA'" in err, err
    assert "'Test fleet CA'" in err, err


def test_a_broker_certificate_from_another_ca_is_named_as_the_cause(
    tmp_path: Path, service_broker: Broker
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    other = Pki(tmp_path / "other", ca_name="Another CA")
    shutil.copyfile(other.ca_file, d / "ca.pem")  # we no longer trust the broker's CA
    client = FleetClient.for_fleet(provision.Fleet.load(d), "lockerctl")
    with pytest.raises(BrokerError) as raised:
        client.connect(timeout=10)
    text = str(raised.value)
    assert "the broker's certificate is not issued by the fleet's CA" in text, text
    assert "unknown CA" in text and "lockerctl.pem is issued by 'Test fleet CA'" in text, text


def test_expired_certificate_is_named(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    old = provision.make_client_cert(pki.ca, "old", days=1)
    (tmp_path / "old.pem").write_bytes(old.cert_pem)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    found = tls_cause.check_identity(Path(pki.ca_file), tmp_path / "old.pem", now=later)
    assert len(found) == 1 and found[0].startswith("old.pem expired on"), found
    assert tls_cause.cause("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                           "certificate has expired (_ssl.c:1006)") == (
        "the broker's certificate has expired"
    )  # fmt: skip
    assert "does not name" in str(
        tls_cause.cause("certificate verify failed: Hostname mismatch, certificate is not valid")
    )


@pytest.mark.timeout(120)
def test_lockerctl_works_with_the_simulators_fleet(tmp_path: Path, capsys: Any) -> None:
    broker = Broker(
        tmp_path / "broker",
        pki=Pki(tmp_path / "pki", ca_name="Simulated fleet CA"),
        server_users=(SERVER_CN, SERVICE_CN),
    )
    broker.start()
    fleet = SimFleet(tmp_path / "fleet", broker, "127.0.0.1:0")
    cab = SimCabinet(tmp_path / "cab", broker=broker, **fleet.trust())
    try:
        fleet.register(cab.locker_id, cab.device_key, cab.config_path)
        d = str(fleet.dir)
        for pem in sorted((fleet.dir / "clients").glob("*.pem")):
            if not pem.name.endswith("-key.pem"):
                assert tls_cause.check_identity(fleet.dir / "ca.pem", pem) == [], pem
        cab.start()
        argv = ["cmd", "send", "--fleet", d, "--locker", "SIM-0001", "reset_lockout"]
        assert ctl.main(argv) == 0, capsys.readouterr().err
        assert ctl.main(["code", "new", "--fleet", d, "--locker", "SIM-0001"]) == 0
        err = capsys.readouterr().err
        assert "warning" not in err, err
    finally:
        cab.close()
        broker.stop()


@pytest.mark.timeout(120)
def test_watch_says_on_stderr_when_the_broker_drops_and_is_back(
    tmp_path: Path, service_broker: Broker
) -> None:
    d = fleet_dir(tmp_path, service_broker)
    watch = subprocess.Popen(
        [sys.executable, "-m", "locker.fleet.ctl", "watch", "--fleet", str(d), "--duration", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert watch.stderr is not None
    stderr = watch.stderr
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
    reader.start()

    def seen(text: str) -> bool:
        return any(text in line for line in list(lines))

    try:
        wait_for(lambda: seen("watching, connected to"), 30, interval=0.1, what="watch connected")
        service_broker.stop()
        wait_for(lambda: seen("broker connection lost"), 20, interval=0.1, what="lost, said")
        started = time.monotonic()
        service_broker.start()
        wait_for(lambda: seen("broker connection back after"), 40, interval=0.1, what="back")
        assert time.monotonic() - started < 40
        assert all(line.startswith("lockerctl watch: ") for line in list(lines)), lines
    finally:
        watch.terminate()
        watch.wait(10)
