"""The sections of the configuration file (DESIGN section 8) as frozen pydantic models, and
``Config``, the whole file. Every default of the file lives here and nowhere else."""

from __future__ import annotations

import base64
from typing import Annotated, Any, ClassVar, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from locker.config import messages
from locker.config.errors import ConfigError
from locker.config.fields import (
    Baudrate,
    CommandKid,
    DeviceKeyFile,
    LockBit,
    LockPin,
    Name,
    Pin,
    PinFactoryName,
    PublicKey,
    PulseSeconds,
    ReadableFile,
    SerialPort,
    Size,
    StateDir,
    Text,
    TokenKid,
    TopicPrefix,
    matching,
    num,
    reject,
    within,
)
from locker.config.panel import Panel
from locker.config.relations import relations
from locker.contract.credentials import CODE_MAX_DIGITS, CODE_MIN_DIGITS, DEVICE_KEY_BYTES

# --- the shortest keypad code ---------------------------------------------------------------

# Defaults the minimum code length is argued from (DESIGN section 6's throttle): named so the
# argument in the error below follows them if they change.
MAX_FAILURES_PER_HOUR_DEFAULT: Final = 30
PICKUP_HOURS_DEFAULT: Final = 72.0


def guesses_per_pickup() -> int:
    """Most wrong codes the keypad throttle lets through, at this file's defaults, in the time
    a pickup code lives: ``security.max_failures_per_hour`` an hour (one more in an hour locks
    the keypad) for ``timing.pickup_hours``. The back-off after 5 failures in a row does not
    bound it, because a real user's correct code restarts that count (a guesser alone gets far
    fewer; tests/test_config.py plays both against the throttle itself)."""
    return int(MAX_FAILURES_PER_HOUR_DEFAULT * PICKUP_HOURS_DEFAULT)


def _check_code_length(value: int) -> int:
    bounds = f"must be at least {CODE_MIN_DIGITS} and at most {CODE_MAX_DIGITS} digits"
    if value > CODE_MAX_DIGITS or value < 1:
        reject(f"{bounds}, got {num(value)}")
    if value < CODE_MIN_DIGITS:
        n = guesses_per_pickup()
        reject(
            f"{bounds}, got {value}: a shorter code can be guessed. The keypad throttle's "
            f"defaults let up to {MAX_FAILURES_PER_HOUR_DEFAULT} wrong codes an hour through "
            "(security.max_failures_per_hour; a real user's correct code restarts the "
            f"back-off), {n:,} in the {num(PICKUP_HOURS_DEFAULT)} h a pickup code lives "
            f"(timing.pickup_hours): a {min(n / 10**value, 1.0):.1%} chance of hitting a given "
            f"{value}-digit code, {n / 10**CODE_MIN_DIGITS:.2%} at {CODE_MIN_DIGITS} digits"
        )
    return value


# --- sections -------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, allow_inf_nan=False, hide_input_in_errors=True
    )


class Locker(_Section):
    id: Annotated[
        str,
        matching(
            r"[A-Za-z0-9._-]{1,64}",
            "1-64 of A-Z a-z 0-9 . _ - (it is an MQTT topic level and the TLS CN)",
        ),
    ]
    state_dir: StateDir
    name: Text | None = None


SESSION_EXPIRY_MAX: Final = 0xFFFFFFFF  # MQTT 5 3.1.2.11.2: a four-byte integer, "never"


def _check_session_expiry(value: int) -> int:
    if value == 0:
        reject(
            "0 ends the broker's session at every disconnect: the commands queued while the "
            "locker is offline are then lost (DESIGN 5: clean_start=False with a session "
            "expiry, default 604800 s = 7 days); use at least 1"
        )
    if not 1 <= value <= SESSION_EXPIRY_MAX:
        reject(f"must be at least 1 and at most {SESSION_EXPIRY_MAX} s, got {num(value)}")
    return value


SHORT_SESSION_S: Final = 3600  # below an hour, a short outage loses the queued commands


