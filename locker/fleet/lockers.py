"""One locker's life in the fleet: add, renew, revoke, remove (``lockerctl locker ...``).

Adding builds the locker's configuration as TOML tables and validates it with lockerd's own
model (``locker.config``) before any directory, key or certificate exists: a spec lockerd
would refuse writes nothing, so the corrected spec can be tried again at once (issue 7). The
file is written with tomli-w; only keys the operator chose are written, every other value is
the model's default.

Each certificate issued to a locker is recorded (``serials``), so revoking a locker revokes
all of them: the fleet's CRL (``crl.pem``, copied to ``broker/crl.pem``) lists them and the
broker refuses them at the TLS handshake once it has loaded the new CRL (restart it).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from locker.config import ConfigError, parse_config
from locker.config.fields import BAUDRATES
from locker.fleet.certs import load_ca
from locker.fleet.keys import (
    ProvisionArgumentError,
    ProvisionError,
    UnknownLockerError,
    encode_public_key,
    write_device_key,
    write_public,
)
from locker.fleet.layout import Fleet, check_locker_id
from locker.fleet.pki import (
    CLIENT_DAYS,
    PemPair,
    make_client_cert,
    make_crl,
    revoked_serials,
    serial_of,
)
from locker.fleet.staging import Report, staged_dir

logger = logging.getLogger(__name__)

Table = dict[str, Any]


def _decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes '²', which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _port_and_rate(text: str) -> tuple[str, int | None]:
    """``PORT`` or ``PORT@BAUDRATE`` (a pySerial URL may hold ':' and '/', not '@').

    :raises ProvisionArgumentError: an empty port, or a rate after ``@`` that is not one of
        the standard baudrates lockerd accepts (``locker.config.fields.BAUDRATES``).
    """
    port, at, rate = text.rpartition("@")
    if not at:
        return text, None
    if not port:
        raise ProvisionArgumentError(f"{text!r}: expected PORT[@BAUD], the port is missing")
    if not _decimal(rate) or int(rate) not in BAUDRATES:
        raise ProvisionArgumentError(
            f"{text!r}: bad baud rate {rate!r} (one of {', '.join(map(str, BAUDRATES))})"
        )
    return port, int(rate)


@dataclass(frozen=True)
class CompartmentSpec:
    """``ID:SIZE:LOCK_PIN:DOOR_PIN`` (GPIO) or ``ID:SIZE:BOARD:CHANNEL`` (lock board).

    Only the shape is checked here; ids, sizes, pins and channels are judged by the config
    model when the locker's file is built.
    """

    id: str
    size: str
    lock_pin: int | None = None
    door_pin: int | None = None
    board: str | None = None
    channel: int | None = None
    door_closed_level: str | None = None
    item_pin: int | None = None

    @classmethod
    def parse(cls, text: str) -> CompartmentSpec:
        """:raises ProvisionError: not four ``:``-separated fields ending in a number."""
        parts = text.strip().split(":")
        if len(parts) != 4:
            raise ProvisionArgumentError(
                f"compartment {text!r}: expected ID:SIZE:LOCK_PIN:DOOR_PIN or ID:SIZE:BOARD:CHANNEL"
            )
        cid, size, third, fourth = parts
        if not _decimal(fourth):
            raise ProvisionArgumentError(f"compartment {text!r}: the last field must be a number")
        if _decimal(third):
            return cls(cid, size.upper(), lock_pin=int(third), door_pin=int(fourth))
        return cls(cid, size.upper(), board=third, channel=int(fourth))

    def table(self) -> Table:
        """The ``[[compartments]]`` entry: only the keys that were given."""
        keys: tuple[str, ...] = ("id", "size", "lock_pin", "door_pin", "door_closed_level")
        keys += ("item_pin", "board", "channel")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class BoardSpec:
    """``NAME=PORT[@ADDRESS]``: one RS-485 lock-control board (DESIGN 8 ``[[boards]]``)."""

    name: str
    port: str
    address: int = 0

    @classmethod
    def parse(cls, text: str) -> BoardSpec:
        """:raises ProvisionError: not ``NAME=PORT[@ADDRESS]``."""
        name, sep, rest = text.partition("=")
        port, _at, address = rest.rpartition("@") if "@" in rest else (rest, "", "0")
        if not sep or not name or not port or not _decimal(address):
            raise ProvisionArgumentError(f"board {text!r}: expected NAME=PORT[@ADDRESS]")
        return cls(name, port, int(address))

    def table(self) -> Table:
        return {"name": self.name, "port": self.port, "address": self.address}


@dataclass(frozen=True)
class KeypadSpec:
    """``serial:PORT[@BAUD]``, ``matrix:R,R,R,R:C,C,C[,C]`` or ``none``."""

    table: Table

    @classmethod
    def parse(cls, text: str) -> KeypadSpec:
        """:raises ProvisionError: an unknown kind or a pin that is not a number."""
        kind, _sep, rest = text.partition(":")
        if kind == "none" and not rest:
            return cls({"type": "none"})
        if kind == "serial" and rest:
            port, rate = _port_and_rate(rest)
            return cls({"type": "serial", "port": port} | ({"baudrate": rate} if rate else {}))
        rows, _sep, cols = rest.partition(":")
        pins = [p for group in (rows, cols) for p in group.split(",")]
        if kind == "matrix" and cols and all(_decimal(p) for p in pins):
            return cls(
                {
                    "type": "matrix",
                    "rows": [int(p) for p in rows.split(",")],
                    "cols": [int(p) for p in cols.split(",")],
                }
            )
        raise ProvisionArgumentError(
            f"keypad {text!r}: expected serial:PORT[@BAUD], matrix:ROW,ROW,ROW,ROW:COL,COL,COL "
            "or none"
        )


@dataclass(frozen=True)
class ScannerSpec:
    """``PORT[@BAUD]`` (any pySerial URL) or ``none``."""

    table: Table

    @classmethod
    def parse(cls, text: str) -> ScannerSpec:
        if text == "none":
            return cls({"port": "none"})
        port, rate = _port_and_rate(text)
        return cls({"port": port} | ({"baudrate": rate} if rate else {}))


@dataclass(frozen=True)
class LockerFiles:
    """What :func:`provision_locker` wrote into ``fleet_dir/lockers/<id>/``, and the config
    model's warnings about it (legal, probably a mistake)."""

    dir: Path
    config: Path
    cert: Path
    key: Path
    ca: Path
    device_key: Path
    warnings: tuple[str, ...] = ()


