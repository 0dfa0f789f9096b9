"""Field types of the configuration file: one checked type per kind of value, with the reason
in the message (pins, boot-safe lock pins, baudrates, public keys, paths resolved against the
file's directory, files that must exist on the locker, a state directory that can be one).

Sources: BCM GPIO numbers and boot levels (DESIGN section 7), the standard baudrates of
pySerial, the raw Ed25519 key encoding of DESIGN section 8.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
import stat
from pathlib import Path
from typing import Annotated, Final, Literal, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from locker.contract.credentials import DEVICE_KEY_BYTES

UNLOCK_PULSE_HARD_CAP_S: Final = 2.0
BAUDRATES: Final = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


@dataclasses.dataclass(frozen=True)
class Context:
    base_dir: Path | None
    check_files: bool


def context(info: ValidationInfo) -> Context:
    ctx = info.context
    return ctx if isinstance(ctx, Context) else Context(None, check_files=False)


def reject(reason: str) -> NoReturn:
    raise PydanticCustomError("config", "{reason}", {"reason": reason})


def num(value: float) -> str:
    """``value`` as a person typed it: a whole number (even one a float field took) without
    an exponent; beyond 64 bits, "a huge number"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a huge number"
    return f"{value:g}"


# --- field types ----------------------------------------------------------------------------


def within(lo: float, hi: float, unit: str = "", *, above: bool = False) -> AfterValidator:
    """``lo <= v <= hi`` (``lo < v`` when ``above``), with the bounds in the message."""

    def check(value: float) -> float:
        if (value <= lo if above else value < lo) or value > hi:
            low = f"greater than {num(lo)}" if above else f"at least {num(lo)}"
            reject(f"must be {low} and at most {num(hi)}{unit}, got {num(value)}")
        return value

    return AfterValidator(check)


def matching(pattern: str, what: str) -> AfterValidator:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            reject(f"{json.dumps(value)[:80]} is not valid: {what}")
        return value

    return AfterValidator(check)


def _check_pin(value: int) -> int:
    if not 0 <= value <= 27:
        # num() shortens a huge number to words, which must not be glued to "GPIO"
        shown = f"GPIO{value}" if value.bit_length() <= 64 else f"pin {num(value)}"
        reject(f"{shown} does not exist: BCM GPIO numbers are 0-27")
    return value


BOOT_HIGH_PINS: Final = frozenset(range(9))  # pulled high at power-on (BCM2835 ARM peripherals)
BOOT_UART_PINS: Final = frozenset((14, 15))  # TXD/RXD: toggle as the boot console


def _check_lock_pin(value: int) -> int:
    # DESIGN section 7: a coil on a pin that is high or toggling at reset fires while the Pi
    # boots, before lockerd runs, so these pins are refused for locks (fine for inputs).
    if value in BOOT_HIGH_PINS:
        reject(
            f"GPIO{value} is pulled high while the Pi boots (GPIO 0-8), so the lock would open "
            "at power-on: use GPIO 9-13 or 16-27 for locks"
        )
    if value in BOOT_UART_PINS:
        reject(
            f"GPIO{value} is the boot UART and toggles while the Pi boots, so the lock would "
            "open at power-on: use GPIO 9-13 or 16-27 for locks"
        )
    return value


def _check_pulse(value: float) -> float:
    if value > UNLOCK_PULSE_HARD_CAP_S:
        reject(
            f"{num(value)} s exceeds the hard cap of {UNLOCK_PULSE_HARD_CAP_S} s "
            "(a longer pulse can burn the lock coil)"
        )
    if value <= 0:
        reject(f"must be greater than 0 s, got {num(value)}")
    return value


def _check_baudrate(value: int) -> int:
    if value not in BAUDRATES:
        reject(f"{num(value)} is not a standard baudrate ({', '.join(map(str, BAUDRATES))})")
    return value


def _check_lock_bit(value: int) -> int:
    if value not in (0, 1):
        reject(f"must be 0 or 1 (the lock bit value that means locked), got {num(value)}")
    return value


