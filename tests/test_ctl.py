"""lockerctl and the fleet library, against the broker configuration ``fleet init`` writes.

The "locker" here is a bare paho client with the locker's provisioned certificate that checks
each command (signature, contract schema, topic, retain flag, QoS) and replies as told, so
these tests exercise the server side on its own; the daemon's end-to-end tests use the same
library against the real ``lockerd``.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from locker import errors
from locker.contract import credentials, jws
from locker.contract.actions import Action, arg_fields
from locker.fleet import client as fleet
from locker.fleet import ctl, provision, watch
from tests import contract
from tests.conftest import wait_for

MOSQUITTO = "/usr/sbin/mosquitto"
LOCKER = "LKR-0001"
EPOCH = "0b6f3c2e-8a1d-4c57-9a43-5d7f0f1e2a10"
SUBCOMMANDS = [
    [],
    ["fleet"],
    ["fleet", "init"],
    ["fleet", "show"],
    ["locker"],
    ["locker", "add"],
    ["locker", "list"],
    ["locker", "remove"],
    ["locker", "revoke"],
    ["locker", "renew"],
    ["keys", "show"],
    ["parcel", "issue"],
    ["cmd", "send"],
    ["token", "mint"],
    ["code", "new"],
    ["watch"],
]


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return ctl.main(list(argv), out), out.getvalue()


def set_code_length(config: Path, digits: int) -> None:
    """Rewrite a locker's ``security.code_length`` in the file ``locker add`` wrote."""
    data = tomllib.loads(config.read_text())
    data["security"]["code_length"] = digits
    config.write_text(tomli_w.dumps(data))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    """A fleet whose broker config listens on a free loopback port, with one locker."""
    d = tmp_path / "fleet"
    argv = ["fleet", "init", str(d), "--broker-host", "localhost", "--broker-ip", "127.0.0.1"]
    argv += ["--broker-port", str(free_port()), "--broker-bind", "127.0.0.1"]
    argv += ["--run-as-root"] if os.geteuid() == 0 else []
    assert run(*argv)[0] == ctl.EXIT_OK
    code, _ = run("locker", "add", str(d), LOCKER, "--compartments", "A1:S:17:27,B1:M:22:23")
    assert code == ctl.EXIT_OK
    return d


