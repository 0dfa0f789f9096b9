"""Certificates that end: the locker says so before its own does, the fleet service alarms on
every certificate of its directory, and ``lockerctl fleet certs/renew`` list and renew the
fleet's own (the broker's and the server identities', 825 and 397 days: without a renewal
the whole fleet falls silent on that day).

Real files, a real SQLite database, and for the locker's own report a real TLS broker, a real
``lockerd`` and the real fleet service.
"""

from __future__ import annotations

import contextlib
import datetime
import datetime as dt
import io
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from locker.cabinet.certwatch import CertificateWatch
from locker.cabinet.domain import machine
from locker.cabinet.domain.inputs import CertificateDue
from locker.cabinet.domain.model import fresh_state
from locker.contract import certificates
from locker.fleet import certs, ctl, provision
from locker.fleet.layout import Fleet
from locker.fleet.service import alarms, db
from locker.fleet.service.certs import CertificateCollector, CertificateSweep
from locker.fleet.service.db import alarms as alarms_table
from locker.sim.broker import SERVER_CN, Broker, Pki
from tests.conftest import wait_for
from tests.contract import validate_payload
from tests.domain import SIZES, Keys, rules
from tests.fleet_rig import (
    WORKER_2,
    add_user,
    api,
    cabinet,
    fleet_dir,
    service_broker,
    start_service,
)

_ = service_broker  # a fixture

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
COMPARTMENTS = [provision.CompartmentSpec.parse("A1:S:17:27")]


def test_a_certificate_is_due_from_30_days_before_its_end() -> None:
    how = "renew it"
    assert certificates.renewal_message("x.pem", NOW + dt.timedelta(days=31), NOW, how) is None
    line = certificates.renewal_message("x.pem", NOW + dt.timedelta(days=30), NOW, how)
    assert line == "x.pem: the certificate ends on 2027-03-31 12:00Z (in 30 days); renew it"
    soon = certificates.renewal_message("x.pem", NOW + dt.timedelta(hours=5), NOW, how)
    assert soon is not None and "(in less than a day)" in soon
    ended = certificates.renewal_message("x.pem", NOW - dt.timedelta(seconds=1), NOW, how)
    assert ended == "x.pem: the certificate ended on 2027-03-01 11:59Z; renew it"


# --- the locker's own certificate ------------------------------------------------------------


def _client_cert(tmp_path: Path, days: int) -> Path:
    ca = provision.make_ca("test CA")
    pair = provision.make_client_cert(ca, "LKR-1", days)
    path = tmp_path / "device.pem"
    path.write_bytes(pair.cert_pem)
    return path


def test_the_locker_reports_its_certificate_due_and_keeps_quiet_when_not(tmp_path: Path) -> None:
    seen: list[object] = []
    watch = CertificateWatch(_client_cert(tmp_path, 10), seen.append)
    due = watch.check()
    assert due is not None and seen == [due]
    assert due.certificate == "mqtt.cert_file"
    assert 9 * 86400 < due.not_after - dt.datetime.now(dt.UTC).timestamp() <= 10 * 86400
    seen.clear()
    fresh = CertificateWatch(_client_cert(tmp_path, 397), seen.append)
    assert fresh.check() is None and seen == []


def test_an_unreadable_certificate_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "device.pem"
    path.write_text("not a certificate\n")
    seen: list[object] = []
    watch = CertificateWatch(path, seen.append)
    with caplog.at_level(logging.WARNING, logger="locker.cabinet.certwatch"):
        assert watch.check() is None
        assert watch.check() is None
    assert seen == []
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1


def test_the_machine_commits_certificate_expiring_as_the_contract_says() -> None:
    end = NOW + dt.timedelta(days=12, hours=3)
    due = CertificateDue("mqtt.cert_file", end.timestamp())
    tr = machine.step(fresh_state(SIZES), due, rules(Keys()), NOW.timestamp())
    assert [e.type for e in tr.events] == ["certificate_expiring"]
    data = dict(tr.events[0].data)
    assert data == {
        "certificate": "mqtt.cert_file",
        "not_after": int(end.timestamp()),
        "days_left": 12,
    }
    assert not tr.actions  # nothing at the cabinet: this is for the operators


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_a_locker_whose_certificate_ends_soon_raises_an_alarm_in_the_fleet(
    tmp_path: Path,
    service_broker: Broker,
) -> None:
    assert service_broker.pki is not None
    service_broker.pki.client("SIM-0001", days=20)  # what the cabinet will connect with
    d = fleet_dir(tmp_path, service_broker)
    user = add_user(d, "op", "operator")
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    try:
        cab.start()
        client = api(service, user.token)

        def alarm() -> dict[str, Any] | None:
            found = client.get("/api/v1/alarms", params={"state": "open"}).json()
            mine = [a for a in found if a["kind"] == "certificate_expiring"]
            return mine[0] if mine else None

        wait_for(alarm, 30, what="certificate_expiring alarm from the locker")
        raised = alarm()
        assert raised is not None and raised["locker"] == "SIM-0001"
        events = client.get("/api/v1/lockers/SIM-0001/events", params={"limit": 500}).json()
        ev = next(e for e in events if e["type"] == "certificate_expiring")
        validate_payload("event", ev)
        assert ev["data"]["certificate"] == "mqtt.cert_file"
        assert 18 <= ev["data"]["days_left"] <= 19
    finally:
        service.stop()
        cab.close()