def _check_text(value: str) -> str:
    if not 1 <= len(value) <= 128:
        reject(f"must be 1-128 characters, got {len(value)}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        reject("must not contain control characters")
    return value


def _check_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        reject("is not standard base64 (of a 32-byte raw Ed25519 public key)")
    if len(raw) != 32:
        reject(f"decodes to {len(raw)} bytes; a raw Ed25519 public key is 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        reject("is not a usable Ed25519 public key")
    return value


def _check_token_kid(value: str) -> str:
    if not re.fullmatch(r"0|[1-9][0-9]{0,2}", value) or int(value) > 255:
        reject(f"{json.dumps(value)[:40]} is not a token key id: table keys are 0-255")
    return value


def _check_topic_prefix(value: str) -> str:
    if not value or len(value) > 128:
        reject("must be 1-128 characters")
    if "+" in value or "#" in value:
        reject("must not contain the MQTT wildcards '+' or '#'")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        reject("must not start or end with '/' nor contain an empty level ('//')")
    if value.startswith("$"):
        reject("must not start with '$' (reserved for broker topics)")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        reject("must not contain control characters")
    return value


def _to_path(value: object, info: ValidationInfo) -> Path:
    """A path string, resolved against the configuration file's directory when relative."""
    if not isinstance(value, str):
        reject(f"expected a string (a file path), got {toml_type(value)}")
    if not value or "\x00" in value or len(value) > 4096:
        reject("must be a non-empty path without NUL characters")
    path = Path(value)
    base = context(info).base_dir
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
    if context(info).check_files and (problem := _file_problem(path)):
        reject(problem)
    return path


# Kernel and virtual file systems (``/proc/self/mountinfo`` type field): nothing there keeps a
# database; ``lockerd`` stopped with exit 74 on a state_dir under /proc that the check passed.
VIRTUAL_FILESYSTEMS: Final = frozenset(
    {
        *("proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs"),
        *("securityfs", "configfs", "pstore", "bpf", "efivarfs", "fusectl", "mqueue"),
        *("hugetlbfs", "binfmt_misc", "autofs", "rpc_pipefs", "nsfs"),
    }
)


def _mount_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (an existing, resolved path), from
    ``/proc/self/mountinfo`` (proc(5)); None when it cannot be told."""
    best, kind = -1, None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        if (path == Path(point) or Path(point) in path.parents) and len(point) > best:
            best, kind = len(point), rest.split()[0]
    return kind


def state_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be lockerd's state directory (None: it can, as far as can be told
    without knowing the user lockerd runs as): it, or the nearest part of it that exists, is
    not a directory, or lies on a kernel file system (/proc, /sys, /dev)."""
    try:
        resolved = path.resolve()
        existing = next(p for p in (resolved, *resolved.parents) if p.exists())
        if not existing.is_dir():
            what = "exists and" if existing == resolved else f"cannot be made: {existing}"
            return f"{path} {what} is not a directory"
    except (OSError, RuntimeError, ValueError) as err:  # RuntimeError: a symlink loop
        return f"cannot look at {path}: {getattr(err, 'strerror', None) or err}"
    kind = _mount_type(existing)
    guessed = kind is None and resolved.parts[1:2] in (("proc",), ("sys",))
    if kind in VIRTUAL_FILESYSTEMS or guessed:
        fs = kind or "virtual"
        return f"{path} is on the kernel's {fs} file system, which cannot keep a database"
    return None


def _check_state_dir(path: Path, info: ValidationInfo) -> Path:
    if context(info).check_files and (problem := state_dir_problem(path)):
        reject(problem)
    return path


def _check_device_key(path: Path, info: ValidationInfo) -> Path:
    if context(info).check_files and (problem := _file_problem(path, DEVICE_KEY_BYTES)):
        reject(problem)
    return path


Pin = Annotated[int, AfterValidator(_check_pin)]
LockPin = Annotated[int, AfterValidator(_check_pin), AfterValidator(_check_lock_pin)]
Baudrate = Annotated[int, AfterValidator(_check_baudrate)]
Text = Annotated[str, AfterValidator(_check_text)]
SerialPort = Annotated[str, matching(r"[^\x00-\x20\x7f]{1,256}", "a pySerial port or URL")]
Name = Annotated[str, matching(r"[A-Za-z0-9_-]{1,16}", "1-16 characters of A-Z a-z 0-9 _ -")]
PublicKey = Annotated[str, AfterValidator(_check_public_key)]
CommandKid = Annotated[str, matching(r"[A-Za-z0-9._-]{1,64}", "1-64 of A-Z a-z 0-9 . _ -")]
TokenKid = Annotated[str, AfterValidator(_check_token_kid)]
StateDir = Annotated[Path, BeforeValidator(_to_path), AfterValidator(_check_state_dir)]
ReadableFile = Annotated[Path, BeforeValidator(_to_path), AfterValidator(_check_readable)]
DeviceKeyFile = Annotated[Path, BeforeValidator(_to_path), AfterValidator(_check_device_key)]
TopicPrefix = Annotated[str, AfterValidator(_check_topic_prefix)]
PulseSeconds = Annotated[float, AfterValidator(_check_pulse)]
LockBit = Annotated[int, AfterValidator(_check_lock_bit)]
PinFactoryName = Literal["lgpio", "rpigpio", "pigpio", "native", "mock"]
Size = Literal["S", "M", "L", "XL"]


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for messages ("a string", "an array")."""
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