# --- without a broker ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=lambda a: " ".join(a) or "lockerctl")
def test_help_of_every_subcommand(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main([*argv, "--help"]) == ctl.EXIT_OK
    text = capsys.readouterr().out
    assert text.startswith("usage: lockerctl")


def test_exit_codes_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    ctl.main(["--help"])
    text = capsys.readouterr().out
    for code in (ctl.EXIT_OK, ctl.EXIT_REFUSED, ctl.EXIT_BROKER, ctl.EXIT_TIMEOUT):
        assert re.search(rf"^  {code}  \w", text, re.MULTILINE), code


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main([]) == ctl.EXIT_USAGE
    assert ctl.main(["parcel", "issue", "--fleet", "x"]) == ctl.EXIT_USAGE
    assert "required" in capsys.readouterr().err


def test_fleet_init_and_locker_add(fleet_dir: Path) -> None:
    assert (fleet_dir / "lockers" / LOCKER / "locker.toml").is_file()
    assert run("locker", "list", str(fleet_dir)) == (ctl.EXIT_OK, f"{LOCKER}\n")
    code, text = run("keys", "show", str(fleet_dir))
    assert code == ctl.EXIT_OK and "PRIVATE" not in text
    f = provision.Fleet.load(fleet_dir)
    assert provision.encode_public_key(f.token_key()) in text
    code, _ = run("fleet", "init", str(fleet_dir), "--broker-host", "x")
    assert code == ctl.EXIT_PROVISION
    code, _ = run("locker", "add", str(fleet_dir), LOCKER, "--compartments", "A1:S:17:27")
    assert code == ctl.EXIT_PROVISION
    code, _ = run("locker", "add", str(fleet_dir), "LKR-2", "--compartments", "A1:S:17")
    assert code == ctl.EXIT_USAGE  # a bad spec is a bad argument


def test_token_mint_prints_a_verifiable_token(fleet_dir: Path, tmp_path: Path) -> None:
    png, svg = tmp_path / "t.png", tmp_path / "t.svg"
    code, text = run(
        "token", "mint", "--fleet", str(fleet_dir), "--locker", LOCKER, "--parcel", "P-1",
        "--not-before", "1800000000", "--hours", "2", "--png", str(png), "--svg", str(svg),
    )  # fmt: skip
    assert code == ctl.EXIT_OK
    token = text.splitlines()[0]
    assert len(token) == 147 and token.startswith("LK1:")
    f = provision.Fleet.load(fleet_dir)
    parsed = credentials.parse_and_verify(token, {f.token_kid: f.token_key().public_key()})
    assert parsed.is_for_locker(LOCKER) and parsed.is_for_parcel("P-1")
    assert (parsed.action, parsed.not_before, parsed.expires) == (1, 1_800_000_000, 1_800_007_200)
    assert png.read_bytes().startswith(b"\x89PNG") and "<svg" in svg.read_text()


def test_code_new_prints_a_code_and_its_tag(fleet_dir: Path) -> None:
    set_code_length(fleet_dir / "lockers" / LOCKER / "locker.toml", 10)
    code, text = run("code", "new", "--fleet", str(fleet_dir), "--locker", LOCKER, "--digits", "10")
    assert code == ctl.EXIT_OK
    found = dict(line.split(": ", 1) for line in text.splitlines())
    assert re.fullmatch(r"[0-9]{10}", found["code"])
    device_key = provision.Fleet.load(fleet_dir).device_key(LOCKER)
    assert found["tag"].strip() == credentials.code_tag(device_key, found["code"])


def test_parcel_issue_without_a_broker_fails_clearly(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["parcel", "issue", "--fleet", str(fleet_dir), "--locker", LOCKER]
    code = ctl.main([*argv, "--parcel", "P-1", "--size", "S", "--timeout", "2"])
    assert code == ctl.EXIT_BROKER
    err = capsys.readouterr()
    assert "cannot connect" in err.err and "code" not in err.out


@pytest.mark.parametrize(
    "extra",
    [
        ["open", "--arg", "compartment=A1"],  # reason missing
        ["open", "--arg", "compartment=A1", "--arg", "reason=x", "--ttl", "121"],
        ["lockdown", "--arg", "on=maybe"],
        ["resync", "--arg", "full=1"],
        ["cancel", "--arg", "parcel=P", "--new-code"],
    ],
)
def test_cmd_send_checks_arguments_before_connecting(fleet_dir: Path, extra: list[str]) -> None:
    code, _ = run("cmd", "send", "--fleet", str(fleet_dir), "--locker", LOCKER, *extra)
    assert code == ctl.EXIT_USAGE


@pytest.mark.parametrize(
    "argv",
    [
        ["parcel", "issue", "--parcel", "P", "--size", "S"],
        ["cmd", "send", "resync"],
        ["token", "mint", "--parcel", "P"],
        ["code", "new"],
        ["watch", "--duration", "1"],
    ],
)
def test_unknown_locker_is_refused_before_anything_is_sent(
    fleet_dir: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a locker id would sign a command for nobody (and time out) or mint a token
    no locker accepts: every subcommand that names a locker checks the fleet directory."""
    code, text = run(*argv, "--fleet", str(fleet_dir), "--locker", "LKR-404", "--json")
    assert code == ctl.EXIT_NOT_FOUND
    doc = json.loads(text)
    assert doc["ok"] is False and doc["error"]["kind"] == "not_found"
    assert "LKR-404" in doc["error"]["message"] and LOCKER in doc["error"]["message"]
    assert "no locker 'LKR-404'" in capsys.readouterr().err


def test_every_exit_status_is_distinct_and_documented(capsys: pytest.CaptureFixture[str]) -> None:
    statuses = [ctl.EXIT_OK, ctl.EXIT_REFUSED, ctl.EXIT_USAGE, ctl.EXIT_BROKER, ctl.EXIT_TIMEOUT,
                ctl.EXIT_CONFIG, ctl.EXIT_NOT_FOUND, ctl.EXIT_FILE, ctl.EXIT_UNAVAILABLE,
                ctl.EXIT_INTERNAL, ctl.EXIT_INTERRUPTED]  # fmt: skip
    assert len(set(statuses)) == len(statuses)
    ctl.main(["--help"])
    text = capsys.readouterr().out
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("`lockerctl` for scripts") :]
    table = table[: table.index("\n\n", table.index("| status |"))]
    assert sorted(int(n) for n in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)) == sorted(
        statuses
    )  # README's table lists exactly these
    for status in statuses:
        assert re.search(rf"^  {status}  \w", text, re.MULTILINE), status


def test_exit_status_follows_the_error_category() -> None:
    assert ctl.exit_status(fleet.ReplyTimeoutError("x")) == ctl.EXIT_TIMEOUT
    assert ctl.exit_status(fleet.BrokerError("x")) == ctl.EXIT_BROKER
    assert ctl.exit_status(fleet.FleetError("x")) == ctl.EXIT_USAGE
    assert ctl.exit_status(provision.ProvisionError("x")) == ctl.EXIT_CONFIG
    assert ctl.exit_status(errors.NotFoundError("x")) == ctl.EXIT_NOT_FOUND
    assert ctl.exit_status(errors.StorageError("x")) == ctl.EXIT_FILE
    assert ctl.exit_status(credentials.CodeFormatError("x")) == ctl.EXIT_USAGE


def test_cmd_send_help_lists_every_action_and_argument_from_the_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert ctl.main(["cmd", "send", "--help"]) == ctl.EXIT_OK
    text = capsys.readouterr().out
    for action in Action:
        assert f"  {action.value}" in text
        for f in arg_fields(action):
            assert f"{f.name}=" in text, (action, f.name)
    assert "[accessible=true|false]" in text
    assert "never connected" in text  # what really happens to a command for an absent locker


def test_file_that_cannot_be_written_is_a_file_error(fleet_dir: Path, tmp_path: Path) -> None:
    argv = ["token", "mint", "--fleet", str(fleet_dir), "--locker", LOCKER, "--parcel", "P"]
    code, text = run(*argv, "--png", str(tmp_path / "no" / "such" / "dir.png"), "--json")
    assert code == ctl.EXIT_FILE
    assert json.loads(text)["error"]["kind"] == "file"


def test_human_output_has_no_epoch_seconds_and_no_reprs(fleet_dir: Path) -> None:
    for argv in (
        ["fleet", "show", str(fleet_dir)],
        ["locker", "list", str(fleet_dir)],
        ["code", "new", "--fleet", str(fleet_dir), "--locker", LOCKER],
    ):
        code, text = run(*argv)
        assert code == ctl.EXIT_OK
        assert not re.search(r"\b1[0-9]{9}\b", text), text
        assert "PosixPath(" not in text and "<" not in text, text


def test_command_claims_enforce_lifetimes() -> None:
    claims = fleet.command_claims("L1", "open", {"compartment": "A1", "reason": ""}, now=100.7)
    assert (claims["iat"], claims["exp"] - claims["iat"]) == (100, fleet.DEFAULT_SHORT_TTL_S)
    long = fleet.command_claims("L1", "resync", {}, now=0, ttl=7 * 24 * 3600)
    assert long["exp"] == 7 * 24 * 3600
    with pytest.raises(fleet.FleetError, match="lifetime"):
        fleet.command_claims("L1", "lockdown", {"on": True}, now=0, ttl=121)
    with pytest.raises(fleet.FleetError, match="lifetime"):
        fleet.command_claims("L1", "cancel", {"parcel": "P"}, now=0, ttl=7 * 24 * 3600 + 1)
    with pytest.raises(fleet.FleetError, match="unknown action"):
        fleet.command_claims("L1", "open_all", {}, now=0)
    a = fleet.command_claims("L1", "resync", {}, now=0)
    assert a["jti"] != fleet.command_claims("L1", "resync", {}, now=0)["jti"]


# --- with the fleet's own broker ------------------------------------------------------------------


@pytest.fixture
def fleet_broker(fleet_dir: Path) -> Iterator[provision.Fleet]:
    """Mosquitto running the ``mosquitto.conf`` and ACL that ``fleet init`` wrote."""
    f = provision.Fleet.load(fleet_dir)
    log = (fleet_dir / "broker.log").open("wb")
    conf = str(fleet_dir / "broker" / "mosquitto.conf")
    proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(f.broker_port) or proc.poll() is not None, 10, what="mosquitto")
        assert proc.poll() is None, (fleet_dir / "broker.log").read_text()
        yield f
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _props(**values: Any) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


@dataclass
class FakeLocker:
    """The locker's side of the contract, just enough to answer commands and publish."""

    fleet: provision.Fleet
    locker_id: str = LOCKER
    answer: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda claims: {
        "status": "done",
        "result": {"compartment": "A1"},
    }
    commands: list[dict[str, Any]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        d = self.fleet.locker_dir(self.locker_id)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.locker_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set(str(d / "ca.pem"), str(d / "device.pem"), str(d / "device-key.pem"))
        self._subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.keys = {self.fleet.command_kid: self.fleet.command_key().public_key()}

    def start(self) -> FakeLocker:
        self.client.connect("localhost", self.fleet.broker_port)
        self.client.loop_start()
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        p = f"lockers/{self.locker_id}"
        self.client.subscribe([(f"{p}/cmd", opts), (f"{p}/ack", opts)])
        wait_for(self._subscribed.is_set, 10, what="locker subscribed")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, channel: str, doc: dict[str, Any], *, retain: bool = False) -> None:
        contract.validate_topic_message(f"lockers/{self.locker_id}/{channel}", doc, retain, 1)
        info = self.client.publish(
            f"lockers/{self.locker_id}/{channel}", json.dumps(doc), 1, retain
        )
        info.wait_for_publish(5)

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = bytes(msg.payload)
            contract.validate_topic_message(msg.topic, payload, bool(msg.retain), msg.qos)
            if msg.topic.endswith("/ack"):
                ack = json.loads(payload)
                assert ack["epoch"] == EPOCH
                self.acks.append(ack["upto_seq"])
                return
            _header, claims = jws.verify_compact(payload, self.keys)
            props_in: Any = msg.properties
            assert props_in.ResponseTopic == f"lockers/{self.locker_id}/res"
            self.commands.append(claims)
            reply = self.answer(claims)
            if reply is None:
                return
            doc = {"v": 1, "cmd_id": claims["jti"], "ts": "2025-01-01T00:00:00Z", **reply}
            contract.validate_payload("res", doc)
            props = _props(CorrelationData=props_in.CorrelationData)
            client.publish(props_in.ResponseTopic, json.dumps(doc), 1, properties=props)
        except Exception as err:  # recorded, and asserted on by the tests
            self.problems.append(repr(err))


@pytest.fixture
def fake_locker(fleet_broker: provision.Fleet) -> Iterator[FakeLocker]:
    locker = FakeLocker(fleet_broker).start()
    yield locker
    locker.stop()
    assert locker.problems == []


@pytest.mark.broker
@pytest.mark.timeout(30)
def test_parcel_issue_unanswered_still_prints_the_codes(fake_locker: FakeLocker) -> None:
    """The assign may run when the locker is back, and then only its codes work: a time-out
    prints them (once) with what to do, and exits with the time-out status."""
    fake_locker.answer = lambda claims: None  # receives, never answers
    code, text = run(
        "parcel", "issue", "--fleet", str(fake_locker.fleet.dir), "--locker", LOCKER,
        "--parcel", "P-78", "--size", "S", "--timeout", "1", "--no-qr",
    )  # fmt: skip
    assert code == ctl.EXIT_TIMEOUT, text
    assert [c["act"] for c in fake_locker.commands] == ["assign"]
    assert "did not answer" in text and "cancel --arg parcel=P-78" in text
    assert "not answered yet" in text
    codes = re.findall(r"^(drop-off|pickup) code \(\w+\):\s+([0-9]+) ", text, re.MULTILINE)
    assert [k for k, _ in codes] == ["drop-off", "pickup"]


@pytest.mark.broker
@pytest.mark.timeout(30)
def test_parcel_issue_end_to_end(fake_locker: FakeLocker, tmp_path: Path) -> None:
    f = fake_locker.fleet
    png = tmp_path / "qr.png"
    argv = ["parcel", "issue", "--fleet", str(f.dir), "--locker", LOCKER, "--parcel", "P-77"]
    assert run(*argv, "--size", "S", "--digits", "9")[0] == ctl.EXIT_USAGE  # the locker takes 8
    assert fake_locker.commands == []
    set_code_length(f.locker_dir(LOCKER) / "locker.toml", 9)
    code, text = run(*argv, "--size", "S", "--qr-png", str(png))
    assert code == ctl.EXIT_OK, text
    [claims] = fake_locker.commands
    assert claims["act"] == "assign" and claims["aud"] == LOCKER
    args = claims["args"]
    codes = dict(re.findall(r"^(drop-off|pickup) code \(\w+\):\s+([0-9]+) ", text, re.MULTILINE))
    device_key = f.device_key(LOCKER)
    assert args["dropoff_tag"] == credentials.code_tag(device_key, codes["drop-off"])
    assert args["pickup_tag"] == credentials.code_tag(device_key, codes["pickup"])
    assert len(codes["pickup"]) == 9
    assert "compartment A1" in text
    token = re.search(r"pickup QR token: (LK1:.{143})$", text, re.MULTILINE)
    assert token is not None
    parsed = credentials.parse_and_verify(token.group(1), {f.token_kid: f.token_key().public_key()})
    assert parsed.is_for_parcel("P-77") and parsed.expires == args["dropoff_until"] + 72 * 3600
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "accessible" not in args
    code, text = run(
        "parcel", "issue", "--fleet", str(f.dir), "--locker", LOCKER, "--parcel", "P-78",
        "--size", "S", "--accessible", "--no-qr",
    )  # fmt: skip
    assert code == ctl.EXIT_OK, text
    assert fake_locker.commands[-1]["args"]["accessible"] is True


@pytest.mark.broker
@pytest.mark.timeout(30)
def test_ctrl_c_while_waiting_for_a_reply_is_one_line_and_130(fake_locker: FakeLocker) -> None:
    fake_locker.answer = lambda claims: None  # receives, never answers
    f = fake_locker.fleet
    proc = subprocess.Popen(
        [sys.executable, "-m", "locker.fleet.ctl", "cmd", "send", "--fleet", str(f.dir),
         "--locker", LOCKER, "reset_lockout", "--timeout", "25"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: fake_locker.commands, 15, what="the command at the locker")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == ctl.EXIT_INTERRUPTED, err
    assert "lockerctl: interrupted" in err and "Traceback" not in err


@pytest.mark.timeout(60)
def test_ctrl_c_while_lockerctl_starts_is_one_line_and_130_too() -> None:
    # The interrupt arrives while lockerctl imports its stack (most of a second): made
    # deterministic by an import hook that raises it where SIGINT's handler would.
    child = textwrap.dedent(
        """
        import sys
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "sqlalchemy":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        sys.argv = ["lockerctl", "fleet", "show", "nowhere"]
        from locker.fleet.ctl_entry import main
        sys.exit(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == ctl.EXIT_INTERRUPTED, done.stderr
    assert done.stderr.strip() == "lockerctl: interrupted"


@pytest.mark.broker
@pytest.mark.timeout(30)
def test_refused_and_unanswered_commands(fake_locker: FakeLocker) -> None:
    f = fake_locker.fleet
    base = ["--fleet", str(f.dir), "--locker", LOCKER]
    fake_locker.answer = lambda claims: {
        "status": "rejected",
        "error": {"code": "no_compartment", "message": "full"},
    }
    code, text = run("parcel", "issue", *base, "--parcel", "P-1", "--size", "XL")
    assert code == ctl.EXIT_REFUSED
    assert "no_compartment" in text and "code (" not in text
    fake_locker.answer = lambda claims: None
    code, text = run("cmd", "send", *base, "lockdown", "--arg", "on=true", "--timeout", "1")
    assert code == ctl.EXIT_TIMEOUT
    assert fake_locker.commands[-1]["args"] == {"on": True}
    assert fake_locker.commands[-1]["exp"] - fake_locker.commands[-1]["iat"] <= 120


@pytest.mark.broker
@pytest.mark.timeout(30)
def test_cmd_send_retrieve_with_a_new_code(fake_locker: FakeLocker) -> None:
    f = fake_locker.fleet
    code, text = run(
        "cmd", "send", "--fleet", str(f.dir), "--locker", LOCKER, "retrieve", "--new-code",
        "--arg", "parcel=P-1", "--arg", "valid_until=1900000000",
    )  # fmt: skip
    assert code == ctl.EXIT_OK, text
    printed = re.search(r"retrieval code \(courier\): ([0-9]+)", text)
    assert printed is not None
    tag = fake_locker.commands[-1]["args"]["code_tag"]
    assert tag == credentials.code_tag(f.device_key(LOCKER), printed.group(1))


@pytest.mark.broker
@pytest.mark.timeout(30)
def test_fleet_broker_isolates_lockers(fleet_broker: provision.Fleet, fleet_dir: Path) -> None:
    assert run("locker", "add", str(fleet_dir), "LKR-0002", "--compartments", "A1:S:12:6")[0] == 0
    d = fleet_broker.locker_dir("LKR-0002")
    tls = fleet.TlsFiles(d / "ca.pem", d / "device.pem", d / "device-key.pem")
    port = fleet_broker.broker_port
    with fleet.FleetClient("localhost", port, client_id="LKR-0002", tls=tls) as other:
        other.connect()
        other.publish("lockers/LKR-0002/evt/door_opened", b"{}")  # its own topic: fine
        for topic in ("lockers/LKR-0001/status", "lockers/LKR-0001/cmd", "lockers/LKR-0002/cmd"):
            with pytest.raises(fleet.FleetError, match="refused"):
                other.publish(topic, b"{}")
    no_cert = fleet.FleetClient("localhost", port, client_id="x", tls=None)
    with pytest.raises(fleet.BrokerError):
        no_cert.connect(timeout=5)


@pytest.mark.broker
@pytest.mark.timeout(30)
def test_watch_acks_contiguous_events_durably(fake_locker: FakeLocker) -> None:
    f = fake_locker.fleet
    status = {"v": 1, "online": True, "boot_id": "b1", "ts": "2025-01-01T00:00:00Z"}
    fake_locker.publish("status", {**status, "version": "0.1", "clock_synced": True}, retain=True)
    lines: list[str] = []
    log = watch.EventLog(f.dir / "events")
    client = fleet.FleetClient.for_fleet(f, provision.BACKEND_USER)
    client.connect()
    watcher = watch.Watcher(client, watch.FleetView(f.topic_prefix, log), lines.append, log=log)
    try:
        watcher.start()
        wait_for(lambda: any("online" in line for line in lines), 10, what="retained status")
        for seq in (1, 2, 4, 2):
            fake_locker.publish(f"evt/door_{'opened' if seq % 2 else 'closed'}", event_doc(seq))
        wait_for(lambda: any("gap" in line for line in lines), 10, what="gap report")
        wait_for(lambda: 2 in fake_locker.acks, 10, what="ack 2")
        assert max(fake_locker.acks) == 2  # never past the gap
        fake_locker.publish("evt/door_closed", event_doc(3, "door_closed"))
        wait_for(lambda: fake_locker.acks and fake_locker.acks[-1] == 4, 10, what="ack 4")
    finally:
        watcher.stop()
        client.close()
        log.close()
    assert watcher.errors == []
    stored = [
        json.loads(line) for line in (f.dir / "events" / f"{LOCKER}.jsonl").read_text().splitlines()
    ]
    assert sorted(row["seq"] for row in stored) == [1, 2, 3, 4]
    assert {row["epoch"] for row in stored} == {EPOCH}
    code, text = run("watch", "--fleet", str(f.dir), "--duration", "0.5", "--no-ack")
    assert code == ctl.EXIT_OK and f"{LOCKER} online" in text


def event_doc(seq: int, event_type: str | None = None) -> dict[str, Any]:
    return {
        "v": 1,
        "epoch": EPOCH,
        "seq": seq,
        "event_id": str(uuid.uuid4()),
        "boot_id": "b1",
        "ts": "2025-01-01T00:00:00Z",
        "clock_synced": True,
        "type": event_type or f"door_{'opened' if seq % 2 else 'closed'}",
        "compartment": "A1",
        "data": {},
    }


def _start_fleet_broker(f: provision.Fleet, log: Path) -> subprocess.Popen[bytes]:
    conf = str(f.dir / "broker" / "mosquitto.conf")
    with log.open("ab") as out:
        proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: _listening(f.broker_port) or proc.poll() is not None, 10, what="mosquitto")
    assert proc.poll() is None, log.read_text()
    return proc


def _locker_connects(f: provision.Fleet, locker_id: str) -> bool:
    d = f.locker_dir(locker_id)
    tls = fleet.TlsFiles(d / "ca.pem", d / "device.pem", d / "device-key.pem")
    client = fleet.FleetClient("localhost", f.broker_port, client_id=locker_id, tls=tls)
    try:
        client.connect(timeout=5)
    except fleet.BrokerError:
        return False
    client.close()
    return True


# --- --json ---------------------------------------------------------------------------------------


def _json(*argv: str) -> tuple[int, Any]:
    code, text = run(*argv, "--json")
    assert text.endswith("\n") and text.count("\n") == 1, text  # one document, nothing else
    return code, json.loads(text)


def test_every_subcommand_takes_json() -> None:
    leaves = ctl._leaves(ctl.build_parser())
    assert len(leaves) >= len(SUBCOMMANDS) - 3
    for leaf in leaves:
        assert "--json" in leaf._option_string_actions, leaf.prog


def test_json_of_every_offline_subcommand(tmp_path: Path) -> None:
    d = tmp_path / "fleet"
    code, doc = _json("fleet", "init", str(d), "--broker-host", "localhost")
    assert code == ctl.EXIT_OK and doc["ok"] is True and doc["fleet"] == "fleet"
    code, doc = _json("locker", "add", str(d), LOCKER, "--compartments", "A1:S:17:27")
    assert code == ctl.EXIT_OK and doc["locker"] == LOCKER
    code, doc = _json("locker", "list", str(d))
    assert doc == {"ok": True, "lockers": [LOCKER]}
    code, doc = _json("fleet", "show", str(d))
    assert doc["broker"] == {"host": "localhost", "port": 8883} and doc["lockers"] == [LOCKER]
    assert _json("keys", "show", str(d))[1] == doc
    code, doc = _json("code", "new", "--fleet", str(d), "--locker", LOCKER)
    assert re.fullmatch(r"[0-9]{8}", doc["code"]) and re.fullmatch(r"[0-9a-f]{64}", doc["tag"])
    code, doc = _json(
        "token", "mint", "--fleet", str(d), "--locker", LOCKER, "--parcel", "P",
        "--not-before", "1800000000", "--hours", "1", "--qr",
    )  # fmt: skip
    assert doc["token"].startswith("LK1:") and doc["not_before"] == "2027-01-15T08:00:00Z"
    assert doc["expires"] == "2027-01-15T09:00:00Z"
    code, doc = _json("fleet", "init", str(d), "--broker-host", "x")
    assert code == ctl.EXIT_CONFIG and doc["ok"] is False and doc["error"]["kind"] == "config"
    code, doc = _json("cmd", "send", "--fleet", str(d), "--locker", LOCKER, "lockdown",
                      "--arg", "on=maybe")  # fmt: skip
    assert code == ctl.EXIT_USAGE and "on" in doc["error"]["message"]
    code, doc = _json("cmd", "send", "--fleet", str(d), "--locker", LOCKER, "resync",
                      "--broker", "127.0.0.1:1", "--timeout", "2")  # fmt: skip
    assert code == ctl.EXIT_BROKER and doc["error"]["kind"] == "broker"


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_renew_and_revoke_are_enforced_by_the_fleet_broker(fleet_dir: Path) -> None:
    f = provision.Fleet.load(fleet_dir)
    log = fleet_dir / "broker.log"
    proc = _start_fleet_broker(f, log)
    try:
        code, text = run("locker", "renew", str(fleet_dir), LOCKER, "--days", "30")
        assert code == ctl.EXIT_OK and "new certificate valid until" in text
        assert _locker_connects(f, LOCKER)  # the renewed certificate works
        code, text = run("locker", "revoke", str(fleet_dir), LOCKER)
        assert code == ctl.EXIT_OK and "2 certificate(s) revoked" in text
        proc.terminate()
        proc.wait(10)
        proc = _start_fleet_broker(f, log)  # the broker reads crl.pem when it starts
        assert not _locker_connects(f, LOCKER)
        code, _ = run("locker", "remove", str(fleet_dir), LOCKER)
        assert code == ctl.EXIT_OK and LOCKER not in f.lockers()
        assert run("locker", "revoke", str(fleet_dir), LOCKER)[0] == ctl.EXIT_NOT_FOUND
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_json_of_every_subcommand_that_talks_to_lockers(fake_locker: FakeLocker) -> None:
    f = fake_locker.fleet
    base = ["--fleet", str(f.dir), "--locker", LOCKER]
    code, doc = _json("parcel", "issue", *base, "--parcel", "P-9", "--size", "S", "--accessible")
    assert code == ctl.EXIT_OK and doc["compartment"] == "A1" and doc["reply"]["status"] == "done"
    assert fake_locker.commands[-1]["args"]["accessible"] is True
    assert re.fullmatch(r"[0-9]{8}", doc["pickup_code"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["dropoff_until"])
    code, doc = _json("cmd", "send", *base, "open", "--arg", "compartment=A1", "--arg", "reason=x")
    assert code == ctl.EXIT_OK and doc["args"] == {"compartment": "A1", "reason": "x"}
    fake_locker.answer = lambda claims: {
        "status": "rejected",
        "error": {"code": "no_compartment", "message": "full"},
    }
    code, doc = _json("cmd", "send", *base, "assign", "--arg", "parcel=P", "--arg", "kind=return",
                      "--arg", "size=XL", "--arg", f"dropoff_tag={'a' * 64}",
                      "--arg", f"pickup_tag={'b' * 64}", "--arg", "accessible=yes")  # fmt: skip
    assert code == ctl.EXIT_REFUSED and doc["ok"] is False
    assert doc["reply"]["error"]["code"] == "no_compartment"
    assert fake_locker.commands[-1]["args"]["accessible"] is True
    fake_locker.answer = lambda claims: None
    code, doc = _json("cmd", "send", *base, "resync", "--timeout", "1")
    assert code == ctl.EXIT_TIMEOUT and doc["error"]["kind"] == "timeout"
    assert "never connected" in doc["error"]["message"]
    fake_locker.publish("state", {
        "v": 1, "epoch": EPOCH, "rev": 1, "ts": "2025-01-01T00:00:00Z", "lockdown": False,
        "keypad_locked": False, "outbox_depth": 0, "last_seq": 1, "compartments": [],
    }, retain=True)  # fmt: skip
    code, text = run("watch", "--fleet", str(f.dir), "--duration", "1", "--no-ack", "--json")
    assert code == ctl.EXIT_OK
    records = [json.loads(line) for line in text.splitlines()]
    assert records, "watch printed nothing"
    assert any(r["channel"] == "state" and r["message"]["rev"] == 1 for r in records)
