"""The configuration file (DESIGN section 8): loading, validation and the typed model.

One TOML file is validated completely, and every mistake in it is reported at once, before any
hardware is touched: per-key types and ranges by the pydantic models below (``extra="forbid"``,
strict types: a string never silently becomes a number), relations between keys (wiring, GPIO
pins used twice, board references, TLS files) by a second pass over the raw tables so that they
are reported even when other keys are broken. Each error reads ``file: key.path: reason``.

Relative paths (``locker.state_dir`` and every ``*_file`` key) are resolved against the
directory of the configuration file. Loading reads files only when ``check_files`` is true (the
key and certificate files must exist and be readable, the device key must hold 32 bytes); it
never opens a pin or a port, and never prints or logs key material.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import difflib
import json
import re
import stat
import sys
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from locker.contract.credentials import CODE_MAX_DIGITS, CODE_MIN_DIGITS

EXIT_CONFIG: Final = 78  # sysexits EX_CONFIG; the unit has RestartPreventExitStatus=78
UNLOCK_PULSE_HARD_CAP_S: Final = 2.0
DEVICE_KEY_BYTES: Final = 32
MAX_CONFIG_BYTES: Final = 1 << 20
BAUDRATES: Final = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)

Loc = tuple[str | int, ...]
Issue = tuple[Loc, str]


class ConfigError(Exception):
    """A configuration file that cannot be used; ``errors`` holds one line per mistake."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.path = path
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class _Context:
    base_dir: Path | None
    check_files: bool


def _context(info: ValidationInfo) -> _Context:
    ctx = info.context
    return ctx if isinstance(ctx, _Context) else _Context(None, check_files=False)


def _reject(reason: str) -> NoReturn:
    raise PydanticCustomError("config", "{reason}", {"reason": reason})


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a huge number"
    return f"{value:g}"


# --- field types ----------------------------------------------------------------------------


def _within(lo: float, hi: float, unit: str = "", *, above: bool = False) -> AfterValidator:
    """``lo <= v <= hi`` (``lo < v`` when ``above``), with the bounds in the message."""

    def check(value: float) -> float:
        if (value <= lo if above else value < lo) or value > hi:
            low = f"greater than {_num(lo)}" if above else f"at least {_num(lo)}"
            _reject(f"must be {low} and at most {_num(hi)}{unit}, got {_num(value)}")
        return value

    return AfterValidator(check)


def _matching(pattern: str, what: str) -> AfterValidator:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            _reject(f"{json.dumps(value)[:80]} is not valid: {what}")
        return value

    return AfterValidator(check)


def _check_pin(value: int) -> int:
    if not 0 <= value <= 27:
        _reject(f"GPIO{_num(value)} does not exist: BCM GPIO numbers are 0-27")
    return value


BOOT_HIGH_PINS: Final = frozenset(range(9))  # pulled high at power-on (BCM2835 ARM peripherals)
BOOT_UART_PINS: Final = frozenset((14, 15))  # TXD/RXD: toggle as the boot console


def _check_lock_pin(value: int) -> int:
    # DESIGN section 7: a coil on a pin that is high or toggling at reset fires while the Pi
    # boots, before lockerd runs, so these pins are refused for locks (fine for inputs).
    if value in BOOT_HIGH_PINS:
        _reject(
            f"GPIO{value} is pulled high while the Pi boots (GPIO 0-8), so the lock would open "
            "at power-on: use GPIO 9-13 or 16-27 for locks"
        )
    if value in BOOT_UART_PINS:
        _reject(
            f"GPIO{value} is the boot UART and toggles while the Pi boots, so the lock would "
            "open at power-on: use GPIO 9-13 or 16-27 for locks"
        )
    return value


def _check_pulse(value: float) -> float:
    if value > UNLOCK_PULSE_HARD_CAP_S:
        _reject(
            f"{_num(value)} s exceeds the hard cap of {UNLOCK_PULSE_HARD_CAP_S} s "
            "(a longer pulse can burn the lock coil)"
        )
    if value <= 0:
        _reject(f"must be greater than 0 s, got {_num(value)}")
    return value


def _check_baudrate(value: int) -> int:
    if value not in BAUDRATES:
        _reject(f"{_num(value)} is not a standard baudrate ({', '.join(map(str, BAUDRATES))})")
    return value