# --- the fleet directory's certificates -------------------------------------------------------


def _fleet(tmp_path: Path) -> Fleet:
    d = tmp_path / "fleet"
    provision.provision_fleet(d, "t", "broker.example", broker_ips=["10.0.0.5"])
    provision.provision_locker(d, "LKR-1", COMPARTMENTS, pin_factory="mock")
    return Fleet.load(d)


def _open(engine: Any) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(alarms_table.select().where(alarms_table.c.state == "open")).all()
    return sorted((r.locker, r.kind, r.compartment) for r in rows)


def test_the_service_alarms_on_a_due_certificate_and_resolves_it_once_renewed(
    tmp_path: Path,
) -> None:
    fleet = _fleet(tmp_path)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    sweep = CertificateSweep(engine, fleet, alarms.Rules())
    assert sweep.sweep() == []
    assert _open(engine) == []
    provision.renew_locker(fleet.dir, "LKR-1", days=10)
    (fleet.dir / "clients" / "lockerctl.pem").write_text("gone\n")
    lines = sweep.sweep()
    assert len(lines) == 2
    assert any("lockers/LKR-1/device.pem: the certificate ends on" in x for x in lines)
    assert any("clients/lockerctl.pem: cannot be read" in x for x in lines)
    sweep.sweep()  # again: counted, not raised twice
    assert _open(engine) == [
        ("(fleet)", "certificate_expiring", "clients/lockerctl.pem"),
        ("LKR-1", "certificate_expiring", "device.pem"),
    ]
    gauge = next(iter(CertificateCollector(sweep).collect()))
    ends = {s.labels["certificate"]: s.value for s in gauge.samples}
    assert set(ends) == {"ca.pem", "broker/server.pem", "clients/backend.pem",
                         "lockers/LKR-1/device.pem"}  # fmt: skip
    provision.renew_locker(fleet.dir, "LKR-1")
    certs.renew_fleet(fleet)
    assert sweep.sweep() == []
    assert _open(engine) == []
    engine.dispose()