class Mqtt(_Section):
    host: Annotated[str, matching(r"[^\x00-\x20\x7f/]{1,253}", "a host name or IP address")]
    port: Annotated[int, within(1, 65535)]
    tls: bool = True
    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None
    topic_prefix: TopicPrefix = "lockers"
    keepalive_s: Annotated[int, within(5, 3600, " s")] = 30
    session_expiry_s: Annotated[int, AfterValidator(_check_session_expiry)] = 604800
    require_server_ack: bool = True
    will_delay_s: Annotated[int, within(0, 86400, " s")] = 10
    ack_timeout_s: Annotated[float, within(0, 3600, " s", above=True)] = 30.0
    max_inflight: Annotated[int, within(1, 100)] = 20
    # Reconnect back-off (jittered, doubling): up to reconnect_max_s while the broker answers
    # and refuses; while it cannot be reached at all, attempts are random in [half, all] of
    # reconnect_unreachable_max_s apart, however long the outage, so the locker is back at most
    # that long after the broker (issue 10). At least 0.1 s: a smaller value spins.
    reconnect_min_s: Annotated[float, within(0, 60, " s", above=True)] = 1.0
    reconnect_max_s: Annotated[float, within(0, 3600, " s", above=True)] = 60.0
    reconnect_unreachable_max_s: Annotated[float, within(0.1, 3600, " s")] = 1.0

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
    max_remote_opens_per_hour: Annotated[int, within(0, 1000)] | None = None
    code_length: Annotated[int, AfterValidator(_check_code_length)] = 8
    lockout_s: Annotated[float, within(0, 30 * 86400, " s", above=True)] = 14400.0
    # Upper bounds are sanity bounds only (a test bench may type a million wrong codes).
    failures_before_backoff: Annotated[int, within(1, 1_000_000)] = 5
    hard_lockout_failures: Annotated[int, within(1, 1_000_000)] = 100
    max_failures_per_hour: Annotated[int, within(1, 1_000_000)] = MAX_FAILURES_PER_HOUR_DEFAULT

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
    unlock_pulse_s: PulseSeconds = 0.5
    unlock_rest_s: Annotated[float, within(0.05, 10, " s")] = 0.3
    door_debounce_s: Annotated[float, within(0.005, 1, " s")] = 0.05
    door_open_timeout_s: Annotated[float, within(0, 600, " s", above=True)] = 10.0
    door_left_open_s: Annotated[float, within(0, 86400, " s", above=True)] = 120.0
    keypad_entry_timeout_s: Annotated[float, within(0, 600, " s", above=True)] = 20.0
    pickup_hours: Annotated[float, within(0, 8760, " h", above=True)] = PICKUP_HOURS_DEFAULT
    dropoff_hours: Annotated[float, within(0, 8760, " h", above=True)] = 48.0


class Gpio(_Section):
    pin_factory: PinFactoryName = "lgpio"


def _pin_count(counts: tuple[int, ...], what: str) -> AfterValidator:
    def check(pins: list[int]) -> list[int]:
        if len(pins) not in counts:
            want = " or ".join(map(str, counts))
            reject(f"a matrix keypad has {want} {what} pins, got {len(pins)}")
        return pins

    return AfterValidator(check)


class MatrixKeypad(_Section):
    """Rows are outputs, columns pulled-up inputs (DESIGN section 7): 3x4 or 4x4 keys."""

    REQUIRED: ClassVar[str] = 'required with type = "matrix"'
    NOT_USED: ClassVar[str] = 'not used with type = "matrix"'

    type: Literal["matrix"]
    rows: Annotated[list[Pin], _pin_count((4,), "row")]
    cols: Annotated[list[Pin], _pin_count((3, 4), "column")]


class SerialKeypad(_Section):
    """One ASCII byte per key (``0-9 * #``, CR or LF act as ``#``)."""

    REQUIRED: ClassVar[str] = 'required with type = "serial"'
    NOT_USED: ClassVar[str] = 'not used with type = "serial"'

    type: Literal["serial"]
    port: SerialPort
    baudrate: Baudrate = 9600


class NoKeypad(_Section):
    REQUIRED: ClassVar[str] = 'required with type = "none"'
    NOT_USED: ClassVar[str] = 'not used with type = "none"'

    type: Literal["none"]


# One table, three kinds told apart by ``type``: each kind has exactly its own keys.
Keypad = Annotated[MatrixKeypad | SerialKeypad | NoKeypad, Field(discriminator="type")]


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
    address: Annotated[int, within(0, 15)] = 0
    lock_bit_locked: LockBit = 1
    poll_interval_s: Annotated[float, within(0.02, 10, " s")] = 0.2
    item_sensors: bool = False  # IR bits read 0 when nothing is wired: opt in, never assume


class _CompartmentBase(_Section):
    """What every compartment has, however it is wired."""

    is_gpio: ClassVar[bool]

    id: Name
    size: Size
    led_pin: Pin | None = None  # locator LED (DESIGN 7), for either kind of compartment
    accessible: bool = False  # within reach of a wheelchair user (assign can ask for it)


class GpioCompartment(_CompartmentBase):
    """A lock driven by a GPIO pin and a reed switch on another (DESIGN section 7)."""

    REQUIRED: ClassVar[str] = "required for a GPIO compartment"
    NOT_USED: ClassVar[str] = "only for board compartments"
    is_gpio: ClassVar[bool] = True

    lock_pin: LockPin
    door_pin: Pin
    door_closed_level: Literal["low", "high"] = "low"
    item_pin: Pin | None = None  # an IR item sensor


