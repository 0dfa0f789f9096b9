"""Configuration loading and validation (DESIGN section 8)."""

from __future__ import annotations

import base64
import copy
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from locker.cabinet.config import (
    EXIT_CONFIG,
    Config,
    ConfigError,
    check_config_cli,
    load_config,
    parse_config,
)
from locker.cabinet.domain import throttle
from locker.cabinet.domain.model import Throttle
from locker.cabinet.domain.throttle import Limits
from locker.config.load import MAX_CONFIG_BYTES
from locker.config.sections import (
    BoardCompartment,
    GpioCompartment,
    Security,
    Timing,
    guesses_per_pickup,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
KEY_A = "kvKWUOi0ZXg5XEdwXwUKrt9uiAS5Y0oBE8glpNwafxI="
KEY_B = "fsAn6DCqclzCcJsmkoiRPtRQinAJHoz9Zb0cbjwQ6G4="

# A valid cabinet touching every section: mutations of it make the error cases below.
BASE: dict[str, Any] = {
    "locker": {"id": "LKR-0001", "state_dir": "/var/lib/locker"},
    "mqtt": {"host": "broker.example.net", "tls": False},
    "security": {
        "device_key_file": "/etc/locker/device.key",
        "command_keys": {"ops1": KEY_A},
        "token_keys": {"1": KEY_B},
    },
    "timing": {"unlock_pulse_s": 0.5},
    "gpio": {"pin_factory": "mock"},
    "keypad": {"type": "matrix", "rows": [5, 6, 13, 19], "cols": [12, 16, 20]},
    "scanner": {"port": "loop://"},
    "feedback": {"buzzer_pin": 18, "ok_led_pin": 23, "error_led_pin": 24},
    "boards": [
        {"name": "b0", "port": "/dev/ttyUSB0", "address": 0},
        {"name": "b1", "port": "/dev/ttyUSB0", "address": 1},
    ],
    "compartments": [
        {"id": "A1", "size": "S", "lock_pin": 17, "door_pin": 27},
        {"id": "A2", "size": "M", "lock_pin": 22, "door_pin": 4, "door_closed_level": "high"},
        {"id": "B1", "size": "L", "board": "b0", "channel": 1},
        {"id": "B2", "size": "XL", "board": "b1", "channel": 1},
    ],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, source="locker.toml", check_files=False)


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def setter(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets (or, with value DELETE, removes) one dotted key; ints index arrays."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value

    return mutate


DELETE = object()


def rename_board(data: dict[str, Any]) -> None:
    data["boards"][1]["name"] = "b0"
    data["compartments"][3].update(board="b0", channel=2)


# (mutation, key path in the message, words of the reason)
MISTAKES: list[tuple[Callable[[dict[str, Any]], None], str, str]] = [
    (setter("locker.nmae", "x"), "locker.nmae", "unknown key (typo?); did you mean 'name'"),
    (setter("timing.unlock_puls_s", 1), "timing.unlock_puls_s", "unknown key (typo?)"),
    (setter("lockers", {}), "lockers", "unknown key (typo?)"),
    (setter("locker.id", DELETE), "locker.id", "required key is missing"),
    (setter("security", DELETE), "security", "required section is missing"),
    (setter("compartments.0.lock_pin", "17"), "compartments[0].lock_pin", "expected an integer"),
    (setter("mqtt.keepalive_s", True), "mqtt.keepalive_s", "expected an integer, got a boolean"),
    (setter("mqtt.tls", "yes"), "mqtt.tls", "expected true or false, got a string"),
    (setter("keypad.rows", 5), "keypad.rows", "expected an array, got an integer"),
    (setter("timing", []), "timing", "expected a table, got an array"),
    (setter("timing.unlock_pulse_s", 2.5), "timing.unlock_pulse_s", "hard cap of 2.0 s"),
    (setter("timing.unlock_pulse_s", 0), "timing.unlock_pulse_s", "greater than 0"),
    (setter("timing.unlock_pulse_s", -1.0), "timing.unlock_pulse_s", "greater than 0"),
    (setter("timing.unlock_pulse_s", float("nan")), "timing.unlock_pulse_s", "finite"),
    (setter("timing.door_left_open_s", float("inf")), "timing.door_left_open_s", "finite"),
    (setter("timing.unlock_rest_s", 0.01), "timing.unlock_rest_s", "at least 0.05"),
    (setter("timing.door_debounce_s", 2), "timing.door_debounce_s", "at most 1 s"),
    (setter("timing.door_open_timeout_s", 0), "timing.door_open_timeout_s", "greater than 0"),
    (setter("timing.pickup_hours", -1), "timing.pickup_hours", "greater than 0"),
    (setter("mqtt.port", 0), "mqtt.port", "at least 1 and at most 65535"),
    (setter("mqtt.port", 70000), "mqtt.port", "at most 65535"),
    (setter("mqtt.keepalive_s", 4), "mqtt.keepalive_s", "at least 5"),
    (setter("mqtt.session_expiry_s", -1), "mqtt.session_expiry_s", "at least 1"),
    (setter("mqtt.session_expiry_s", 0), "mqtt.session_expiry_s", "queued while the locker"),
    (setter("mqtt.reconnect_max_s", 0.5), "mqtt.reconnect_max_s", "below mqtt.reconnect_min_s"),
    (setter("mqtt.max_inflight", 101), "mqtt.max_inflight", "at most 100"),
    (setter("mqtt.host", "a b"), "mqtt.host", "host name"),
    (setter("mqtt.topic_prefix", "a/#"), "mqtt.topic_prefix", "wildcards"),
    (setter("mqtt.topic_prefix", "a/+/b"), "mqtt.topic_prefix", "wildcards"),
    (setter("mqtt.topic_prefix", "/lockers"), "mqtt.topic_prefix", "start or end with '/'"),
    (setter("mqtt.topic_prefix", "lockers/"), "mqtt.topic_prefix", "start or end with '/'"),
    (
        setter("mqtt", {"host": "h", "ca_file": "a", "cert_file": "b"}),
        "mqtt.key_file",
        "required when tls = true",
    ),
    (
        setter("compartments.0.door_pin", 28),
        "compartments[0].door_pin",
        "BCM GPIO numbers are 0-27",
    ),
    (setter("feedback.buzzer_pin", -1), "feedback.buzzer_pin", "0-27"),
    (setter("boards.0.address", 16), "boards[0].address", "at most 15"),
    (setter("compartments.2.channel", 0), "compartments[2].channel", "at least 1"),
    (setter("compartments.2.channel", 17), "compartments[2].channel", "at most 16"),
    (setter("boards.0.baudrate", 12345), "boards[0].baudrate", "not a standard baudrate"),
    (setter("scanner.baudrate", 9601), "scanner.baudrate", "not a standard baudrate"),
    (setter("compartments.0.size", "XXL"), "compartments[0].size", "'S', 'M', 'L' or 'XL'"),
    (
        setter("compartments.1.door_closed_level", "up"),
        "compartments[1].door_closed_level",
        "'low' or 'high'",
    ),
    (setter("boards.0.lock_bit_locked", 2), "boards[0].lock_bit_locked", "0 or 1"),
    (setter("boards.0.lock_bit_locked", True), "boards[0].lock_bit_locked", "expected an integer"),
    (setter("boards.0.poll_interval_s", 0.01), "boards[0].poll_interval_s", "at least 0.02"),
    (setter("boards.0.item_sensors", 1), "boards[0].item_sensors", "expected true or false"),
    (setter("boards.0.protocol", "modbus"), "boards[0].protocol", "'kerong-cu16'"),
    (setter("gpio.pin_factory", "gpio"), "gpio.pin_factory", "'lgpio', 'rpigpio', 'pigpio'"),
    (setter("locker.id", "LKR/1"), "locker.id", "MQTT topic level"),
    (setter("locker.id", "LKR+1"), "locker.id", "MQTT topic level"),
    (setter("locker.id", "#"), "locker.id", "MQTT topic level"),
    (setter("locker.id", ""), "locker.id", "1-64"),
    (setter("locker.id", "x" * 65), "locker.id", "1-64"),
    (setter("locker.name", "bad\nname"), "locker.name", "control characters"),
    (setter("locker.state_dir", ""), "locker.state_dir", "non-empty path"),
    (setter("compartments.0.id", "A 1"), "compartments[0].id", "A-Z a-z 0-9 _ -"),
    (
        setter("security.command_keys.ops1", "not base64!"),
        "security.command_keys.ops1",
        "not standard base64",
    ),
    (
        setter("security.command_keys.ops1", base64.b64encode(bytes(16)).decode()),
        "security.command_keys.ops1",
        "decodes to 16 bytes",
    ),
    (
        setter("security.command_keys.ops1", KEY_A.rstrip("=")),
        "security.command_keys.ops1",
        "not standard base64",
    ),
    (
        setter("security.command_keys.a b", KEY_A),
        'security.command_keys."a b"',
        "A-Z a-z 0-9 . _ -",
    ),
    (setter("security.token_keys.256", KEY_A), "security.token_keys.256", "0-255"),
    (setter("security.token_keys.01", KEY_A), "security.token_keys.01", "0-255"),
    (setter("security.token_keys.one", KEY_A), "security.token_keys.one", "0-255"),
    (
        setter("security.hard_lockout_failures", 3),
        "security.hard_lockout_failures",
        "at least failures_before_backoff",
    ),
    (
        setter("security.max_remote_opens_per_hour", -1),
        "security.max_remote_opens_per_hour",
        "at least 0",
    ),
    (setter("compartments", []), "compartments", "at least one"),
    (setter("compartments.0.board", "b0"), "compartments[0]", "either to GPIO pins or to a board"),
    (
        setter("compartments.0.lock_pin", DELETE),
        "compartments[0].lock_pin",
        "required for a GPIO compartment",
    ),
    (
        setter("compartments.2.channel", DELETE),
        "compartments[2].channel",
        "required for a board compartment",
    ),
    (
        setter("compartments.2.door_closed_level", "low"),
        "compartments[2].door_closed_level",
        "only for GPIO",
    ),
    (
        setter("compartments.2.board", "b9"),
        "compartments[2].board",
        'no [[boards]] entry is named "b9"',
    ),
    (
        setter("compartments.3.board", "b0"),
        "compartments[3].channel",
        "b0 channel 1 is already used by compartments[2]",
    ),
    (
        setter("compartments.1.id", "A1"),
        "compartments[1].id",
        '"A1" is already used by compartments[0]',
    ),
    (rename_board, "boards[1].name", '"b0" is already used by boards[0]'),
    (
        setter("boards.1.address", 0),
        "boards[1].address",
        "address 0 on /dev/ttyUSB0 is already used by boards[0]",
    ),
    (setter("boards.1.baudrate", 9600), "boards[1].baudrate", "one baudrate"),
    (
        setter("compartments.1.lock_pin", 17),
        "compartments[1].lock_pin",
        "GPIO17 is already used by compartments[0].lock_pin",
    ),
    (
        setter("compartments.0.door_pin", 17),
        "compartments[0].door_pin",
        "GPIO17 is already used by compartments[0].lock_pin",
    ),
    (
        setter("compartments.0.lock_pin", 12),
        "compartments[0].lock_pin",
        "GPIO12 is already used by keypad.cols[0]",
    ),
    # DESIGN section 7: lock pins high or toggling at boot would fire the coil at power-on.
    *(
        (
            setter("compartments.0.lock_pin", pin),
            "compartments[0].lock_pin",
            f"GPIO{pin} is pulled high while the Pi boots",
        )
        for pin in (0, 2, 3, 7, 8)
    ),
    *(
        (
            setter("compartments.0.lock_pin", pin),
            "compartments[0].lock_pin",
            f"GPIO{pin} is the boot UART and toggles while the Pi boots",
        )
        for pin in (14, 15)
    ),
    (
        setter("compartments.0.item_pin", 19),
        "compartments[0].item_pin",
        "GPIO19 is already used by keypad.rows[3]",
    ),
    (
        setter("compartments.2.item_pin", 9),
        "compartments[2].item_pin",
        "only for GPIO compartments",
    ),
    (setter("security.code_length", 3), "security.code_length", "at least 6"),
    (setter("security.code_length", 5), "security.code_length", "at least 6"),
    (setter("security.code_length", 17), "security.code_length", "at most 16"),
    (setter("security.lockout_s", 0), "security.lockout_s", "greater than 0"),
    (
        setter("feedback.ok_led_pin", 20),
        "feedback.ok_led_pin",
        "GPIO20 is already used by keypad.cols[2]",
    ),
    (setter("keypad.rows", [5, 6, 13]), "keypad.rows", "4 row pins, got 3"),
    (setter("keypad.cols", [12, 16, 20, 21, 26]), "keypad.cols", "3 or 4 column pins, got 5"),
    (setter("keypad.port", "/dev/ttyUSB1"), "keypad.port", 'not used with type = "matrix"'),
    (setter("keypad", {"type": "serial"}), "keypad.port", 'required with type = "serial"'),
    (
        setter("keypad", {"type": "none", "rows": [5, 6, 13, 19]}),
        "keypad.rows",
        'not used with type = "none"',
    ),
    (setter("keypad", {"type": "wiegand"}), "keypad.type", "'matrix', 'serial' or 'none'"),
    (setter("scanner.port", ""), "scanner.port", "pySerial port"),
    (
        setter("scanner.port", "/dev/ttyUSB0"),
        "boards[0].port",
        "/dev/ttyUSB0 is already used by scanner.port",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "where", "reason"), MISTAKES, ids=[m[1] + ":" + m[2] for m in MISTAKES]
)
def test_each_mistake_gives_one_clear_message(
    mutate: Callable[[dict[str, Any]], None], where: str, reason: str
) -> None:
    data = base()
    mutate(data)
    errors = errors_of(data)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"locker.toml: {where}: "), errors
    assert reason in errors[0]


def test_base_is_valid_and_typed() -> None:
    cfg = parse(base())
    assert cfg.locker.id == "LKR-0001"
    assert cfg.mqtt is not None and cfg.mqtt.port == 1883  # default follows tls = false
    assert cfg.timing.unlock_rest_s == 0.3 and cfg.timing.dropoff_hours == 48
    assert cfg.security.max_failures_per_hour == 30
    assert cfg.security.code_length == 8 and cfg.security.lockout_s == 14400
    a1, a2, b1, _b2 = cfg.compartments
    assert isinstance(a1, GpioCompartment) and isinstance(a2, GpioCompartment)
    assert isinstance(b1, BoardCompartment) and b1.channel == 1 and not b1.is_gpio
    assert a1.item_pin is None and a1.is_gpio
    assert [c.id for c in cfg.gpio_compartments()] == ["A1", "A2"]
    assert [c.id for c in cfg.board_compartments("b1")] == ["B2"]
    assert cfg.compartment("B1") is b1
    assert not cfg.boards[0].item_sensors and cfg.boards[0].lock_bit_locked == 1
    assert a2.door_closed_level == "high"
    assert a1.door_closed_level == "low"
    assert isinstance(cfg.security.command_public_keys()["ops1"], Ed25519PublicKey)
    assert list(cfg.security.token_public_keys()) == [1]
    with pytest.raises(ValidationError):
        cfg.locker.id = "other"


def test_optional_sections_absent_and_disabled() -> None:
    data = base()
    for section in ("mqtt", "feedback", "boards", "timing", "gpio"):
        del data[section]
    data["keypad"] = {"type": "none"}
    data["scanner"] = {"port": "none"}
    data["compartments"] = data["compartments"][:2]
    cfg = parse(data)
    assert cfg.mqtt is None and cfg.keypad is None and cfg.scanner is None
    assert cfg.feedback is None and cfg.boards == []
    assert cfg.timing.unlock_pulse_s == 0.5 and cfg.gpio.pin_factory == "lgpio"
    assert "offline" in cfg.summary()


def test_tls_port_default_and_files_required() -> None:
    data = base()
    data["mqtt"] = {"host": "h", "ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}
    cfg = parse_config(data, source="locker.toml", base_dir=Path("/etc/locker"), check_files=False)
    assert cfg.mqtt is not None and cfg.mqtt.tls and cfg.mqtt.port == 8883
    assert cfg.mqtt.ca_file == Path("/etc/locker/ca.pem")
    del data["mqtt"]["key_file"], data["mqtt"]["cert_file"]
    assert sorted(errors_of(data)) == [
        "locker.toml: mqtt.cert_file: required when tls = true",
        "locker.toml: mqtt.key_file: required when tls = true",
    ]


def test_several_mistakes_reported_together_in_file_order() -> None:
    data = base()
    data["compartments"][1]["lock_pin"] = 17
    data["timing"]["unlock_pulse_s"] = 2.5
    data["locker"]["nmae"] = "x"
    data["compartments"][0]["size"] = 3
    errors = errors_of(data)
    assert [e.split(": ")[1] for e in errors] == [
        "locker.nmae",
        "timing.unlock_pulse_s",
        "compartments[0].size",
        "compartments[1].lock_pin",
    ]


# --- shipped example files --------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path, check_files=False)
    ids = [c.id for c in cfg.compartments]
    assert ids and len(set(ids)) == len(ids)
    assert cfg.security.command_public_keys() and cfg.security.token_public_keys()


def test_example_is_a_16_compartment_tls_cabinet() -> None:
    cfg = load_config(CONFIG_DIR / "locker.example.toml", check_files=False)
    assert len(cfg.compartments) == 16 and len(cfg.gpio_compartments()) == 4
    assert len(cfg.board_compartments("b0")) == 12
    assert cfg.keypad is not None and cfg.keypad.type == "matrix"
    assert cfg.scanner is not None and cfg.feedback is not None
    assert cfg.mqtt is not None and cfg.mqtt.tls and cfg.gpio.pin_factory == "lgpio"


def test_simulator_config_uses_mock_pins_and_relative_paths() -> None:
    cfg = load_config(CONFIG_DIR / "simulator.toml", check_files=False)
    assert cfg.gpio.pin_factory == "mock"
    assert cfg.locker.state_dir == CONFIG_DIR / "var" / "sim"
    assert cfg.security.device_key_file == CONFIG_DIR / "var" / "sim" / "device.key"
    assert cfg.mqtt is not None and (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == (
        "127.0.0.1",
        1883,
        False,
    )
    assert cfg.keypad is not None and cfg.keypad.type == "serial"
    assert cfg.keypad.port == "loop://"
    assert [b.port for b in cfg.boards] == ["loop://"]


# --- files --------------------------------------------------------------------------------------

MINIMAL = """\
[locker]
id = "LKR-9"
state_dir = "state"

[security]
device_key_file = "keys/device.key"

[gpio]
pin_factory = "mock"

[[compartments]]
id = "A1"
size = "S"
lock_pin = 17
door_pin = 27
"""


@pytest.fixture
def cabinet(tmp_path: Path) -> Path:
    """A config in its own directory with a 32-byte device key beside it (relative path)."""
    (tmp_path / "etc" / "keys").mkdir(parents=True)
    (tmp_path / "etc" / "keys" / "device.key").write_bytes(os.urandom(32))
    path = tmp_path / "etc" / "locker.toml"
    path.write_text(MINIMAL)
    return path


def test_relative_paths_resolve_against_the_config_directory(
    cabinet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(cabinet.parent.parent)
    cfg = load_config(Path("etc/locker.toml"))
    assert cfg.locker.state_dir == cabinet.parent / "state"
    key = (cabinet.parent / "keys" / "device.key").read_bytes()
    assert cfg.security.read_device_key() == key


def test_a_four_digit_code_length_is_refused_with_the_reason(
    cabinet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The failing input: ``code_length = 4`` passed lockerd's check, and the fleet then
    refused to make any code for the cabinet. Now the file is refused, saying why."""
    cabinet.write_text(MINIMAL.replace("[gpio]", "code_length = 4\n\n[gpio]"))
    assert check_config_cli(cabinet) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "security.code_length: must be at least 6 and at most 16 digits, got 4" in err
    assert "2,160 in the 72 h a pickup code lives" in err
    assert "a 21.6% chance of hitting a given 4-digit code, 0.22% at 6 digits" in err


def _guesses(limits: Limits, hours: float, *, helped: bool) -> int:
    """Wrong codes the real throttle takes in ``hours`` from a guesser who types whenever the
    keypad is open and never sets off a lock-out; ``helped``: a real user's correct code
    follows every 4th failure (the best case for the guesser)."""
    t, fails = Throttle(), 0
    for second in range(int(hours * 3600)):
        if throttle.gate(t, second) is not None:
            continue
        after, verdict, _ = throttle.record_failure(t, second, limits)
        if verdict == "locked_out":
            continue
        t, fails = after, fails + 1
        if helped and t.consecutive == 4:
            t = throttle.record_success(t)
    return fails


def test_the_guess_figure_in_the_code_length_error_is_what_the_throttle_allows() -> None:
    """``guesses_per_pickup`` is an upper bound the throttle nearly reaches: 30 a minute-
    bucketed hour means 30 per 61 minutes at worst. Alone, a guesser gets far fewer."""
    s, t = Security.model_fields, Timing.model_fields
    limits = Limits(
        failures_before_backoff=s["failures_before_backoff"].default,
        hard_lockout=s["hard_lockout_failures"].default,
        max_per_hour=s["max_failures_per_hour"].default,
        lockout_s=s["lockout_s"].default,
    )
    hours = t["pickup_hours"].default
    bound = guesses_per_pickup()
    helped = _guesses(limits, hours, helped=True)
    assert 0.98 * bound <= helped <= bound == 2160
    assert _guesses(limits, hours, helped=False) < bound / 20


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_device_key_of_wrong_size(cabinet: Path, size: int) -> None:
    content = os.urandom(size)
    (cabinet.parent / "keys" / "device.key").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(cabinet)
    [line] = info.value.errors
    assert line.startswith(f"{cabinet}: security.device_key_file: ")
    assert f"holds {size} bytes" in line and "exactly 32" in line
    if size:
        assert content.hex() not in line and repr(content) not in line


def test_read_device_key_rechecks_the_size(cabinet: Path) -> None:
    cfg = load_config(cabinet)
    (cabinet.parent / "keys" / "device.key").write_bytes(b"short")
    with pytest.raises(ConfigError, match="holds 5 bytes"):
        cfg.security.read_device_key()


def test_missing_and_unreadable_files(cabinet: Path) -> None:
    (cabinet.parent / "keys" / "device.key").unlink()
    text = (
        MINIMAL
        + '\n[mqtt]\nhost = "h"\nca_file = "keys"\ncert_file = "c.pem"\nkey_file = "k.pem"\n'
    )
    (cabinet.parent / "c.pem").write_text("cert")
    (cabinet.parent / "k.pem").write_text("key")
    cabinet.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(cabinet)
    assert [e.split(": ")[1:] for e in info.value.errors] == [
        ["mqtt.ca_file", f"{cabinet.parent / 'keys'} is not a regular file"],
        ["security.device_key_file", f"{cabinet.parent / 'keys' / 'device.key'} does not exist"],
    ]
    assert load_config(cabinet, check_files=False).mqtt is not None


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "locker.toml"
    path.write_text('[locker]\nid = "x"\nstate_dir = /var\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [line] = info.value.errors
    assert line.startswith(f"{path}: TOML syntax error: ") and "line 3" in line
    assert info.value.path == path


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"a = " + b"1" * 5000, "out of range"),
        (b"a = " + b"[" * 5000, "nested"),
    ],
)
def test_unreadable_content(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "locker.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=reason):
        load_config(path)


def test_missing_config_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    # found by a newcomer: these said "TOML value out of range: ...: not a regular file"
    for odd in (tmp_path, Path("/dev/null")):
        with pytest.raises(ConfigError) as info:
            load_config(odd)
        assert info.value.errors == [f"{odd}: not a regular file"]
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        load_config(big)
    assert info.value.errors == [f"{big}: larger than {MAX_CONFIG_BYTES} bytes"]


def test_a_byte_order_mark_is_not_a_syntax_error(cabinet: Path) -> None:
    """Some Windows editors start UTF-8 files with a BOM; it was "Invalid statement"."""
    cabinet.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(cabinet, check_files=False).locker.id == "LKR-9"


def test_a_whole_number_is_shown_as_typed() -> None:
    """Found by a newcomer: a whole number in a float field read "got 1e+13"."""
    data = base()
    data["mqtt"] = {"host": "h", "tls": False, "ack_timeout_s": 10000000000000}
    [line] = errors_of(data)
    assert line.endswith("got 10000000000000"), line


def test_check_config_cli_ok(cabinet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cabinet.write_text(MINIMAL + '\n[scanner]\nport = "loop://"\n')
    assert check_config_cli(cabinet) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"OK: {cabinet}: locker LKR-9: 1 compartments (1 GPIO") and not err
    assert "keypad none" in out and "scanner yes" in out


def test_check_config_warns_about_a_cabinet_nobody_can_use(
    cabinet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No keypad and no scanner: legal (remote opens only) but most likely a forgotten section.
    assert check_config_cli(cabinet) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: ")
    assert err == f"{cabinet}: warning: no [keypad] and no [scanner]: nobody at the cabinet " + (
        "can open a compartment; only signed remote commands can\n"
    )


def test_check_config_refuses_a_pin_library_that_is_not_installed(
    cabinet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # This machine has no lgpio (a Pi has it); a GPIO cabinet on it cannot start, so the check
    # says so in one line instead of lockerd failing with tracebacks at start.
    assert importlib.util.find_spec("lgpio") is None
    cabinet.write_text(MINIMAL.replace('"mock"', '"lgpio"'))
    assert check_config_cli(cabinet) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert not out
    assert err.startswith(f"{cabinet}: gpio.pin_factory: 'lgpio' needs the Python module 'lgpio'")
    # Away from the locker (--no-file-checks), the library need not be here.
    assert check_config_cli(cabinet, check_files=False) == 0
    # A cabinet without any GPIO needs no pin library at all.
    cabinet.write_text(
        MINIMAL.replace('"mock"', '"lgpio"').replace(
            "lock_pin = 17\ndoor_pin = 27", 'board = "b0"\nchannel = 1'
        )
        + '\n[[boards]]\nname = "b0"\nport = "loop://"\n'
    )
    assert check_config_cli(cabinet) == 0


def test_check_config_cli_errors(cabinet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cabinet.write_text(MINIMAL.replace("door_pin = 27", "door_pin = 17\ndoor_pn = 3"))
    assert check_config_cli(cabinet) == EXIT_CONFIG == 78
    out, err = capsys.readouterr()
    assert not out
    assert err.splitlines() == [
        f"{cabinet}: compartments[0].door_pn: unknown key (typo?); did you mean 'door_pin'?",
        f"{cabinet}: compartments[0].door_pin: GPIO17 is already used by compartments[0].lock_pin",
    ]


# --- properties -----------------------------------------------------------------------------------

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-2, max_value=30),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["none", "loop://", "b0", "b1", "A1", "S", "matrix", "serial", "mock", KEY_A]),
    st.datetimes(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def mutated(draw: st.DrawFn, value: object) -> object:
    """``value`` with a few keys dropped, replaced by anything, or added."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            roll = draw(st.integers(0, 24))
            if roll == 0:
                continue
            out[key] = draw(toml_values) if roll == 1 else draw(mutated(item))
        if draw(st.integers(0, 24)) == 0:
            out[draw(st.sampled_from([*value, "x"]))] = draw(toml_values)
        return out
    if isinstance(value, list):
        return [draw(mutated(item)) for item in value]
    return value


def assert_safe(cfg: Config) -> None:
    """What every accepted configuration guarantees the rest of the daemon."""
    assert 0 < cfg.timing.unlock_pulse_s <= 2.0
    ids = [c.id for c in cfg.compartments]
    assert ids and len(ids) == len(set(ids))
    pins: list[int | None] = [p for c in cfg.gpio_compartments() for p in (c.lock_pin, c.door_pin)]
    if cfg.keypad and cfg.keypad.type == "matrix":
        pins += cfg.keypad.rows + cfg.keypad.cols
    if cfg.feedback:
        pins += [cfg.feedback.buzzer_pin, cfg.feedback.ok_led_pin, cfg.feedback.error_led_pin]
    used = [p for p in pins if p is not None]
    assert len(used) == len(set(used))
    names = {b.name for b in cfg.boards}
    for c in cfg.compartments:
        assert isinstance(c, GpioCompartment) or c.board in names


def check_any(data: object) -> None:
    try:
        cfg = parse_config(data, source="fuzz.toml", check_files=False)
    except ConfigError as err:
        assert err.errors and all(e.startswith("fuzz.toml: ") for e in err.errors)
    else:
        assert_safe(cfg)


@settings(max_examples=150, deadline=None)
@given(mutated(BASE))
def test_mutated_configs_are_rejected_cleanly_or_safe(data: object) -> None:
    check_any(data)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from([*BASE, "x"]), toml_values, max_size=6))
def test_arbitrary_tables_are_rejected_cleanly(data: object) -> None:
    check_any(data)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_arbitrary_file_bytes_are_rejected_cleanly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(content)
    try:
        assert_safe(load_config(path, check_files=False))
    except ConfigError as err:
        assert err.errors and all(e.startswith(f"{path}: ") for e in err.errors)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=40))
def test_device_key_accepted_iff_32_bytes(cabinet: Path, content: bytes) -> None:
    (cabinet.parent / "keys" / "device.key").write_bytes(content)
    try:
        cfg = load_config(cabinet)
    except ConfigError as err:
        assert len(content) != 32 and f"holds {len(content)} bytes" in str(err)
    else:
        assert cfg.security.read_device_key() == content


@pytest.mark.parametrize(("count", "cap"), [(1, 1), (4, 1), (5, 2), (12, 3), (16, 4), (17, 5)])
def test_default_remote_open_cap_is_a_quarter_of_the_compartments(count: int, cap: int) -> None:
    # Issue 11 item 18: the default cap stops a mass opening of the cabinet.
    data = base()
    data["compartments"] = [
        {"id": f"C{i}", "size": "S", "board": "b0", "channel": i % 16 + 1}
        if i < 16
        else {"id": f"C{i}", "size": "S", "board": "b1", "channel": i % 16 + 1}
        for i in range(count)
    ]
    assert parse(data).remote_open_cap == cap
    data["security"]["max_remote_opens_per_hour"] = 7
    assert parse(data).remote_open_cap == 7