def _check_lock_bit(value: int) -> int:
    if value not in (0, 1):
        _reject(f"must be 0 or 1 (the lock bit value that means locked), got {_num(value)}")
    return value


def _check_text(value: str) -> str:
    if not 1 <= len(value) <= 128:
        _reject(f"must be 1-128 characters, got {len(value)}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        _reject("must not contain control characters")
    return value


def _check_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        _reject("is not standard base64 (of a 32-byte raw Ed25519 public key)")
    if len(raw) != 32:
        _reject(f"decodes to {len(raw)} bytes; a raw Ed25519 public key is 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        _reject("is not a usable Ed25519 public key")
    return value


def _check_token_kid(value: str) -> str:
    if not re.fullmatch(r"0|[1-9][0-9]{0,2}", value) or int(value) > 255:
        _reject(f"{json.dumps(value)[:40]} is not a token key id: table keys are 0-255")
    return value


def _check_topic_prefix(value: str) -> str:
    if not value or len(value) > 128:
        _reject("must be 1-128 characters")
    if "+" in value or "#" in value:
        _reject("must not contain the MQTT wildcards '+' or '#'")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        _reject("must not start or end with '/' nor contain an empty level ('//')")
    if value.startswith("$"):
        _reject("must not start with '$' (reserved for broker topics)")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        _reject("must not contain control characters")
    return value


def _to_path(value: object, info: ValidationInfo) -> Path:
    """A path string, resolved against the configuration file's directory when relative."""
    if not isinstance(value, str):
        _reject(f"expected a string (a file path), got {_toml_type(value)}")
    if not value or "\x00" in value or len(value) > 4096:
        _reject("must be a non-empty path without NUL characters")
    path = Path(value)
    base = _context(info).base_dir
    return path if path.is_absolute() or base is None else base / path


def _file_problem(path: Path, size: int | None = None) -> str | None:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        with path.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        return f"{path} does not exist"
    except (OSError, ValueError) as err:  # ValueError: a name the OS cannot encode
        return f"cannot read {path}: {getattr(err, 'strerror', None) or err}"
    if size is not None and st.st_size != size:
        return f"{path} holds {st.st_size} bytes; it must hold exactly {size} raw bytes"
    return None


def _check_readable(path: Path, info: ValidationInfo) -> Path:
    if _context(info).check_files and (problem := _file_problem(path)):
        _reject(problem)
    return path


def _check_device_key(path: Path, info: ValidationInfo) -> Path:
    if _context(info).check_files and (problem := _file_problem(path, DEVICE_KEY_BYTES)):
        _reject(problem)
    return path


Pin = Annotated[int, AfterValidator(_check_pin)]
LockPin = Annotated[int, AfterValidator(_check_pin), AfterValidator(_check_lock_pin)]
Baudrate = Annotated[int, AfterValidator(_check_baudrate)]
Text = Annotated[str, AfterValidator(_check_text)]
SerialPort = Annotated[str, _matching(r"[^\x00-\x20\x7f]{1,256}", "a pySerial port or URL")]
Name = Annotated[str, _matching(r"[A-Za-z0-9_-]{1,16}", "1-16 characters of A-Z a-z 0-9 _ -")]
PublicKey = Annotated[str, AfterValidator(_check_public_key)]
CommandKid = Annotated[str, _matching(r"[A-Za-z0-9._-]{1,64}", "1-64 of A-Z a-z 0-9 . _ -")]
TokenKid = Annotated[str, AfterValidator(_check_token_kid)]
DirPath = Annotated[Path, BeforeValidator(_to_path)]
ReadableFile = Annotated[Path, BeforeValidator(_to_path), AfterValidator(_check_readable)]
DeviceKeyFile = Annotated[Path, BeforeValidator(_to_path), AfterValidator(_check_device_key)]
PinFactoryName = Literal["lgpio", "rpigpio", "pigpio", "native", "mock"]
Size = Literal["S", "M", "L", "XL"]


# --- sections -------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, allow_inf_nan=False, hide_input_in_errors=True
    )


class Locker(_Section):
    id: Annotated[
        str,
        _matching(
            r"[A-Za-z0-9._-]{1,64}",
            "1-64 of A-Z a-z 0-9 . _ - (it is an MQTT topic level and the TLS CN)",
        ),
    ]
    state_dir: DirPath
    name: Text | None = None


class Mqtt(_Section):
    host: Annotated[str, _matching(r"[^\x00-\x20\x7f/]{1,253}", "a host name or IP address")]
    port: Annotated[int, _within(1, 65535)]
    tls: bool = True
    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None
    topic_prefix: Annotated[str, AfterValidator(_check_topic_prefix)] = "lockers"
    keepalive_s: Annotated[int, _within(5, 3600, " s")] = 30
    session_expiry_s: Annotated[int, _within(0, 0xFFFFFFFF, " s")] = 604800
    require_server_ack: bool = True
    will_delay_s: Annotated[int, _within(0, 86400, " s")] = 10
    ack_timeout_s: Annotated[float, _within(0, 3600, " s", above=True)] = 30.0
    max_inflight: Annotated[int, _within(1, 100)] = 20

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: object) -> object:
        # The port's default follows tls: 8883 with TLS, 1883 without.
        if isinstance(data, dict) and "port" not in data:
            return {**data, "port": 1883 if data.get("tls", True) is False else 8883}
        return data


