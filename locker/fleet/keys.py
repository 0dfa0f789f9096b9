"""Key material and the files that hold it: device keys (32 random bytes, DESIGN section 6),
Ed25519 signing keys for commands and QR tokens with the public-key encoding of DESIGN
section 8, and writers that set modes explicitly (a umask of 000 must not make a private key,
a certificate or a fleet directory writable by others).

Private keys are written with mode 0600 and never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from locker import errors
from locker.contract.credentials import DEVICE_KEY_BYTES

ProvisionError = errors.ProvisionError  # a request the fleet directory cannot honour


class ProvisionArgumentError(ProvisionError, errors.UsageError):
    """A provisioning argument that cannot be used (a bad locker id or spec, a setting lockerd
    would refuse): ``lockerctl`` exits 2, like any bad argument, and nothing is written."""


class UnknownLockerError(ProvisionError, errors.NotFoundError):
    """The locker is not provisioned in this fleet directory (``lockerctl`` exits 6)."""


# --- files ----------------------------------------------------------------------------------


def _write(path: Path | str, data: bytes, mode: int) -> None:
    # The mode is set on the open file before any byte is written, whatever the umask and
    # whatever mode an existing file had.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)
            f.write(data)
    except OSError as err:  # a write error (ENOSPC, EFBIG) carries no file name: add it
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, os.fspath(path)) from err


def write_private(path: Path | str, data: bytes) -> None:
    """Write secret material with mode 0600 (also when the file already existed)."""
    _write(path, data, 0o600)


def write_public(path: Path | str, data: bytes) -> None:
    """Write public material (certificates, configs, public keys) with mode 0644."""
    _write(path, data, 0o644)


def write_new(path: Path, data: bytes, *, private: bool) -> None:
    """Write a file that must not exist yet. :raises ProvisionError: it exists."""
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


def read_file(path: Path | str) -> bytes:
    """The bytes of a fleet file.

    :raises errors.StorageError: it cannot be read (missing, no permission), naming the file.
    """
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise errors.StorageError(f"cannot read {path}: {err.strerror or err}") from err


def read_device_key(path: Path | str) -> bytes:
    key = read_file(path)
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
        key = serialization.load_pem_private_key(read_file(path), password=None)
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