def locker_config(
    fleet: Fleet,
    locker_id: str,
    compartments: Sequence[CompartmentSpec],
    boards: Sequence[BoardSpec] = (),
    *,
    keypad: KeypadSpec | None = None,
    scanner: ScannerSpec | None = None,
    file_dir: str,
    state_dir: str,
    pin_factory: str = "lgpio",
    extra: Mapping[str, Table] | None = None,
) -> Table:
    """The DESIGN 8 tables of one locker's file (public keys only), not yet validated.

    ``extra``: whole sections to add or to merge into the generated ones (e.g. ``feedback``).
    """
    data: Table = {
        "locker": {"id": locker_id, "state_dir": state_dir},
        "mqtt": {
            "host": fleet.broker_host,
            "port": fleet.broker_port,
            "ca_file": f"{file_dir}/ca.pem",
            "cert_file": f"{file_dir}/device.pem",
            "key_file": f"{file_dir}/device-key.pem",
            "topic_prefix": fleet.topic_prefix,
        },
        "security": {
            "device_key_file": f"{file_dir}/device.key",
            "command_keys": fleet.command_public_keys(),
            "token_keys": {str(fleet.token_kid): encode_public_key(fleet.token_key())},
        },
        "gpio": {"pin_factory": pin_factory},
    }
    if keypad is not None:
        data["keypad"] = dict(keypad.table)
    if scanner is not None:
        data["scanner"] = dict(scanner.table)
    if boards:
        data["boards"] = [b.table() for b in boards]
    data["compartments"] = [c.table() for c in compartments]
    for section, table in (extra or {}).items():
        data[section] = {**data[section], **table} if isinstance(data.get(section), dict) else table
    return data


def _validated(data: Table, source: Path) -> tuple[str, ...]:
    try:
        config = parse_config(data, source=source, check_files=False)
    except ConfigError as err:
        raise ProvisionArgumentError(
            "lockerd would refuse this configuration; nothing was written:\n"
            + "\n".join(err.errors)
        ) from None
    return tuple(config.warnings())


def provision_locker(
    fleet_dir: Path | str,
    locker_id: str,
    compartments: Sequence[CompartmentSpec],
    boards: Sequence[BoardSpec] = (),
    *,
    keypad: KeypadSpec | None = None,
    scanner: ScannerSpec | None = None,
    install_dir: str | None = None,
    state_dir: str | None = None,
    pin_factory: str = "lgpio",
    extra: Mapping[str, Table] | None = None,
    report: Report = logger.warning,
) -> LockerFiles:
    """Create a locker: client certificate (CN = locker id), device key, config TOML.

    All or nothing (:func:`locker.fleet.staging.staged_dir`): a run that fails part-way leaves
    no locker directory; ``report`` receives a line for each leftover of a killed run removed.

    The config names the files where the locker will find them: under ``install_dir`` (e.g.
    ``/etc/locker`` once copied to the Pi) or, by default, right here in the fleet directory
    (simulation and tests). The whole file is validated by the config model first.

    :raises ProvisionError: a bad or taken id, or a file lockerd would refuse (every reason
        listed); nothing is written then.
    :raises errors.StorageError: a file could not be written (nothing is kept then).
    """
    fleet = Fleet.load(fleet_dir)
    check_locker_id(locker_id)
    if locker_id in fleet.server_users:
        raise ProvisionArgumentError(f"{locker_id!r} is a server identity, not a locker id")
    d = fleet.locker_dir(locker_id)
    where = install_dir.rstrip("/") if install_dir else str(d.resolve())
    data = locker_config(
        fleet,
        locker_id,
        compartments,
        boards,
        keypad=keypad,
        scanner=scanner,
        file_dir=where,
        state_dir=state_dir
        or (str(d.resolve() / "state") if install_dir is None else "/var/lib/locker"),
        pin_factory=pin_factory,
        extra=extra,
    )
    files = LockerFiles(
        dir=d,
        config=d / "locker.toml",
        cert=d / "device.pem",
        key=d / "device-key.pem",
        ca=d / "ca.pem",
        device_key=d / "device.key",
        warnings=_validated(data, Path("lockers", locker_id, "locker.toml")),
    )
    if d.exists():
        raise ProvisionError(f"locker {locker_id} is already provisioned")
    # built beside its final place and renamed in at the end: half a locker, which would
    # block the next try, never exists (a killed run's leftover is removed by the next)
    with staged_dir(d, report) as tmp:
        _issue(fleet, locker_id, tmp)
        write_public(tmp / files.ca.name, fleet.ca_file.read_bytes())
        write_device_key(tmp / files.device_key.name)
        text = "# locker configuration written by lockerctl (DESIGN section 8)\n"
        write_public(tmp / files.config.name, (text + tomli_w.dumps(data)).encode("utf-8"))
    logger.info("provisioned locker %s", locker_id)
    return files