def test_fleet_renew_keeps_the_broker_names_and_chains_to_the_ca(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    old = x509.load_pem_x509_certificate((fleet.dir / "broker" / "server.pem").read_bytes())
    (fleet.dir / "clients" / "junk.pem").write_text("garbage\n")  # a stray file is no identity
    done = certs.renew_fleet(fleet)
    renewed = done.renewed
    assert renewed == ["broker/server.pem", "clients/backend.pem", "clients/lockerctl.pem"]
    assert done.skipped == ["clients/junk.pem: no junk-key.pem beside it"]
    assert not (fleet.dir / "clients" / "junk-key.pem").exists()
    new = x509.load_pem_x509_certificate((fleet.dir / "broker" / "server.pem").read_bytes())
    assert new.serial_number != old.serial_number
    san = x509.SubjectAlternativeName
    assert (
        new.extensions.get_extension_for_class(san).value
        == old.extensions.get_extension_for_class(san).value
    )
    ca = x509.load_pem_x509_certificate(fleet.ca_file.read_bytes())
    for name in renewed:
        x509.load_pem_x509_certificate((fleet.dir / name).read_bytes()).verify_directly_issued_by(
            ca
        )
    key = fleet.dir / "broker" / "server-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert not list(fleet.dir.rglob("*.new"))  # nothing left half-written


def test_lockerctl_fleet_certs_marks_what_to_renew(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    provision.renew_locker(fleet.dir, "LKR-1", days=5)
    out = io.StringIO()
    assert ctl.main(["fleet", "certs", str(fleet.dir)], out) == 0
    text = out.getvalue()
    assert re.search(r"^RENEW LKR-1 +lockers/LKR-1/device.pem", text, re.MULTILINE)
    assert f"lockerctl locker renew {fleet.dir} LKR-1" in text
    assert "RENEW (fleet)" not in text
    # every row's columns line up, whatever its mark
    starts = {line.index("(fleet)") for line in text.splitlines() if "(fleet)" in line}
    assert starts == {6}
    out = io.StringIO()
    assert ctl.main(["fleet", "certs", str(fleet.dir), "--json"], out) == 0
    doc = json.loads(out.getvalue())
    assert doc["ok"] is True and doc["due"] == 1
    assert [c["file"] for c in doc["certificates"] if c["renew"]] == ["lockers/LKR-1/device.pem"]
    out = io.StringIO()
    argv = ["fleet", "renew", str(fleet.dir), "--days", "30", "--client-days", "20", "--json"]
    assert ctl.main(argv, out) == 0
    assert json.loads(out.getvalue())["renewed"][0] == "broker/server.pem"
    ends = {c.name: c.not_after for c in certs.inventory(fleet) if c.not_after is not None}
    now = datetime.datetime.now(datetime.UTC)
    assert 29 <= (ends["broker/server.pem"] - now).days <= 30
    assert 19 <= (ends["clients/backend.pem"] - now).days <= 20
    # a locker whose device.pem is not kept here is listed, never due (the locker says it)
    (fleet.dir / "lockers" / "LKR-1" / "device.pem").unlink()
    out = io.StringIO()
    assert ctl.main(["fleet", "certs", str(fleet.dir)], out) == 0
    assert re.search(r"^- +LKR-1 +lockers/LKR-1/device.pem +not in this fleet", out.getvalue(),
                     re.MULTILINE)  # fmt: skip


def test_renewing_without_the_ca_key_says_where_to_run_it(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    fleet.ca_key_file.unlink()  # a server's copy of the fleet directory
    for argv in (["fleet", "renew", str(fleet.dir)], ["locker", "renew", str(fleet.dir), "LKR-1"]):
        out = io.StringIO()
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert ctl.main(argv, out) == ctl.EXIT_CONFIG, argv
        assert "where ca-key.pem lives" in err.getvalue(), err.getvalue()


def test_fleet_renew_changes_nothing_when_a_file_cannot_be_written(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    before = {p: p.read_bytes() for p in fleet.dir.rglob("*.pem")}
    blocker = fleet.dir / "clients" / "lockerctl-key.pem.new"
    blocker.mkdir()  # a real fault root cannot write through: a directory where a file goes
    with pytest.raises(IsADirectoryError):
        certs.renew_fleet(fleet)
    blocker.rmdir()
    assert {p: p.read_bytes() for p in fleet.dir.rglob("*.pem")} == before
    assert not list(fleet.dir.rglob("*.new"))
    assert len(certs.renew_fleet(fleet).renewed) == 3  # and once the fault is gone it works


# --- what is in use, not only the files ----------------------------------------------------


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_a_renewal_not_yet_in_use_keeps_its_alarm(tmp_path: Path) -> None:
    """The broker presents a 10-day certificate and the service runs with a 10-day client
    certificate. Renewing the files (``fleet renew``) resolves the files' alarms, but until the
    broker and the service restart with them, the certificates in use keep theirs."""
    pki = Pki(tmp_path / "pki", server_days=10)
    pki.client(SERVER_CN, days=10)  # what fleet_dir copies to clients/ and the service loads
    broker = Broker(tmp_path / "broker", pki=pki, server_users=(SERVER_CN, WORKER_2))
    broker.start()
    try:
        d = fleet_dir(tmp_path, broker)
        shutil.copyfile(pki.server_cert, d / "broker" / "server.pem")  # the file = the served
        service = start_service(d)
        try:
            due = {line.split(": the certificate")[0] for line in service.certs.sweep()}
            assert due == {"broker/server.pem", f"clients/{SERVER_CN}.pem"}
            renewed = certs.renew_fleet(Fleet.load(d)).renewed
            assert "broker/server.pem" in renewed and f"clients/{SERVER_CN}.pem" in renewed
            lines = service.certs.sweep()
            assert {line.split(": the certificate")[0] for line in lines} == {
                f"broker 127.0.0.1:{broker.port} (presented)",
                f"clients/{SERVER_CN}.pem (loaded)",
            }, lines
            assert all("ends on" in line for line in lines)
            with service.engine.connect() as conn:
                open_ = conn.execute(
                    alarms_table.select().where(alarms_table.c.state == "open")
                ).all()
            assert sorted(a.compartment for a in open_) == sorted(
                [f"broker 127.0.0.1:{broker.port} (presented)", f"clients/{SERVER_CN}.pem (loaded)"]
            )
        finally:
            service.stop()
    finally:
        broker.stop()
