"""Why a TLS connection to the broker failed, in words an operator can act on.

OpenSSL reports a failed handshake with reason strings (``CERTIFICATE_VERIFY_FAILED`` and
its verify message on our side; a TLS alert such as ``tlsv1 alert unknown ca`` when the
broker refused our certificate, which with TLS 1.3 arrives only after the handshake, as a
read error on paho's thread). Before this module ``lockerctl`` said "broker refused the
connection: Unspecified error" for a client certificate from another CA.

- :func:`cause` maps such a text to a sentence (``None`` when it is no TLS failure).
- :func:`check_identity` checks our own files before blaming the broker: the client
  certificate is issued by the CA in ``ca.pem`` (name and signature), and neither has
  expired. Returns the problems found, each naming its file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

# (text in OpenSSL's message, lowercase) -> what it means; first match wins
_OURS = (  # our side refused the broker's certificate
    ("certificate has expired", "the broker's certificate has expired"),
    ("certificate is not yet valid", "the broker's certificate is not valid yet (check clocks)"),
    ("hostname mismatch", "the broker's certificate does not name the host connected to"),
    ("ip address mismatch", "the broker's certificate does not name the address connected to"),
    ("self-signed certificate", "the broker's certificate is not issued by the fleet's CA "
     "(unknown CA: ca.pem is not the CA the broker's certificate comes from)"),
    ("unable to get local issuer", "the broker's certificate is not issued by the fleet's CA "
     "(unknown CA: ca.pem is not the CA the broker's certificate comes from)"),
    ("certificate revoked", "the broker's certificate is revoked"),
)  # fmt: skip
_THEIRS = (  # the broker refused ours (a TLS alert it sent)
    ("alert unknown ca", "the broker does not trust this client's certificate: unknown CA (it "
     "is not issued by the CA the broker trusts)"),
    ("alert certificate expired", "the broker says this client's certificate has expired"),
    ("alert certificate revoked", "the broker says this client's certificate is revoked"),
    ("alert bad certificate", "the broker refused this client's certificate (bad certificate)"),
    ("alert certificate required", "the broker wants a client certificate and got none"),
    ("alert handshake failure", "the TLS handshake failed (no protocol or cipher in common)"),
)  # fmt: skip


def cause(text: str) -> str | None:
    """A sentence for an OpenSSL error text, or None when it is not a TLS failure."""
    low = text.lower()
    for needle, meaning in (*_THEIRS, *_OURS):
        if needle in low:
            return meaning
    if "certificate verify failed" in low:
        return f"the broker's certificate was refused ({text.rsplit(':', 1)[-1].strip()})"
    return None


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(cert.signature, cert.tbs_certificate_bytes,
                       ec.ECDSA(cert.signature_hash_algorithm))  # fmt: skip
        elif isinstance(key, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(cert.signature, cert.tbs_certificate_bytes, PKCS1v15(),
                       cert.signature_hash_algorithm)  # fmt: skip
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return True  # a key type we do not check: do not claim a mismatch
    except InvalidSignature:
        return False
    return True


def _cn(name: x509.Name) -> str:
    found = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(found[0].value) if found else name.rfc4514_string()


def check_identity(ca_file: Path, cert_file: Path, now: dt.datetime | None = None) -> list[str]:
    """Problems of a client certificate against the fleet's CA file (see the module doc)."""
    when = now or dt.datetime.now(dt.UTC)
    try:
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as err:
        return [f"cannot read the certificates ({err})"]
    problems = []
    for c, what in ((ca, ca_file.name), (cert, cert_file.name)):
        if c.not_valid_after_utc < when:
            problems.append(f"{what} expired on {c.not_valid_after_utc:%Y-%m-%d}")
        elif c.not_valid_before_utc > when:
            problems.append(f"{what} is valid only from {c.not_valid_before_utc:%Y-%m-%d}")
    if cert.issuer != ca.subject or not _issued_by(cert, ca):
        problems.append(
            f"{cert_file.name} is issued by {_cn(cert.issuer)!r}, but {ca_file.name} is "
            f"{_cn(ca.subject)!r}: unknown CA (the client certificate must come from the CA "
            "the broker trusts)"
        )
    return problems


def identity_note(ca_file: Path, cert_file: Path) -> str:
    """:func:`check_identity`'s problems as a tail for an error message ("" for none)."""
    return "".join(f"; {p}" for p in check_identity(ca_file, cert_file))
