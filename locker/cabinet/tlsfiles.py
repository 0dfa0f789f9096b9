"""The files the MQTT link loads (``mqtt.ca_file``, ``cert_file``, ``key_file``), checked the
way the link will use them, before anything starts: each problem is one line naming the
options, for ``lockerd --check-config`` and for lockerd's start (exit 78, EX_CONFIG).

Why: a key that is not the certificate's, a certificate where the key should be, a client
certificate as the CA, or a ``locker.id`` that is not the certificate's CN all passed
``--check-config`` as "OK"; the first three then stopped lockerd with a traceback
(``ssl.SSLError: KEY_VALUES_MISMATCH``, ``PEM lib``) that systemd restarted every 5 s, the
last made the broker refuse every publish (its ACL takes the CN as the locker's identity,
DESIGN 5: ``locker_id`` is the TLS client certificate CN).

Nothing secret is printed: file names, CNs and OpenSSL's reason only, never key material.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

__all__ = ["client_cn", "identity_problems", "tls_failure", "tls_file_problems"]

MADE_BY = "lockerctl locker add writes ca.pem, device.pem and device-key.pem"


def _read(path: Path) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"


def _holds(data: bytes) -> str:
    """What a PEM file holds instead, for messages ("" when it is not PEM at all)."""
    if b"PRIVATE KEY-----" in data:
        return " (it holds a private key)"
    if b"-----BEGIN CERTIFICATE-----" in data:
        return " (it holds a certificate)"
    return ""


def _cn(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


def _ca_problems(path: Path) -> list[str]:
    data = _read(path)
    if isinstance(data, str):
        return [f"mqtt.ca_file: {data}"]
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return [f"mqtt.ca_file: {path} is not a PEM certificate{_holds(data)}; {MADE_BY}"]
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = True  # an old-style root without the extension: OpenSSL decides
    if not is_ca:
        return [
            f"mqtt.ca_file: {path} is not a CA certificate (it is {_cn(cert)!r}'s, with no "
            "CA right): the broker's certificate can never be verified against it; "
            f"{MADE_BY}"
        ]
    return []


def _pair_problems(cert_path: Path, key_path: Path) -> list[str]:
    problems: list[str] = []
    cert_data, key_data = _read(cert_path), _read(key_path)
    cert = key = None
    if isinstance(cert_data, str):
        problems.append(f"mqtt.cert_file: {cert_data}")
    else:
        try:
            cert = x509.load_pem_x509_certificate(cert_data)
        except ValueError:
            problems.append(
                f"mqtt.cert_file: {cert_path} is not a PEM certificate{_holds(cert_data)}; "
                f"{MADE_BY}"
            )
    if isinstance(key_data, str):
        problems.append(f"mqtt.key_file: {key_data}")
    else:
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except TypeError:  # cryptography: "Password was not given but private key is encrypted"
            problems.append(
                f"mqtt.key_file: {key_path} is encrypted and lockerd has no passphrase: use "
                "the unencrypted key, readable by the locker's user only"
            )
        except (ValueError, UnsupportedAlgorithm):
            problems.append(
                f"mqtt.key_file: {key_path} is not a PEM private key{_holds(key_data)}; {MADE_BY}"
            )
    if cert is not None and key is not None:
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            problems.append(
                f"mqtt.cert_file, mqtt.key_file: the key in {key_path} is not the key of the "
                f"certificate in {cert_path} (CN {_cn(cert)!r}): they must be one locker's "
                "device.pem and device-key.pem"
            )
    return problems


def tls_file_problems(ca_file: Path, cert_file: Path, key_file: Path) -> list[str]:
    """Every problem with the link's TLS files, one line each naming the option(s); empty
    when ``ssl`` builds the link's context from them (``linkwire.tls_context``)."""
    problems = _ca_problems(ca_file) + _pair_problems(cert_file, key_file)
    if problems:
        return problems
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        ctx.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)
    except (ssl.SSLError, OSError, ValueError) as err:  # what the checks above did not foresee
        return [
            f"mqtt.ca_file, mqtt.cert_file, mqtt.key_file: OpenSSL cannot use them: "
            f"{tls_failure(err)}"
        ]
    return []


def _no_passphrase() -> bytes:
    # Never OpenSSL's interactive prompt (it would wait on a terminal that is not there).
    return b""


def tls_failure(err: BaseException) -> str:
    """OpenSSL's reason for a failed context, short (``KEY_VALUES_MISMATCH``, ``PEM lib``)."""
    reason = getattr(err, "reason", None)
    return f"{reason}: {err}" if reason else str(err)


def client_cn(cert_file: Path) -> str | None:
    """The CN of the client certificate (None: unreadable, not PEM, or no CN)."""
    try:
        return _cn(x509.load_pem_x509_certificate(cert_file.read_bytes()))
    except (OSError, ValueError):
        return None


def identity_problems(locker_id: str, cert_file: Path) -> list[str]:
    """``locker.id`` against the client certificate's CN, which the broker takes as the
    locker's identity (its ACL lets it write under ``{topic_prefix}/{CN}/`` only)."""
    cn = client_cn(cert_file)
    if cn is None or cn == locker_id:
        return []
    return [
        f"locker.id: {locker_id!r} is not the CN of the client certificate mqtt.cert_file "
        f"({cert_file}: CN {cn!r}); the broker takes the CN as this locker's identity and "
        f"would refuse every publish under {locker_id!r}: set locker.id = {cn!r}, or install "
        f"{locker_id}'s certificate and key"
    ]
