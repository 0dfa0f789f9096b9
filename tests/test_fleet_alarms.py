"""Alarm routing and time-driven rules: e-mail over real SMTP, offline lockers, reminders,
and the service's command line (``lockerctl user add``, configuration errors)."""

from __future__ import annotations

import json
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import Engine, select, update

from locker.fleet import ctl, provision
from locker.fleet.service import alarms, db, delivery
from locker.fleet.service.alarms import Rules
from locker.fleet.service.config import ConfigError, ServiceConfig, ServiceSettings
from locker.fleet.service.ingest import Ingest, Message
from locker.sim.broker import free_port
from tests.conftest import wait_for


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def _engine(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db.upgrade(url)
    return db.make_engine(url)


def test_an_alarm_is_mailed_once_over_smtp(tmp_path: Path) -> None:
    inbox = _Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    engine = _engine(tmp_path)
    settings = ServiceSettings.model_validate(
        {"smtp": {"host": "127.0.0.1", "port": smtp.port, "sender": "f@x", "to": ["ops@x"]}}
    )
    ingest = Ingest(engine, rules=Rules(routes=delivery.routes(settings)))
    body = {"v": 1, "epoch": "e", "seq": 1, "type": "hardware_fault", "data": {"what": "bus"}}
    msg = Message("lockers/L1/evt/hardware_fault", json.dumps(body).encode())
    ingest.store([msg])
    ingest.store([msg])  # resent: no second alarm, no second mail
    sender = delivery.Deliverer(engine, settings, poll_s=0.02)
    sender.start()
    try:
        wait_for(lambda: sender.sent == 1, 10, what="mail sent")
        wait_for(lambda: len(inbox.messages) == 1, 5, what="mail received")
    finally:
        sender.stop()
        smtp.stop()
    mail = inbox.messages[0]
    assert mail["Subject"] == "[locker alarm] hardware_fault at L1"
    assert json.loads(mail.get_payload())["alarm"]["kind"] == "hardware_fault"


def test_offline_too_long_raises_once_and_a_birth_resolves_it(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    rules = Rules(offline_alarm_s=60)
    ingest = Ingest(engine, rules=rules)
    will = json.dumps({"v": 1, "online": False, "boot_id": "b"}).encode()
    ingest.store([Message("lockers/L1/status", will, retain=True)])
    now = time.time()
    with engine.begin() as conn:
        alarms.sweep(conn, rules, now + 30)
        assert conn.execute(select(db.alarms)).all() == []
        alarms.sweep(conn, rules, now + 61)
        alarms.sweep(conn, rules, now + 120)
        rows = conn.execute(select(db.alarms.c.kind, db.alarms.c.count)).all()
    assert [tuple(r) for r in rows] == [("locker_offline", 2)]
    birth = json.dumps({"v": 1, "online": True, "boot_id": "c", "version": "1"}).encode()
    ingest.store([Message("lockers/L1/status", birth, retain=True)])
    with engine.connect() as conn:
        assert conn.execute(select(db.alarms.c.state)).scalar_one() == "resolved"


def test_carrier_is_notified_of_deposit_reminder_and_expiry_once_each(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    rules = Rules(reminder_before_s=3600, routes={"notification": [("webhook", 0)]})
    ingest = Ingest(engine, rules=rules)
    until = int(time.time()) + 1800
    deposited = {
        "v": 1,
        "epoch": "e",
        "seq": 1,
        "type": "parcel_deposited",
        "parcel": "P1",
        "compartment": "A1",
        "data": {"pickup_until": until},
    }
    msg = Message("lockers/L1/evt/parcel_deposited", json.dumps(deposited).encode())
    ingest.store([msg, msg])
    with engine.begin() as conn:
        alarms.sweep(conn, rules, time.time())
        alarms.sweep(conn, rules, time.time())
    expired = deposited | {"seq": 2, "type": "pickup_expired", "data": {}}
    ingest.store([Message("lockers/L1/evt/pickup_expired", json.dumps(expired).encode())])
    with engine.connect() as conn:
        sent = [r.payload["type"] for r in conn.execute(select(db.deliveries))]
        state = conn.execute(select(db.parcels.c.state)).scalar_one()
    assert sent == ["parcel_deposited", "pickup_reminder", "pickup_expired"]
    assert state == "expired"


def test_outbox_growth_alarm_follows_the_state(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    ingest = Ingest(engine, rules=Rules(outbox_growth=100))

    def state(rev: int, depth: int) -> Message:
        doc = {"v": 1, "rev": rev, "epoch": "e", "outbox_depth": depth, "compartments": []}
        return Message("lockers/L1/state", json.dumps(doc).encode())

    ingest.store([state(1, 150)])
    ingest.store([state(2, 160)])
    with engine.connect() as conn:
        assert conn.execute(select(db.alarms.c.count)).scalar_one() == 2
    ingest.store([state(3, 10)])
    with engine.connect() as conn:
        assert conn.execute(select(db.alarms.c.state)).scalar_one() == "resolved"
    with engine.begin() as conn:  # an old snapshot arriving late changes nothing
        conn.execute(update(db.lockers).values(state_rev=5))
    ingest.store([state(4, 999)])
    with engine.connect() as conn:
        assert conn.execute(select(db.lockers.c.outbox_depth)).scalar_one() == 10


def _fleet(tmp_path: Path, extra: str = "") -> Path:

    d = tmp_path / "fleet"
    provision.provision_fleet(d, "t", "127.0.0.1")
    if extra:
        with (d / "fleet.toml").open("a") as f:
            f.write("\n" + extra)
    return d


def test_user_add_prints_json_once_and_stores_hashes(tmp_path: Path, capsys: Any) -> None:
    d = _fleet(tmp_path)
    assert ctl.main(["user", "add", "ann", "--role", "carrier", "--fleet", str(d), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "ann" and doc["role"] == "carrier"
    assert len(doc["password"]) >= 16 and len(doc["token"]) >= 40
    raw = (d / "fleet.db").read_bytes()
    assert doc["token"].encode() not in raw and doc["password"].encode() not in raw
    assert (d / "keys" / "users" / "ann.key").stat().st_mode & 0o077 == 0
    assert ctl.main(["user", "add", "ann", "--role", "carrier", "--fleet", str(d)]) == 5
    assert ctl.main(["user", "add", "bob", "--role", "boss", "--fleet", str(d)]) == 2


def test_configuration_errors_name_their_key_paths(tmp_path: Path, capsys: Any) -> None:
    d = _fleet(
        tmp_path,
        '[http]\nlisten = "nowhere"\nsecure = 1\n[[webhooks]]\nurl = "ftp://x"\nsecret = "s"\n',
    )
    try:
        ServiceConfig.load(d)
    except ConfigError as err:
        text = str(err)
    else:
        raise AssertionError("accepted a broken fleet.toml")
    for path in ("http.listen", "http.secure", "webhooks[0].url", "webhooks[0].secret"):
        assert f"fleet.toml: {path}:" in text, text
    assert ctl.main(["serve", "--fleet", str(d)]) == ctl.EXIT_CONFIG  # a fleet directory error
    assert "http.listen" in capsys.readouterr().err
    good = _fleet(tmp_path / "g")
    assert ctl.main(["serve", "--fleet", str(good), "--db", "mysql://x"]) == ctl.EXIT_USAGE
    assert "command line: db.url" in capsys.readouterr().err


def test_secrets_can_live_in_their_own_files(tmp_path: Path) -> None:
    d = _fleet(
        tmp_path,
        '[[webhooks]]\nurl = "https://x"\nsecret_file = "hook.secret"\n'
        '[smtp]\nhost = "m"\nsender = "a@b"\nto = ["c@d"]\npassword_file = "nope"\n',
    )
    provision.write_private(d / "hook.secret", b"0123456789abcdef-secret\n")
    try:
        ServiceConfig.load(d)
    except ConfigError as err:
        assert [e.split(": ", 1)[1] for e in err.errors] == [
            "smtp.password_file: cannot read nope: No such file or directory"
        ]
    else:
        raise AssertionError("a missing password file was accepted")
    provision.write_private(d / "nope", b"pw")
    cfg = ServiceConfig.load(d)
    assert cfg.settings.webhooks[0].secret == "0123456789abcdef-secret"
    assert cfg.settings.smtp is not None and cfg.settings.smtp.password == "pw"