def _issue(fleet: Fleet, locker_id: str, d: Path, days: int = CLIENT_DAYS) -> PemPair:
    """A new key and certificate for the locker, recorded in ``serials`` before it is used."""
    ca = load_ca(fleet)  # a server's copy of the fleet directory holds no CA key: say where
    pair = make_client_cert(ca, locker_id, days)
    with (d / "serials").open("a", encoding="ascii") as log:
        log.write(f"{pair.cert.serial_number}\n")
    (d / "serials").chmod(0o644)
    pair.write(d / "device-key.pem", d / "device.pem")
    return pair


def _serials(d: Path) -> set[int]:
    path = d / "serials"
    lines = path.read_text(encoding="ascii").split() if path.exists() else []
    found = {int(x) for x in lines if x.isdigit()}
    if (d / "device.pem").exists():
        found.add(serial_of((d / "device.pem").read_bytes()))
    return found


def _existing(fleet: Fleet, locker_id: str) -> Path:
    d = fleet.locker_dir(locker_id)
    if not (d / "device.pem").exists():
        raise UnknownLockerError(f"locker {locker_id} is not provisioned in this fleet")
    return d


def renew_locker(fleet_dir: Path | str, locker_id: str, days: int = CLIENT_DAYS) -> dt.datetime:
    """A new key and certificate for a locker, valid ``days``; returns when it ends.

    The old certificate stays valid until it expires, so the locker keeps working until the
    new ``device.pem`` and ``device-key.pem`` are installed on it.

    :raises ProvisionError: unknown or revoked locker.
    """
    fleet = Fleet.load(fleet_dir)
    d = _existing(fleet, locker_id)
    if (d / "REVOKED").exists():
        raise ProvisionError(f"locker {locker_id} is revoked; remove it and add it again")
    pair = _issue(fleet, locker_id, d, days)
    logger.info("renewed the certificate of locker %s", locker_id)
    return pair.cert.not_valid_after_utc


def revoke_locker(fleet_dir: Path | str, locker_id: str) -> list[int]:
    """Revoke every certificate ever issued to a locker: they are added to the fleet's CRL
    and to ``broker/crl.pem``. Returns the serial numbers. Idempotent.

    The broker refuses them once it has loaded the new CRL: restart it (copy
    ``broker/crl.pem`` first when the broker's files live elsewhere).

    :raises ProvisionError: unknown locker.
    """
    fleet = Fleet.load(fleet_dir)
    d = _existing(fleet, locker_id)
    serials = _serials(d)
    _add_to_crl(fleet, serials)
    write_public(d / "REVOKED", f"revoked {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z\n".encode())
    logger.info("revoked locker %s", locker_id)
    return sorted(serials)


def _add_to_crl(fleet: Fleet, serials: set[int]) -> None:
    ca = PemPair.load(fleet.ca_key_file, fleet.ca_file)
    known = revoked_serials(fleet.crl_file.read_bytes()) if fleet.crl_file.exists() else set()
    crl = make_crl(ca, known | serials)
    write_public(fleet.crl_file, crl)
    write_public(fleet.dir / "broker" / "crl.pem", crl)


def remove_locker(fleet_dir: Path | str, locker_id: str) -> list[int]:
    """Revoke a locker's certificates and delete its directory (device key included), so its
    id can be provisioned again. Returns the revoked serial numbers.

    :raises ProvisionError: unknown locker.
    """
    fleet = Fleet.load(fleet_dir)
    d = fleet.locker_dir(locker_id)
    if not d.is_dir():
        raise UnknownLockerError(f"locker {locker_id} is not provisioned in this fleet")
    serials = _serials(d)
    if serials:
        _add_to_crl(fleet, serials)
    shutil.rmtree(d)
    logger.info("removed locker %s", locker_id)
    return sorted(serials)
