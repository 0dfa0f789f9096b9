"""Every TLS certificate of a fleet directory, when it ends, and renewing the fleet's own.

A fleet runs on certificates that end (``locker.fleet.pki``): the CA (10 years), the broker's
server certificate (825 days), the server identities' client certificates ``clients/*.pem``
(397 days: the fleet service and lockerctl) and each locker's ``device.pem`` (397 days). When
the broker's or a server identity's ends, the whole fleet stops being heard at once, so
:func:`inventory` lists them all for ``lockerctl fleet certs`` and for the fleet service's
``certificate_expiring`` alarm (``locker.fleet.service.certs``), and :func:`renew_fleet`
renews the broker's and the server identities' (``lockerctl fleet renew``); a locker's is
renewed with ``lockerctl locker renew``. When to warn: ``locker.contract.certificates``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from locker.contract import certificates
from locker.fleet.keys import ProvisionError, write_private, write_public
from locker.fleet.layout import Fleet
from locker.fleet.pki import (
    CLIENT_DAYS,
    SERVER_DAYS,
    PemPair,
    make_client_cert,
    make_server_cert,
)

__all__ = [
    "FLEET",
    "SERVER_DAYS",
    "FleetCertificate",
    "Renewal",
    "inventory",
    "load_ca",
    "renew_fleet",
]

FLEET: Final = "(fleet)"
"""The owner of the fleet's own certificates (no locker id can be written so: LOCKER_ID_RE)."""

HOW_CA: Final = (
    "a new CA means new certificates for the broker, the servers and every locker: plan it "
    "(README, Certificates)"
)
HOW_FLEET: Final = "run lockerctl fleet renew, then restart the broker and lockerctl serve"
NOT_HERE: Final = "not in this fleet directory (the locker reports its own certificate's end)"


@dataclass(frozen=True)
class FleetCertificate:
    """One certificate file: ``owner`` (a locker id or ``FLEET``), ``name`` (its path in
    the fleet directory, POSIX), ``not_after`` (None: unreadable, with ``problem``), and
    ``how`` to renew it."""

    owner: str
    name: str
    not_after: dt.datetime | None
    how: str
    problem: str | None = None
    missing: bool = False  # a locker's device.pem not kept here (only the locker has it)

    def message(self, now: dt.datetime) -> str | None:
        """The warning line for this certificate now, or None (not due, or not kept here:
        the locker reports its own, ``certificate_expiring``)."""
        if self.missing:
            return None
        if self.not_after is None:
            return f"{self.name}: {self.problem}"
        return certificates.renewal_message(self.name, self.not_after, now, self.how)


def _entry(root: Path, path: Path, owner: str, how: str) -> FleetCertificate:
    name = path.relative_to(root).as_posix()
    try:
        end = certificates.end_of(path.read_bytes())
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else "not a certificate"
        return FleetCertificate(owner, name, None, how, f"cannot be read: {why}")
    return FleetCertificate(owner, name, end, how)


def inventory(fleet: Fleet) -> list[FleetCertificate]:
    """The CA, the broker's certificate, every server identity's and every locker's that is
    not revoked, in that order. Never raises for a file that cannot be read (``problem``)."""
    root = fleet.dir
    found = [_entry(root, fleet.ca_file, FLEET, HOW_CA)]
    found.append(_entry(root, root / "broker" / "server.pem", FLEET, HOW_FLEET))
    clients = root / "clients"
    for pem in sorted(clients.glob("*.pem")) if clients.is_dir() else ():
        if not pem.name.endswith("-key.pem"):
            found.append(_entry(root, pem, FLEET, HOW_FLEET))
    for locker_id in fleet.lockers():
        d = fleet.locker_dir(locker_id)
        if (d / "REVOKED").exists():
            continue
        how = f"run lockerctl locker renew {root} {locker_id} and install the new files on it"
        pem = d / "device.pem"
        if not pem.exists():  # listed, never alarmed: the locker reports its own
            name = pem.relative_to(root).as_posix()
            found.append(FleetCertificate(locker_id, name, None, how, NOT_HERE, missing=True))
            continue
        found.append(_entry(root, pem, locker_id, how))
    return found


