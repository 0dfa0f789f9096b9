"""Provisioning: the fleet's PKI, keys, broker configuration and per-locker configuration.

Owns everything an installer or operator creates once per fleet or once per locker:

- X.509 with ``cryptography``: a fleet CA, the broker's server certificate (SAN DNS + IP,
  serverAuth) and client certificates (clientAuth, CN = locker id = MQTT username = client id).
  Keys are ECDSA P-256, which every OpenSSL 3 / Mosquitto / Python ``ssl`` build accepts.
- Mosquitto configuration and ACL text for mutual TLS (``../shared/reference/mqtt.md`` §6).
- Device keys (32 random bytes, DESIGN §6) and Ed25519 signing keys for commands and QR
  tokens, with the public-key encoding of DESIGN §8 (standard base64 of the raw 32 bytes).
- ``provision_fleet`` / ``provision_locker``: the on-disk layout ``lockerctl`` works with.

Private keys are written with mode 0600 and never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

DEVICE_KEY_BYTES = 32
BACKEND_USER = "backend"
"""CN of the fleet's server (operator/backend) client certificate; never a locker id."""

LOCKER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A locker id is one MQTT topic level, a certificate CN and a file name: keep it plain."""

COMPARTMENT_SIZES = ("S", "M", "L", "XL")
_CLOCK_SKEW = dt.timedelta(minutes=5)


class ProvisionError(Exception):
    """A provisioning request that cannot be honoured (bad id, existing fleet, bad spec...)."""


# --- X.509 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PemPair:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisionError("expected an EC private key")
        return key

    def write(self, key_path: Path | str, cert_path: Path | str) -> None:
        """Write the key (0600) and the certificate (0644)."""
        write_private(key_path, self.key_pem)
        write_public(cert_path, self.cert_pem)

    @classmethod
    def load(cls, key_path: Path | str, cert_path: Path | str) -> PemPair:
        return cls(Path(key_path).read_bytes(), Path(cert_path).read_bytes())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _builder(
    subject_cn: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    if days <= 0:
        raise ProvisionError(f"days must be positive, got {days}")
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(cn: str, days: int = 3650) -> PemPair:
    """A self-signed fleet CA (P-256), allowed to sign end-entity certificates only."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        _builder(cn, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return PemPair(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def _leaf(
    ca: PemPair,
    cn: str,
    eku: x509.ObjectIdentifier,
    days: int,
    san: Sequence[x509.GeneralName] = (),
) -> PemPair:
    ca_key = ca.private_key()
    ca_cert = ca.cert
    key = _new_key()
    builder = (
        _builder(cn, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return PemPair(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def make_server_cert(
    ca: PemPair, hostnames: list[str], ips: Sequence[str] = (), days: int = 825
) -> PemPair:
    """The broker's certificate: SAN with every host name and IP clients will connect to."""
    if not hostnames and not ips:
        raise ProvisionError("a server certificate needs at least one host name or IP")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as err:
        raise ProvisionError(f"bad IP address for the server certificate: {err}") from err
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    san += [x509.IPAddress(a) for a in addresses]
    cn = hostnames[0] if hostnames else str(addresses[0])
    return _leaf(ca, cn, ExtendedKeyUsageOID.SERVER_AUTH, days, san)


def make_client_cert(ca: PemPair, cn: str, days: int = 825) -> PemPair:
    """A client certificate; the broker takes its CN as username and client id."""
    if not LOCKER_ID_RE.fullmatch(cn):
        raise ProvisionError(
            f"client certificate CN {cn!r} is not a valid id ({LOCKER_ID_RE.pattern})"
        )
    # Mosquitto reads the CN; the URI SAN is for verifiers that want one (RFC 5280 4.2.1.6).
    san = [x509.UniformResourceIdentifier(f"urn:parcel-locker:client:{cn}")]
    return _leaf(ca, cn, ExtendedKeyUsageOID.CLIENT_AUTH, days, san)


# --- Mosquitto ------------------------------------------------------------------------------


def render_mosquitto_conf(
    *,
    port: int,
    cafile: Path | str | None = None,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    persistence_dir: Path | str,
    acl_file: Path | str | None = None,
    run_as_root: bool,
    tls: bool = True,
    extra: str = "",
    bind_address: str | None = "127.0.0.1",
) -> str:
    """Mosquitto 2.0 configuration: one listener, mutual TLS, identity from the certificate.

    With ``tls=False`` the listener is plain and anonymous with no ACL (pure-logic tests only).
    ``bind_address=None`` listens on every interface (a production broker).
    """
    if not 0 < port < 65536:
        raise ProvisionError(f"port out of range: {port}")
    lines = [
        "# generated by lockerctl (locker.fleet.provision); regenerate rather than edit",
        "per_listener_settings false",
        "persistence true",
        # Mosquitto wants the trailing slash on a directory.
        f"persistence_location {str(persistence_dir).rstrip('/')}/",
        "autosave_interval 1",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    if run_as_root:
        # Started as root, Mosquitto otherwise drops to user 'mosquitto', which cannot read
        # keys owned by root with mode 0600.
        lines.insert(1, "user root")
    listener = f"listener {port}" + (f" {bind_address}" if bind_address else "")
    if tls:
        missing = [
            n
            for n, v in (
                ("cafile", cafile),
                ("certfile", certfile),
                ("keyfile", keyfile),
                ("acl_file", acl_file),
            )
            if v is None
        ]
        if missing:
            raise ProvisionError(f"TLS broker configuration needs {', '.join(missing)}")
        lines += [
            "allow_anonymous false",
            f"acl_file {acl_file}",
            "",
            listener,
            f"cafile {cafile}",
            f"certfile {certfile}",
            f"keyfile {keyfile}",
            "require_certificate true",
            "use_identity_as_username true",
            # Forces client id = CN, so one locker cannot take over another's session.
            "use_username_as_clientid true",
            "tls_version tlsv1.2",
        ]
    else:
        lines += ["allow_anonymous true", "", listener]
    if extra:
        lines += ["", extra.rstrip("\n")]
    return "\n".join(lines) + "\n"


def render_acl(topic_prefix: str = "lockers", server_users: Iterable[str] = (BACKEND_USER,)) -> str:
    """ACL: each locker (username = CN) only its own topics; server users the whole tree.

    ``user`` blocks come first; ``pattern`` lines apply to every authenticated user.
    """
    _check_prefix(topic_prefix)
    p = topic_prefix
    lines = ["# generated by lockerctl (locker.fleet.provision)"]
    for user in server_users:
        if not LOCKER_ID_RE.fullmatch(user):
            raise ProvisionError(f"bad server user name {user!r}")
        lines += [f"user {user}", f"topic readwrite {p}/#", ""]
    lines += [
        f"pattern read {p}/%u/cmd",
        f"pattern read {p}/%u/ack",
        f"pattern write {p}/%u/status",
        f"pattern write {p}/%u/state",
        f"pattern write {p}/%u/evt/#",
        f"pattern write {p}/%u/res",
    ]
    return "\n".join(lines) + "\n"


def _check_prefix(prefix: str) -> None:
    levels = prefix.split("/")
    if not prefix or any(not lv or any(c in lv for c in "+#\0") for lv in levels):
        raise ProvisionError(f"bad topic prefix {prefix!r}")


# --- files ----------------------------------------------------------------------------------


def write_private(path: Path | str, data: bytes) -> None:
    """Write secret material with mode 0600 (also when the file already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_public(path: Path | str, data: bytes) -> None:
    Path(path).write_bytes(data)
    os.chmod(path, 0o644)


def _write_new(path: Path, data: bytes, *, private: bool) -> None:
    if path.exists():
        raise ProvisionError(f"{path.name} already exists; refusing to overwrite it")
    (write_private if private else write_public)(path, data)


# --- device keys and Ed25519 signing keys ---------------------------------------------------


def generate_device_key() -> bytes:
    """A fresh 32-byte device key (DESIGN 6) from the OS CSPRNG."""
    return secrets.token_bytes(DEVICE_KEY_BYTES)


def write_device_key(path: Path | str, key: bytes | None = None) -> bytes:
    """Write a device key file (exactly 32 raw bytes, 0600) and return the key."""
    key = generate_device_key() if key is None else key
    if len(key) != DEVICE_KEY_BYTES:
        raise ProvisionError(f"a device key is exactly {DEVICE_KEY_BYTES} bytes")
    write_private(path, key)
    return key


def read_device_key(path: Path | str) -> bytes:
    key = Path(path).read_bytes()
    if len(key) != DEVICE_KEY_BYTES:
        raise ProvisionError(f"{Path(path).name}: a device key file holds exactly 32 bytes")
    return key


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key for signing commands or QR tokens."""
    return Ed25519PrivateKey.generate()


def signing_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM PKCS#8)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except ValueError as err:
        raise ProvisionError(f"{Path(path).name}: not a PEM private key") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisionError(f"{Path(path).name}: not an Ed25519 private key")
    return key


def encode_public_key(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """DESIGN 8 encoding: standard base64 of the 32-byte raw Ed25519 public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def decode_public_key(text: str) -> Ed25519PublicKey:
    """Inverse of :func:`encode_public_key`; strict (padding, alphabet, 32 bytes)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError) as err:
        raise ProvisionError("public key is not standard base64") from err
    if len(raw) != 32:
        raise ProvisionError(f"public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


# --- fleet layout ---------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    # A JSON string without ASCII escaping is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Fleet:
    """A provisioned fleet directory, as ``lockerctl`` reads it.

    Layout: ``fleet.toml``, ``ca.pem``/``ca-key.pem``, ``broker/`` (server certificate,
    ``mosquitto.conf``, ``acl``), ``clients/<user>.pem|-key.pem`` (server identities),
    ``keys/command-<kid>.key``, ``keys/token-<kid>.key``, ``lockers/<id>/``.
    """

    dir: Path
    name: str
    broker_host: str
    broker_port: int
    topic_prefix: str
    command_kid: str
    token_kid: int
    server_users: tuple[str, ...]

    FILE = "fleet.toml"

    @classmethod
    def load(cls, directory: Path | str) -> Fleet:
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
            )
        except FileNotFoundError as err:
            raise ProvisionError(f"{d}: not a fleet directory (no {cls.FILE})") from err
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as err:
            raise ProvisionError(f"{path.name}: {err}") from err

    def render(self) -> str:
        users = ", ".join(_toml_str(u) for u in self.server_users)
        return (
            "# lockerctl fleet description (public data only)\n"
            f"name = {_toml_str(self.name)}\n"
            f"broker_host = {_toml_str(self.broker_host)}\n"
            f"broker_port = {self.broker_port}\n"
            f"topic_prefix = {_toml_str(self.topic_prefix)}\n"
            f"command_kid = {_toml_str(self.command_kid)}\n"
            f"token_kid = {self.token_kid}\n"
            f"server_users = [{users}]\n"
        )

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.dir / "ca-key.pem"

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

    def locker_dir(self, locker_id: str) -> Path:
        check_locker_id(locker_id)
        return self.dir / "lockers" / locker_id

    def device_key(self, locker_id: str) -> bytes:
        path = self.locker_dir(locker_id) / "device.key"
        if not path.exists():
            raise ProvisionError(f"locker {locker_id} is not provisioned in this fleet")
        return read_device_key(path)

    def lockers(self) -> list[str]:
        root = self.dir / "lockers"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def check_locker_id(locker_id: str) -> None:
    if not LOCKER_ID_RE.fullmatch(locker_id):
        raise ProvisionError(f"bad locker id {locker_id!r}: expected {LOCKER_ID_RE.pattern}")


SERVER_USERS = (BACKEND_USER, "lockerctl")
"""Two server identities: the broker forces client id = CN, so a long-running watcher and a
one-off command on the same certificate would disconnect each other."""


def provision_fleet(
    directory: Path | str,
    fleet_name: str,
    broker_host: str,
    *,
    broker_port: int = 8883,
    broker_ips: Sequence[str] = (),
    topic_prefix: str = "lockers",
    command_kid: str = "ops1",
    token_kid: int = 1,
    run_as_root: bool = False,
    broker_install_dir: str | None = None,
    broker_bind: str | None = None,
) -> Fleet:
    """Create a fleet: CA, broker certificate + config + ACL, server client certificates,
    the command signing key and the QR token signing key. Refuses to overwrite a fleet.

    ``broker_install_dir``: where the broker's files will live on the broker host, used in
    ``mosquitto.conf``; default: this fleet directory's ``broker/``. ``broker_bind``: the
    listener's address (default: every interface).
    """
    d = Path(directory)
    if (d / Fleet.FILE).exists() or (d / "ca-key.pem").exists():
        raise ProvisionError(f"{d} already holds a fleet; refusing to overwrite it")
    _check_prefix(topic_prefix)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", command_kid):
        raise ProvisionError(f"bad command key id {command_kid!r}")
    if not 0 <= token_kid <= 255:
        raise ProvisionError("token key id must be 0-255")
    fleet = Fleet(
        d, fleet_name, broker_host, broker_port, topic_prefix, command_kid, token_kid, SERVER_USERS
    )
    for sub in ("broker", "broker/data", "clients", "keys", "lockers"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    ca = make_ca(f"{fleet_name} locker CA")
    _write_new(fleet.ca_key_file, ca.key_pem, private=True)
    _write_new(fleet.ca_file, ca.cert_pem, private=False)
    _provision_broker(
        fleet,
        ca,
        broker_ips,
        run_as_root=run_as_root,
        install_dir=broker_install_dir,
        bind_address=broker_bind,
    )
    for user in SERVER_USERS:
        pair = make_client_cert(ca, user)
        cert, key = fleet.client_cert(user)
        _write_new(key, pair.key_pem, private=True)
        _write_new(cert, pair.cert_pem, private=False)
    for path in (fleet.command_key_file, fleet.token_key_file):
        signing = generate_signing_key()
        _write_new(path, signing_key_pem(signing), private=True)
        _write_new(
            path.with_suffix(".pub"), (encode_public_key(signing) + "\n").encode(), private=False
        )
    write_public(d / Fleet.FILE, fleet.render().encode("utf-8"))
    logger.info("provisioned fleet %s in %s", fleet_name, d)
    return fleet


def _provision_broker(
    fleet: Fleet,
    ca: PemPair,
    broker_ips: Sequence[str],
    *,
    run_as_root: bool,
    install_dir: str | None,
    bind_address: str | None,
) -> None:
    b = fleet.dir / "broker"
    server = make_server_cert(ca, [fleet.broker_host], list(broker_ips))
    _write_new(b / "server-key.pem", server.key_pem, private=True)
    _write_new(b / "server.pem", server.cert_pem, private=False)
    shutil.copyfile(fleet.ca_file, b / "ca.pem")
    where = install_dir.rstrip("/") if install_dir else str(b.resolve())
    conf = render_mosquitto_conf(
        port=fleet.broker_port,
        cafile=f"{where}/ca.pem",
        certfile=f"{where}/server.pem",
        keyfile=f"{where}/server-key.pem",
        persistence_dir=f"{where}/data",
        acl_file=f"{where}/acl",
        run_as_root=run_as_root,
        bind_address=bind_address,
    )
    write_public(b / "mosquitto.conf", conf.encode("utf-8"))
    write_public(b / "acl", render_acl(fleet.topic_prefix, fleet.server_users).encode("utf-8"))


# --- lockers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompartmentSpec:
    """One compartment of a locker config: GPIO-wired (lock_pin, door_pin) or a board channel."""

    id: str
    size: str
    lock_pin: int | None = None
    door_pin: int | None = None
    board: str | None = None
    channel: int | None = None
    door_closed_level: str = "low"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,16}", self.id):
            raise ProvisionError(f"bad compartment id {self.id!r}")
        if self.size not in COMPARTMENT_SIZES:
            raise ProvisionError(f"compartment {self.id}: size must be one of {COMPARTMENT_SIZES}")
        gpio = self.lock_pin is not None and self.door_pin is not None
        board = self.board is not None and self.channel is not None
        if gpio == board:
            raise ProvisionError(
                f"compartment {self.id}: give either lock_pin and door_pin, or board and channel"
            )

    @classmethod
    def parse(cls, text: str) -> CompartmentSpec:
        """``ID:SIZE:LOCK_PIN:DOOR_PIN`` (GPIO) or ``ID:SIZE:BOARD:CHANNEL`` (lock board)."""
        parts = text.strip().split(":")
        if len(parts) != 4:
            raise ProvisionError(
                f"compartment {text!r}: expected ID:SIZE:LOCK_PIN:DOOR_PIN or ID:SIZE:BOARD:CHANNEL"
            )
        cid, size, third, fourth = parts
        if not fourth.isdigit():
            raise ProvisionError(f"compartment {text!r}: the last field must be a number")
        if third.isdigit():
            return cls(cid, size.upper(), lock_pin=int(third), door_pin=int(fourth))
        return cls(cid, size.upper(), board=third, channel=int(fourth))

    def render(self) -> str:
        lines = ["[[compartments]]", f"id = {_toml_str(self.id)}", f"size = {_toml_str(self.size)}"]
        if self.board is not None:
            lines += [f"board = {_toml_str(self.board)}", f"channel = {self.channel}"]
        else:
            lines += [
                f"lock_pin = {self.lock_pin}",
                f"door_pin = {self.door_pin}",
                f"door_closed_level = {_toml_str(self.door_closed_level)}",
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BoardSpec:
    """One RS-485 lock-control board (DESIGN 8 ``[[boards]]``)."""

    name: str
    port: str
    address: int = 0
    protocol: str = "kerong-cu16"
    baudrate: int = 19200
    lock_bit_locked: int = 1
    poll_interval_s: float = 0.2

    @classmethod
    def parse(cls, text: str) -> BoardSpec:
        """``NAME=PORT`` or ``NAME=PORT@ADDRESS`` (a pySerial URL may hold ':')."""
        name, sep, rest = text.partition("=")
        port, _at, address = rest.rpartition("@") if "@" in rest else (rest, "", "0")
        if not sep or not name or not port or not address.isdigit():
            raise ProvisionError(f"board {text!r}: expected NAME=PORT[@ADDRESS]")
        return cls(name, port, int(address))

    def render(self) -> str:
        return (
            "[[boards]]\n"
            f"name = {_toml_str(self.name)}\n"
            f"protocol = {_toml_str(self.protocol)}\n"
            f"port = {_toml_str(self.port)}\n"
            f"baudrate = {self.baudrate}\n"
            f"address = {self.address}\n"
            f"lock_bit_locked = {self.lock_bit_locked}\n"
            f"poll_interval_s = {self.poll_interval_s}\n"
        )


@dataclass(frozen=True)
class LockerFiles:
    """What :func:`provision_locker` wrote into ``fleet_dir/lockers/<id>/``."""

    dir: Path
    config: Path
    cert: Path
    key: Path
    ca: Path
    device_key: Path
    extra: dict[str, Path] = field(default_factory=dict)


def provision_locker(
    fleet_dir: Path | str,
    locker_id: str,
    compartments: Sequence[CompartmentSpec],
    boards: Sequence[BoardSpec] = (),
    *,
    install_dir: str | None = None,
    state_dir: str | None = None,
    pin_factory: str = "lgpio",
    extra_toml: str = "",
) -> LockerFiles:
    """Create a locker: client certificate (CN = locker id), device key, config TOML.

    The config names the files where the locker will find them: under ``install_dir`` (e.g.
    ``/etc/locker`` once copied to the Pi) or, by default, right here in the fleet directory
    (simulation and tests). Only public keys go into the config. ``extra_toml`` is appended
    verbatim (``[keypad]``, ``[scanner]``, ``[feedback]`` sections).
    """
    fleet = Fleet.load(fleet_dir)
    check_locker_id(locker_id)
    if locker_id in fleet.server_users:
        raise ProvisionError(f"{locker_id!r} is a server identity, not a locker id")
    if not compartments:
        raise ProvisionError("a locker needs at least one compartment")
    _check_specs(compartments, boards)
    d = fleet.locker_dir(locker_id)
    if d.exists():
        raise ProvisionError(f"locker {locker_id} is already provisioned")
    d.mkdir(parents=True)
    ca = PemPair.load(fleet.ca_key_file, fleet.ca_file)
    pair = make_client_cert(ca, locker_id)
    files = LockerFiles(
        dir=d,
        config=d / "locker.toml",
        cert=d / "device.pem",
        key=d / "device-key.pem",
        ca=d / "ca.pem",
        device_key=d / "device.key",
    )
    pair.write(files.key, files.cert)
    write_public(files.ca, fleet.ca_file.read_bytes())
    write_device_key(files.device_key)
    where = install_dir.rstrip("/") if install_dir else str(d.resolve())
    config = render_locker_config(
        fleet,
        locker_id,
        compartments,
        boards,
        file_dir=where,
        state_dir=state_dir
        or (str(d.resolve() / "state") if install_dir is None else "/var/lib/locker"),
        pin_factory=pin_factory,
    )
    write_public(
        files.config, (config + (("\n" + extra_toml) if extra_toml else "")).encode("utf-8")
    )
    logger.info("provisioned locker %s", locker_id)
    return files


def _check_specs(compartments: Sequence[CompartmentSpec], boards: Sequence[BoardSpec]) -> None:
    ids = [c.id for c in compartments]
    if len(set(ids)) != len(ids):
        raise ProvisionError("compartment ids must be unique")
    names = {b.name for b in boards}
    if len(names) != len(boards):
        raise ProvisionError("board names must be unique")
    for c in compartments:
        if c.board is not None and c.board not in names:
            raise ProvisionError(f"compartment {c.id}: board {c.board!r} is not defined")


def render_locker_config(
    fleet: Fleet,
    locker_id: str,
    compartments: Sequence[CompartmentSpec],
    boards: Sequence[BoardSpec],
    *,
    file_dir: str,
    state_dir: str,
    pin_factory: str,
) -> str:
    """The DESIGN 8 TOML for one locker (public keys only)."""
    command_pub = encode_public_key(fleet.command_key())
    token_pub = encode_public_key(fleet.token_key())
    head = f"""# locker configuration written by lockerctl (DESIGN section 8)
[locker]
id = {_toml_str(locker_id)}
state_dir = {_toml_str(state_dir)}

[mqtt]
host = {_toml_str(fleet.broker_host)}
port = {fleet.broker_port}
tls = true
ca_file = {_toml_str(file_dir + "/ca.pem")}
cert_file = {_toml_str(file_dir + "/device.pem")}
key_file = {_toml_str(file_dir + "/device-key.pem")}
topic_prefix = {_toml_str(fleet.topic_prefix)}
keepalive_s = 30
session_expiry_s = 604800
require_server_ack = true

[security]
device_key_file = {_toml_str(file_dir + "/device.key")}
command_keys = {{ {_toml_str(fleet.command_kid)} = {_toml_str(command_pub)} }}
token_keys = {{ "{fleet.token_kid}" = {_toml_str(token_pub)} }}
max_remote_opens_per_hour = 20
failures_before_backoff = 5
hard_lockout_failures = 100

[timing]
unlock_pulse_s = 0.5
door_open_timeout_s = 10
door_left_open_s = 120
keypad_entry_timeout_s = 20
pickup_hours = 72

[gpio]
pin_factory = {_toml_str(pin_factory)}
"""
    parts = [head] + [b.render() for b in boards] + [c.render() for c in compartments]
    return "\n".join(parts)