class BoardCompartment(_CompartmentBase):
    """Channel 1-16 of a lock-control board, which reports the door (and the item sensor)."""

    REQUIRED: ClassVar[str] = "required for a board compartment"
    NOT_USED: ClassVar[str] = "only for GPIO compartments (boards report doors)"
    is_gpio: ClassVar[bool] = False

    board: Name
    channel: Annotated[int, within(1, 16)]


def _wiring(value: object) -> str | None:
    # None (both kinds' keys, or neither) is reported by the relation pass with its reason.
    if isinstance(value, _CompartmentBase):
        return "gpio" if value.is_gpio else "board"
    if not isinstance(value, dict):
        return "gpio"  # not a table: pydantic says so
    gpio, board = value.keys() & {"lock_pin", "door_pin"}, value.keys() & {"board", "channel"}
    return None if bool(gpio) == bool(board) else "gpio" if gpio else "board"


# One table, two kinds told apart by their keys: each kind has exactly its own.
Compartment = Annotated[
    Annotated[GpioCompartment, Tag("gpio")] | Annotated[BoardCompartment, Tag("board")],
    Discriminator(
        _wiring,
        custom_error_type=messages.REPORTED_ELSEWHERE,
        custom_error_message="reported by the relation pass",
    ),
]


def _defaults(model: type[BaseModel]) -> dict[str, object]:
    return {name: f.default for name, f in model.model_fields.items()}


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
    panel: Panel | None = None  # the front panel (DESIGN 12; locker.config.panel)

    @field_validator("keypad")
    @classmethod
    def _no_keypad(cls, value: Keypad | None) -> Keypad | None:
        return None if isinstance(value, NoKeypad) else value

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
            found = (messages.located(e, cls) for e in err.errors())
            details = [messages.detail(*issue) for issue in found if issue is not None]
        defaults = {
            "boards": _defaults(Board),
            "security": _defaults(Security),
            "mqtt": _defaults(Mqtt),
        }
        details += [messages.detail(loc, reason) for loc, reason in relations(data, defaults)]
        if details:
            details.sort(key=lambda d: messages.file_order(d["loc"], list(cls.model_fields)))
            raise ValidationError.from_exception_data(cls.__name__, details)
        return config

    def warnings(self) -> list[str]:
        """Legal but probably wrong, one line each: the file still loads and runs
        (``lockerd --check-config`` prints them, ``lockerd`` logs them at start)."""
        found: list[str] = []
        m, t = self.mqtt, self.timing
        if m is not None and m.session_expiry_s < SHORT_SESSION_S:
            found.append(
                f"mqtt.session_expiry_s = {m.session_expiry_s}: the broker forgets this "
                f"locker's session, and the commands queued for it, after {m.session_expiry_s} s "
                "offline (default 604800 s = 7 days)"
            )
        if m is not None and m.will_delay_s > m.session_expiry_s:
            found.append(
                f"mqtt.will_delay_s ({m.will_delay_s} s) is above mqtt.session_expiry_s "
                f"({m.session_expiry_s} s): the broker publishes the offline will when the "
                "session ends, the earlier of the two (MQTT 5 3.1.3.2.2)"
            )
        if t.door_left_open_s < t.door_open_timeout_s:
            found.append(
                f"timing.door_left_open_s ({num(t.door_left_open_s)} s) is below "
                f"timing.door_open_timeout_s ({num(t.door_open_timeout_s)} s): a person "
                "given that long to open a door gets less to put a parcel in and shut it "
                "before door_left_open is raised (and raised again at that interval)"
            )
        if self.keypad is None and self.scanner is None:
            found.append(
                "no [keypad] and no [scanner]: nobody at the cabinet can open a compartment; "
                "only signed remote commands can"
            )
        if self.panel is not None:
            found.extend(self.panel.warnings())
        return found

    def uses_gpio(self) -> bool:
        """True when any pin of this file is a GPIO (so a pin factory is needed)."""
        return bool(
            self.gpio_compartments()
            or (self.keypad is not None and self.keypad.type == "matrix")
            or self.feedback is not None
            or any(c.led_pin is not None for c in self.compartments)
        )

    def gpio_compartments(self) -> list[GpioCompartment]:
        return [c for c in self.compartments if isinstance(c, GpioCompartment)]

    def board_compartments(self, board_name: str) -> list[BoardCompartment]:
        return [
            c
            for c in self.compartments
            if isinstance(c, BoardCompartment) and c.board == board_name
        ]

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
