"""The fleet directory ``lockerctl`` works with, and where each file lives in it.

Layout: ``fleet.toml`` (public settings), ``ca.pem``/``ca-key.pem``, ``crl.pem`` (revoked
certificates), ``broker/`` (server certificate, ``mosquitto.conf``, ``acl``, ``crl.pem``,
``data/``), ``clients/<user>.pem|-key.pem`` (server and operator identities),
``keys/command-<kid>.key``, ``keys/token-<kid>.key``, ``keys/users/<name>.key|.pub`` (the
fleet service's users' command keys), ``lockers/<id>/`` (one per locker).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from locker import errors
from locker.config import ConfigError, parse_config
from locker.config.sections import Security
from locker.fleet import ledger
from locker.fleet.keys import (
    ProvisionArgumentError,
    ProvisionError,
    UnknownLockerError,
    encode_public_key,
    load_signing_key,
    read_device_key,
)
from locker.fleet.pki import LOCKER_ID_RE

USER_KEYS_DIR: Final = "keys/users"
"""Where the fleet service keeps its users' command keys (``<name>.key``, ``<name>.pub``)."""

DIR_MODE: Final = 0o750
"""Every directory of a fleet: never writable by others, whatever the umask."""


def make_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with :data:`DIR_MODE`, set explicitly."""
    for part in [*reversed(path.parents), path]:
        if not part.exists():
            part.mkdir()
            os.chmod(part, DIR_MODE)


def check_locker_id(locker_id: str) -> None:
    """A locker id is one MQTT topic level, a certificate CN and a file name: keep it plain.

    :raises ProvisionArgumentError: the id does not match ``LOCKER_ID_RE``.
    """
    if not LOCKER_ID_RE.fullmatch(locker_id):
        raise ProvisionArgumentError(
            f"bad locker id {locker_id!r}: expected {LOCKER_ID_RE.pattern}"
        )


@dataclass(frozen=True)
class CodeLength:
    """A locker's keypad code length (:meth:`Fleet.code_length`): ``digits``; ``known`` false
    when its file could not tell and ``digits`` is lockerd's default; ``source`` says where
    the value comes from, for messages."""

    digits: int
    known: bool
    source: str


@dataclass(frozen=True)
class Fleet:
    """A provisioned fleet directory, as ``lockerctl`` reads it (public settings only)."""

    dir: Path
    name: str
    broker_host: str
    broker_port: int
    topic_prefix: str
    command_kid: str
    token_kid: int
    server_users: tuple[str, ...]
    # the fleet service's setting, read here too so that ``lockerctl watch`` resyncs a lasting
    # gap when the service would (ledger.GapRule); absent: the default
    gap_resync_s: float = ledger.GAP_RESYNC_S

    FILE = "fleet.toml"

    @classmethod
    def load(cls, directory: Path | str) -> Fleet:
        """:raises ProvisionError: not a fleet directory, or a broken ``fleet.toml``."""
        d = Path(directory)
        path = d / cls.FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            return cls(
                dir=d,
                name=str(data["name"]),
                broker_host=str(data["broker_host"]),
                broker_port=int(data["broker_port"]),
                topic_prefix=str(data["topic_prefix"]),
                command_kid=str(data["command_kid"]),
                token_kid=int(data["token_kid"]),
                server_users=tuple(str(u) for u in data["server_users"]),
                gap_resync_s=_gap_resync_s(data.get("gap_resync_s", ledger.GAP_RESYNC_S)),
            )
        except FileNotFoundError as err:
            raise ProvisionError(f"{d}: not a fleet directory (no {cls.FILE})") from err
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as err:
            raise ProvisionError(f"{path.name}: {err}") from err
        except OSError as err:
            raise errors.StorageError(f"cannot read {path}: {err.strerror or err}") from err

    def render(self) -> str:
        """``fleet.toml``'s text."""
        data = {
            "name": self.name,
            "broker_host": self.broker_host,
            "broker_port": self.broker_port,
            "topic_prefix": self.topic_prefix,
            "command_kid": self.command_kid,
            "token_kid": self.token_kid,
            "server_users": list(self.server_users),
        }
        return "# lockerctl fleet description (public data only)\n" + tomli_w.dumps(data)

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.dir / "ca-key.pem"

    @property
    def crl_file(self) -> Path:
        """The fleet's CRL; ``broker/crl.pem`` is the copy the broker loads."""
        return self.dir / "crl.pem"

    def client_cert(self, user: str) -> tuple[Path, Path]:
        """(certificate, key) of one of the fleet's server identities."""
        return self.dir / "clients" / f"{user}.pem", self.dir / "clients" / f"{user}-key.pem"

    @property
    def command_key_file(self) -> Path:
        return self.dir / "keys" / f"command-{self.command_kid}.key"

    @property
    def token_key_file(self) -> Path:
        return self.dir / "keys" / f"token-{self.token_kid}.key"

    def command_key(self) -> Ed25519PrivateKey:
        return load_signing_key(self.command_key_file)

    def token_key(self) -> Ed25519PrivateKey:
        return load_signing_key(self.token_key_file)

    def command_public_keys(self) -> dict[str, str]:
        """kid -> public key of every command signer this fleet's lockers accept: the fleet's
        own key and each fleet-service user's (``keys/users/<name>.pub``, kid = name)."""
        keys = {self.command_kid: encode_public_key(self.command_key())}
        users = self.dir / USER_KEYS_DIR
        for pub in sorted(users.glob("*.pub")) if users.is_dir() else ():
            keys.setdefault(pub.stem, pub.read_text(encoding="ascii").strip())
        return keys

    def locker_dir(self, locker_id: str) -> Path:
        check_locker_id(locker_id)
        return self.dir / "lockers" / locker_id

    def device_key(self, locker_id: str) -> bytes:
        """:raises UnknownLockerError: the locker is not provisioned in this fleet."""
        path = self.locker_dir(locker_id) / "device.key"
        if not path.exists():
            raise UnknownLockerError(f"locker {locker_id} is not provisioned in this fleet")
        return read_device_key(path)

    def code_length(self, locker_id: str) -> CodeLength:
        """How many digits the locker's keypad codes have: ``security.code_length`` of its
        ``lockers/<id>/locker.toml`` (written by ``lockerctl locker add``), validated by
        lockerd's own model, which also gives the default (8) when the key is not set.

        A locker takes only codes of exactly that length (DESIGN 8: other lengths are
        ``malformed``), so every code the fleet generates for it has this length. When the
        file cannot be read or is invalid, the result is lockerd's default with ``known``
        false and the reason in ``source``.
        """
        default = Security.model_fields["code_length"].default
        path = self.locker_dir(locker_id) / "locker.toml"
        where = f"lockers/{locker_id}/locker.toml"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            config = parse_config(data, source=where, check_files=False)
        except OSError as err:
            return CodeLength(default, False, f"{where}: {err.strerror or err}")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ConfigError) as err:
            return CodeLength(default, False, f"{where}: {str(err).splitlines()[0]}")
        return CodeLength(config.security.code_length, True, f"security.code_length in {where}")

    def lockers(self) -> list[str]:
        root = self.dir / "lockers"
        if not root.is_dir():
            return []
        # a locker being added is built in a dot-named staging directory: not a locker yet
        return sorted(p.name for p in root.iterdir() if p.is_dir() and LOCKER_ID_RE.match(p.name))


def _gap_resync_s(value: object) -> float:
    """``gap_resync_s`` of ``fleet.toml``: seconds in the range the service accepts too.

    :raises ValueError: not a number in ``[GAP_RESYNC_MIN_S, GAP_RESYNC_MAX_S]``.
    """
    low, high = ledger.GAP_RESYNC_MIN_S, ledger.GAP_RESYNC_MAX_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"gap_resync_s: expected seconds in [{low:g}, {high:g}], got {value!r}")
    return float(value)