class Security(_Section):
    device_key_file: DeviceKeyFile
    command_keys: dict[CommandKid, PublicKey] = {}
    token_keys: dict[TokenKid, PublicKey] = {}
    # None: a quarter of the cabinet's compartments (Config.remote_open_cap), so a leaked
    # signing key or a confused server cannot empty a cabinet in one go (issue: mass opening).
    max_remote_opens_per_hour: Annotated[int, _within(0, 1000)] | None = None
    code_length: Annotated[int, _within(CODE_MIN_DIGITS, CODE_MAX_DIGITS)] = 8
    lockout_s: Annotated[float, _within(0, 30 * 86400, " s", above=True)] = 14400.0
    failures_before_backoff: Annotated[int, _within(1, 1000)] = 5
    hard_lockout_failures: Annotated[int, _within(1, 100000)] = 100
    max_failures_per_hour: Annotated[int, _within(1, 100000)] = 30

    def command_public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Command-signing public keys by JWS ``kid``."""
        return {kid: _load_key(b64) for kid, b64 in self.command_keys.items()}

    def token_public_keys(self) -> dict[int, Ed25519PublicKey]:
        """QR-token public keys by the token's kid byte."""
        return {int(kid): _load_key(b64) for kid, b64 in self.token_keys.items()}

    def read_device_key(self) -> bytes:
        """The 32-byte device key; ConfigError (size only, never content) if it is not that."""
        where = str(self.device_key_file)
        try:
            with self.device_key_file.open("rb") as f:
                key = f.read(DEVICE_KEY_BYTES + 1)
        except OSError as err:
            raise ConfigError(self.device_key_file, [f"{where}: cannot read: {err}"]) from None
        if len(key) != DEVICE_KEY_BYTES:
            size = f"{len(key)} bytes" if len(key) <= DEVICE_KEY_BYTES else "more than 32 bytes"
            reason = f"holds {size}; it must hold exactly {DEVICE_KEY_BYTES} raw bytes"
            raise ConfigError(self.device_key_file, [f"{where}: {reason}"])
        return key


def _load_key(b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))


class Timing(_Section):
    unlock_pulse_s: Annotated[float, AfterValidator(_check_pulse)] = 0.5
    unlock_rest_s: Annotated[float, _within(0.05, 10, " s")] = 0.3
    door_debounce_s: Annotated[float, _within(0.005, 1, " s")] = 0.05
    door_open_timeout_s: Annotated[float, _within(0, 600, " s", above=True)] = 10.0
    door_left_open_s: Annotated[float, _within(0, 86400, " s", above=True)] = 120.0
    keypad_entry_timeout_s: Annotated[float, _within(0, 600, " s", above=True)] = 20.0
    pickup_hours: Annotated[float, _within(0, 8760, " h", above=True)] = 72.0
    dropoff_hours: Annotated[float, _within(0, 8760, " h", above=True)] = 48.0