def _put_in_place(pairs: list[tuple[PemPair, Path, Path]]) -> None:
    """All or nothing, as far as files allow: every new key and certificate is written beside
    its target first (``.new``); only when all are written are they moved into place, each
    key before its certificate. A failure while writing removes every ``.new`` and changes
    nothing."""
    staged: list[tuple[Path, Path]] = []
    try:
        for pair, key_path, cert_path in pairs:
            for data, path, private in (
                (pair.key_pem, key_path, True),
                (pair.cert_pem, cert_path, False),
            ):
                tmp = path.with_name(path.name + ".new")
                staged.append((tmp, path))
                (write_private if private else write_public)(tmp, data)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def _server_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


@dataclass(frozen=True)
class Renewal:
    """What ``renew_fleet`` did: files ``renewed`` and files ``skipped`` (with why), paths
    relative to the fleet directory."""

    renewed: list[str]
    skipped: list[str]


CA_MISSING: Final = (
    "run it where ca-key.pem lives (the fleet directory lockers are provisioned from; a "
    "server's copy should not hold it)"
)


def load_ca(fleet: Fleet) -> PemPair:
    """The fleet's CA key and certificate, parsed.

    :raises ProvisionError: either cannot be read (and where to run instead).
    """
    try:
        ca = PemPair.load(fleet.ca_key_file, fleet.ca_file)
        ca.private_key()  # parse now: a broken CA must fail before anything is written
        ca.cert  # noqa: B018
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ProvisionError(f"the fleet's CA cannot be read ({why}): {CA_MISSING}") from err
    return ca


def _identity(pem: Path) -> str | None:
    """Why ``clients/NAME.pem`` is not a server identity to renew, or None when it is: its key
    ``NAME-key.pem`` beside it, and, when the file still reads as a certificate, CN ``NAME``
    (an unreadable one with its key is renewed: that repairs it)."""
    if not pem.with_name(f"{pem.stem}-key.pem").exists():
        return f"no {pem.stem}-key.pem beside it"
    try:
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
    except (OSError, ValueError):
        return None
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if [str(c.value) for c in cns] != [pem.stem]:
        return f"its CN is not {pem.stem!r}"
    return None


def renew_fleet(fleet: Fleet, days: int = SERVER_DAYS, client_days: int = CLIENT_DAYS) -> Renewal:
    """New keys and certificates for the broker (``days``; the same host names and addresses
    as its current certificate) and for every server identity in ``clients/``
    (``client_days``; a file that is not one is skipped and said), all or none
    (:func:`_put_in_place`). The old certificates stay valid until they end, so nothing stops
    working before the broker and the services restart with the new ones.

    :raises ProvisionError: the CA or the broker's current certificate cannot be read.
    """
    ca = load_ca(fleet)
    server = fleet.dir / "broker" / "server.pem"
    try:
        names, ips = _server_names(x509.load_pem_x509_certificate(server.read_bytes()))
    except (OSError, ValueError) as err:
        raise ProvisionError(f"broker/server.pem cannot be read: {err}") from err
    if not names and not ips:
        names = [fleet.broker_host]
    pairs = [
        (
            make_server_cert(ca, names, ips, days),
            fleet.dir / "broker" / "server-key.pem",
            server,
        )
    ]
    skipped = []
    clients = fleet.dir / "clients"
    for pem in sorted(clients.glob("*.pem")) if clients.is_dir() else ():
        if pem.name.endswith("-key.pem"):
            continue
        name = pem.relative_to(fleet.dir).as_posix()
        if (why := _identity(pem)) is not None:
            skipped.append(f"{name}: {why}")
            continue
        cert, key = fleet.client_cert(pem.stem)
        pairs.append((make_client_cert(ca, pem.stem, client_days), key, cert))
    _put_in_place(pairs)
    return Renewal([cert.relative_to(fleet.dir).as_posix() for _, _, cert in pairs], skipped)
