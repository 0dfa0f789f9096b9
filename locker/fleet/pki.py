"""The fleet's X.509 PKI with ``cryptography``: a fleet CA, the broker's server certificate
(SAN DNS + IP, serverAuth), client certificates (clientAuth, CN = locker id = MQTT username =
client id) and the certificate revocation list the broker loads (Mosquitto ``crlfile``).

Keys are ECDSA P-256, which every OpenSSL 3 / Mosquitto / Python ``ssl`` build accepts.
Certificates start one day before they are issued (``CLOCK_SKEW``), so a locker whose clock is
hours behind (no RTC, before NTP) can still connect.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from locker.fleet.keys import (
    ProvisionArgumentError,
    ProvisionError,
    read_file,
    write_private,
    write_public,
)

CN_MAX_CHARS: Final = 64  # RFC 5280 appendix A, ub-common-name
LOCKER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A locker id is one MQTT topic level, a certificate CN and a file name: keep it plain."""

CLOCK_SKEW = dt.timedelta(days=1)
"""Certificates and CRLs start this long before they are made: a Pi without RTC may boot with
a clock hours behind until NTP answers, and must still be able to connect to report it."""

CLIENT_DAYS = 397
"""Validity of a locker's certificate (the CA/Browser Forum's TLS maximum); renew it before it
ends with ``lockerctl locker renew`` (README, "Certificates")."""

SERVER_DAYS = 825
"""Validity of the broker's certificate (the CA/Browser Forum's maximum when it was written);
renew it, and the server identities' certificates, with ``lockerctl fleet renew``."""

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
        return cls(read_file(key_path), read_file(cert_path))


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
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # A CA signs certificates and CRLs; a leaf signs (ECDSA) and agrees keys (ECDHE).
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(cn: str, days: int = 3650) -> PemPair:
    """A self-signed fleet CA (P-256), allowed to sign end-entity certificates only."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        _builder(cn, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
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
            _key_usage(ca=False),
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


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address when it is one (``[::1]`` too), else None."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def make_server_cert(
    ca: PemPair, hostnames: list[str], ips: Sequence[str] = (), days: int = SERVER_DAYS
) -> PemPair:
    """The broker's certificate: SAN with every host name and IP clients will connect to.

    A "host name" that is an IP address literal goes into an IP SAN, never a DNS one: TLS
    clients match an address they connect to only against IP SANs (RFC 6125 section 3.1.3.2;
    Python's ssl says "IP address mismatch" otherwise).

    :raises ProvisionArgumentError: no name at all, or an entry of ``ips`` that is not an IP.
    """
    if not hostnames and not ips:
        raise ProvisionArgumentError("a server certificate needs at least one host name or IP")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as err:
        raise ProvisionArgumentError(f"bad IP address for the server certificate: {err}") from err
    names: list[str] = []
    for host in hostnames:
        literal = _ip_literal(host)
        if literal is None:
            names.append(host)
        else:
            addresses.append(literal)
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in dict.fromkeys(names)]
    san += [x509.IPAddress(a) for a in dict.fromkeys(addresses)]
    cn = hostnames[0] if hostnames else str(addresses[0])
    if len(cn) > CN_MAX_CHARS:
        # A CN holds at most 64 characters (RFC 5280 ub-common-name) and a host name up to
        # 253; clients check the SAN, not the CN, when there is one (RFC 6125 section 6.4.4).
        cn = "MQTT broker"
    return _leaf(ca, cn, ExtendedKeyUsageOID.SERVER_AUTH, days, san)


def make_client_cert(ca: PemPair, cn: str, days: int = CLIENT_DAYS) -> PemPair:
    """A client certificate; the broker takes its CN as username and client id."""
    if not LOCKER_ID_RE.fullmatch(cn):
        raise ProvisionError(
            f"client certificate CN {cn!r} is not a valid id ({LOCKER_ID_RE.pattern})"
        )
    # Mosquitto reads the CN; the URI SAN is for verifiers that want one (RFC 5280 4.2.1.6).
    san = [x509.UniformResourceIdentifier(f"urn:parcel-locker:client:{cn}")]
    return _leaf(ca, cn, ExtendedKeyUsageOID.CLIENT_AUTH, days, san)


# --- revocation -----------------------------------------------------------------------------


def serial_of(cert_pem: bytes) -> int:
    """The serial number of a PEM certificate."""
    return int(x509.load_pem_x509_certificate(cert_pem).serial_number)


def make_crl(ca: PemPair, revoked: Iterable[int] = ()) -> bytes:
    """A PEM CRL of the fleet CA listing ``revoked`` serial numbers.

    OpenSSL refuses every client once a CRL's nextUpdate has passed, so the list is valid as
    long as the CA itself: it is re-signed whenever a certificate is revoked.
    """
    ca_cert = ca.cert
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
    )
    for serial in sorted(set(revoked)):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.private_key(), hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def revoked_serials(crl_pem: bytes) -> set[int]:
    """The serial numbers a PEM CRL revokes."""
    return {int(r.serial_number) for r in x509.load_pem_x509_crl(crl_pem)}