class Gpio(_Section):
    pin_factory: PinFactoryName = "lgpio"


class Keypad(_Section):
    type: Literal["matrix", "serial", "none"]
    rows: list[Pin] | None = None
    cols: list[Pin] | None = None
    port: SerialPort | None = None
    baudrate: Baudrate = 9600


class Scanner(_Section):
    port: SerialPort
    baudrate: Baudrate = 9600


class Feedback(_Section):
    buzzer_pin: Pin | None = None
    ok_led_pin: Pin | None = None
    error_led_pin: Pin | None = None


class Board(_Section):
    name: Name
    protocol: Literal["kerong-cu16"] = "kerong-cu16"
    port: SerialPort
    baudrate: Baudrate = 19200
    address: Annotated[int, _within(0, 15)] = 0
    lock_bit_locked: Annotated[int, AfterValidator(_check_lock_bit)] = 1
    poll_interval_s: Annotated[float, _within(0.02, 10, " s")] = 0.2
    item_sensors: bool = False  # IR bits read 0 when nothing is wired: opt in, never assume


class Compartment(_Section):
    """Wired either to GPIO (``lock_pin``, ``door_pin``) or to a board (``board``, ``channel``)."""

    id: Name
    size: Size
    lock_pin: LockPin | None = None
    door_pin: Pin | None = None
    door_closed_level: Literal["low", "high"] = "low"
    item_pin: Pin | None = None  # an IR item sensor (GPIO compartments only)
    board: Name | None = None
    channel: Annotated[int, _within(1, 16)] | None = None

    @property
    def is_gpio(self) -> bool:
        return self.lock_pin is not None


class Config(_Section):
    """The whole file. ``keypad`` is None when absent or ``type = "none"``; ``scanner`` is
    None when absent or ``port = "none"``; ``mqtt`` is None for an offline cabinet."""

    locker: Locker
    mqtt: Mqtt | None = None
    security: Security
    timing: Timing = Timing()
    gpio: Gpio = Gpio()
    keypad: Keypad | None = None
    scanner: Scanner | None = None
    feedback: Feedback | None = None
    boards: list[Board] = []
    compartments: list[Compartment]

    @field_validator("keypad")
    @classmethod
    def _no_keypad(cls, value: Keypad | None) -> Keypad | None:
        return None if value is not None and value.type == "none" else value

    @field_validator("scanner")
    @classmethod
    def _no_scanner(cls, value: Scanner | None) -> Scanner | None:
        return None if value is not None and value.port == "none" else value

    @model_validator(mode="wrap")
    @classmethod
    def _whole_file(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        # Keys are validated one by one by pydantic; relations between keys are checked on
        # the raw tables as well, so that one broken key does not hide the other mistakes.
        details: list[InitErrorDetails] = []
        try:
            config = handler(data)
        except ValidationError as err:
            details = [_detail(tuple(e["loc"]), _message(e)) for e in err.errors()]
        details += [_detail(loc, reason) for loc, reason in _relations(data)]
        if details:
            details.sort(key=lambda d: _file_order(d["loc"]))
            raise ValidationError.from_exception_data(cls.__name__, details)
        return config

    def gpio_compartments(self) -> list[Compartment]:
        return [c for c in self.compartments if c.is_gpio]

    def board_compartments(self, board_name: str) -> list[Compartment]:
        return [c for c in self.compartments if c.board == board_name]

    def compartment(self, compartment_id: str) -> Compartment:
        for c in self.compartments:
            if c.id == compartment_id:
                return c
        raise KeyError(compartment_id)

    @property
    def remote_open_cap(self) -> int:
        """Remote opens allowed per hour: ``security.max_remote_opens_per_hour`` when set,
        else a quarter of the compartments rounded up (4 for a 16-door cabinet)."""
        cap = self.security.max_remote_opens_per_hour
        return -(-len(self.compartments) // 4) if cap is None else cap

    def summary(self) -> str:
        """One line for humans; holds no key material."""
        gpio = len(self.gpio_compartments())
        boards = ", ".join(b.name for b in self.boards) or "no boards"
        link = (
            f"mqtt {self.mqtt.host}:{self.mqtt.port} {'tls' if self.mqtt.tls else 'PLAIN'}"
            if self.mqtt
            else "offline (no [mqtt])"
        )
        return (
            f"locker {self.locker.id}: {len(self.compartments)} compartments "
            f"({gpio} GPIO, {len(self.compartments) - gpio} on boards: {boards}), "
            f"keypad {self.keypad.type if self.keypad else 'none'}, "
            f"scanner {'yes' if self.scanner else 'none'}, "
            f"feedback {'yes' if self.feedback else 'none'}, pins {self.gpio.pin_factory}, "
            f"{len(self.security.command_keys)} command key(s), "
            f"{len(self.security.token_keys)} token key(s), {link}"
        )


# --- error messages -------------------------------------------------------------------------


def _file_order(loc: Loc) -> tuple[int, int]:
    """Sort key of an error: its section as the example file orders them, then its entry."""
    sections = list(Config.model_fields)
    top = loc[0] if loc else ""
    index = sections.index(top) if top in sections else len(sections)
    return index, loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1


def _detail(loc: Loc, reason: str) -> InitErrorDetails:
    error = PydanticCustomError("config", "{reason}", {"reason": reason})
    return InitErrorDetails(type=error, loc=loc, input=None)


def _toml_type(value: object) -> str:
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        ((datetime.date, datetime.time), "a date/time"),
    )
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


_EXPECTED: Final = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "missing":
        return "required section is missing" if len(loc) == 1 else "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (typo?)" + _suggestion(loc)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_toml_type(error.get('input'))}"
    message = str(error["msg"]).replace("Input should be", "must be", 1)
    return f"table key: {message}" if loc and loc[-1] == "[key]" and kind != "config" else message


def _suggestion(loc: Loc) -> str:
    if not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], _keys_at(loc[:-1]), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _keys_at(loc: Loc) -> list[str]:
    """The keys allowed in the table at ``loc`` (empty when it is not a model)."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, types.UnionType, typing.Union):
        return next(filter(None, map(_model_in, typing.get_args(annotation))), None)
    return None


def format_loc(loc: Loc) -> str:
    """``("compartments", 2, "lock_pin")`` -> ``compartments[2].lock_pin``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            key = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{key}" if out else key
    return out


# --- relations between keys, on the raw tables ----------------------------------------------


def _table(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _tables(value: object) -> list[tuple[int, dict[str, object]]]:
    items = value if isinstance(value, list) else []
    return [(i, t) for i, t in enumerate(items) if isinstance(t, dict)]


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _relations(data: object) -> list[Issue]:
    root = _table(data)
    compartments = _tables(root.get("compartments"))
    boards = _tables(root.get("boards"))
    issues: list[Issue] = []
    if root.get("compartments") == []:
        issues.append((("compartments",), "at least one [[compartments]] entry is required"))
    issues += _wiring(compartments)
    issues += _unique(compartments, "compartments", "id")
    issues += _unique(boards, "boards", "name")
    issues += _board_references(compartments, boards)
    issues += _shared_buses(boards)
    issues += _pins_used_twice(root, compartments)
    issues += _serial_ports_used_twice(root, boards)
    issues += _keypad(_table(root.get("keypad")))
    issues += _mqtt_tls(_table(root.get("mqtt")))
    issues += _throttle(_table(root.get("security")))
    return issues


def _wiring(compartments: list[tuple[int, dict[str, object]]]) -> Iterator[Issue]:
    for i, c in compartments:
        gpio = [k for k in ("lock_pin", "door_pin") if k in c]
        board = [k for k in ("board", "channel") if k in c]
        where: Loc = ("compartments", i)
        if gpio and board:
            yield (
                where,
                (
                    f"has GPIO keys ({', '.join(gpio)}) and board keys ({', '.join(board)}): "
                    "a compartment is wired either to GPIO pins or to a board channel"
                ),
            )
        elif not gpio and not board:
            yield where, "needs lock_pin and door_pin (GPIO) or board and channel (lock board)"
        else:
            kind, required = (
                ("GPIO", ("lock_pin", "door_pin")) if gpio else ("board", ("board", "channel"))
            )
            for key in required:
                if key not in c:
                    yield (*where, key), f"required for a {kind} compartment"
            for key in ("door_closed_level", "item_pin") if board else ():
                if key in c:
                    yield (*where, key), "only for GPIO compartments (boards report doors)"


def _unique(entries: list[tuple[int, dict[str, object]]], section: str, key: str) -> list[Issue]:
    first: dict[str, int] = {}
    issues: list[Issue] = []
    for i, entry in entries:
        value = entry.get(key)
        if isinstance(value, str):
            if value in first:
                issues.append(
                    (
                        (section, i, key),
                        f"{json.dumps(value)} is already used by {section}[{first[value]}]",
                    )
                )
            first.setdefault(value, i)
    return issues


def _board_references(
    compartments: list[tuple[int, dict[str, object]]], boards: list[tuple[int, dict[str, object]]]
) -> Iterator[Issue]:
    names = {b["name"] for _, b in boards if isinstance(b.get("name"), str)}
    used: dict[tuple[str, int], int] = {}
    for i, c in compartments:
        board, channel = c.get("board"), _int(c.get("channel"))
        if not isinstance(board, str):
            continue
        if board not in names:
            yield ("compartments", i, "board"), f"no [[boards]] entry is named {json.dumps(board)}"
        elif channel is not None and (board, channel) in used:
            other = used[(board, channel)]
            yield (
                ("compartments", i, "channel"),
                f"{board} channel {channel} is already used by compartments[{other}]",
            )
        if channel is not None:
            used.setdefault((board, channel), i)


def _shared_buses(boards: list[tuple[int, dict[str, object]]]) -> Iterator[Issue]:
    addresses: dict[tuple[str, int], int] = {}
    rates: dict[str, tuple[int, int]] = {}
    for i, b in boards:
        port = b.get("port")
        address = _int(b.get("address", Board.model_fields["address"].default))
        rate = _int(b.get("baudrate", Board.model_fields["baudrate"].default))
        if not isinstance(port, str):
            continue
        if address is not None and 0 <= address <= 15:
            if (port, address) in addresses:
                other = addresses[(port, address)]
                yield (
                    ("boards", i, "address"),
                    f"address {address} on {port} is already used by boards[{other}]",
                )
            addresses.setdefault((port, address), i)
        if rate in BAUDRATES:
            first_rate, other = rates.setdefault(port, (rate, i))
            if first_rate != rate:
                yield (
                    ("boards", i, "baudrate"),
                    f"one bus, one baudrate: boards[{other}] runs {port} at {first_rate}",
                )


def _pin_users(
    root: dict[str, object], compartments: list[tuple[int, dict[str, object]]]
) -> Iterator[tuple[Loc, object]]:
    # In the order of the sections, so the later place is the one reported.
    keypad = _table(root.get("keypad"))
    if keypad.get("type") == "matrix":
        for key in ("rows", "cols"):
            pins = keypad.get(key)
            for j, pin in enumerate(pins if isinstance(pins, list) else []):
                yield ("keypad", key, j), pin
    feedback = _table(root.get("feedback"))
    for key in ("buzzer_pin", "ok_led_pin", "error_led_pin"):
        if key in feedback:
            yield ("feedback", key), feedback[key]
    for i, c in compartments:
        for key in ("lock_pin", "door_pin", "item_pin"):
            if key in c:
                yield ("compartments", i, key), c[key]


def _pins_used_twice(
    root: dict[str, object], compartments: list[tuple[int, dict[str, object]]]
) -> Iterator[Issue]:
    first: dict[int, Loc] = {}
    for where, value in _pin_users(root, compartments):
        pin = _int(value)
        if pin is None or not 0 <= pin <= 27:
            continue
        if pin in first:
            yield where, f"GPIO{pin} is already used by {format_loc(first[pin])}"
        first.setdefault(pin, where)


def _serial_ports_used_twice(
    root: dict[str, object], boards: list[tuple[int, dict[str, object]]]
) -> Iterator[Issue]:
    users: list[tuple[Loc, object]] = [
        (("scanner", "port"), _table(root.get("scanner")).get("port"))
    ]
    keypad = _table(root.get("keypad"))
    if keypad.get("type") == "serial":
        users.append((("keypad", "port"), keypad.get("port")))
    buses: dict[str, Loc] = {}
    for i, b in boards:  # several boards may share one RS-485 bus: count each bus once
        if isinstance(port := b.get("port"), str):
            buses.setdefault(port, ("boards", i, "port"))
    users += [(where, port) for port, where in buses.items()]
    first: dict[str, Loc] = {}
    for where, port in users:
        # Each loop:// is a loopback of its own.
        if not isinstance(port, str) or port == "none" or port.startswith("loop://"):
            continue
        other = first.setdefault(port, where)
        if other != where:
            yield where, f"{port} is already used by {format_loc(other)}"


def _keypad(keypad: dict[str, object]) -> Iterator[Issue]:
    kind = keypad.get("type")
    allowed = {"matrix": {"rows", "cols"}, "serial": {"port", "baudrate"}, "none": set[str]()}
    if not isinstance(kind, str) or kind not in allowed:
        return
    for key in ("rows", "cols", "port", "baudrate"):
        if key in keypad and key not in allowed[kind]:
            yield ("keypad", key), f"not used with type = {json.dumps(kind)}"
    required = {"matrix": ("rows", "cols"), "serial": ("port",), "none": ()}[kind]
    for key in required:
        if key not in keypad:
            yield ("keypad", key), f"required with type = {json.dumps(kind)}"
    counts = {"rows": ((4,), "row"), "cols": ((3, 4), "column")}
    for key, (ok, what) in counts.items() if kind == "matrix" else ():
        pins = keypad.get(key)
        if isinstance(pins, list) and len(pins) not in ok:
            want = " or ".join(map(str, ok))
            yield ("keypad", key), f"a matrix keypad has {want} {what} pins, got {len(pins)}"


def _mqtt_tls(mqtt: dict[str, object]) -> Iterator[Issue]:
    if not mqtt or mqtt.get("tls", True) is not True:
        return
    for key in ("ca_file", "cert_file", "key_file"):
        if key not in mqtt:
            yield ("mqtt", key), "required when tls = true"


def _throttle(security: dict[str, object]) -> Iterator[Issue]:
    backoff = _int(security.get("failures_before_backoff", 5))
    lockout = _int(security.get("hard_lockout_failures", 100))
    if backoff is not None and lockout is not None and lockout < backoff:
        yield (
            ("security", "hard_lockout_failures"),
            f"must be at least failures_before_backoff ({backoff})",
        )


# --- loading --------------------------------------------------------------------------------


def parse_config(
    data: object,
    *,
    source: str | Path = "<config>",
    base_dir: Path | None = None,
    check_files: bool = True,
) -> Config:
    """Validate already-parsed TOML tables; ``source`` names the file in messages."""
    try:
        return Config.model_validate(data, context=_Context(base_dir, check_files))
    except ValidationError as err:
        lines = [_line(str(source), tuple(e["loc"]), e["msg"]) for e in err.errors()]
        raise ConfigError(Path(str(source)), lines) from None


def _line(source: str, loc: Loc, reason: str) -> str:
    where = format_loc(loc)
    return f"{source}: {where}: {reason}" if where else f"{source}: {reason}"


def _read_toml(path: Path) -> dict[str, Any]:
    name = str(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, [f"{name}: not a regular file"])
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(path, [f"{name}: larger than {MAX_CONFIG_BYTES} bytes"])
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except OSError as err:
        raise ConfigError(path, [f"{name}: cannot read: {err.strerror or err}"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, [f"{name}: not UTF-8 text (byte {err.start})"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, [f"{name}: TOML syntax error: {err}"]) from None
    except ValueError as err:  # an integer literal beyond Python's digit limit
        raise ConfigError(path, [f"{name}: TOML value out of range: {err}"]) from None
    except RecursionError:
        raise ConfigError(path, [f"{name}: TOML nested too deeply"]) from None


def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and validate a configuration file; ConfigError lists every mistake."""
    path = Path(path)
    data = _read_toml(path)
    return parse_config(data, source=path, base_dir=path.absolute().parent, check_files=check_files)


def check_config_cli(path: str | Path, *, check_files: bool = True) -> int:
    """``lockerd --check-config``: print a summary or the errors; 0 or EXIT_CONFIG."""
    try:
        config = load_config(path, check_files=check_files)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    print(f"OK: {path}: {config.summary()}")
    return 0
