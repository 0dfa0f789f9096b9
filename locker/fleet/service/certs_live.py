"""The certificates in use, beside the files: what the broker presents, what this service loaded.

A renewal writes files (``lockerctl fleet renew``); nothing changes on the wire until the
broker and the services restart with them, and a broker whose files live on another host
needs them copied there first. The fleet directory's sweep alone would resolve the alarm at
the renewal while the running broker still presents the old certificate, and the whole fleet
would fall silent on its end with no alarm left. So the sweep also asks the broker: a TLS
handshake to the address this service uses, with its own client certificate, reading the
certificate presented (not verified: an ended certificate must still be read, and nothing but
its date is used; no MQTT is spoken), and it remembers the client certificate this process
loaded at its start. Each becomes an entry of its own only when it differs from its file, so
an up-to-date fleet has no extra entry and a renewal not yet in use keeps an alarm open.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
from pathlib import Path
from typing import Final

from cryptography import x509

from locker.contract import certificates
from locker.fleet.certs import FLEET, FleetCertificate
from locker.fleet.client import TlsFiles

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S: Final = 5.0
HOW_PRESENTED: Final = (
    "the broker still presents this one: copy the renewed broker/server.pem and "
    "server-key.pem to it and restart it"
)
HOW_LOADED: Final = "this service still uses this one: restart lockerctl serve"


def _end(path: Path) -> dt.datetime | None:
    try:
        return certificates.end_of(path.read_bytes())
    except (OSError, ValueError):
        return None


def presented(host: str, port: int, tls: TlsFiles, timeout: float = PROBE_TIMEOUT_S) -> dt.datetime:
    """``notAfter`` of the certificate the broker at ``host:port`` presents.

    :raises OSError: no TLS handshake (refused, timed out, reset; ``ssl.SSLError`` is one).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only its date is read: an ended one must still be read
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))  # the broker requires one
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the broker presented no certificate")
    return x509.load_der_x509_certificate(der).not_valid_after_utc


class LiveCertificates:
    """The entries for the sweep (``__call__``); see the module docstring. ``tls`` None (a
    plain-TCP broker, tests only): nothing to read."""

    def __init__(self, fleet_dir: Path, host: str, port: int, tls: TlsFiles | None) -> None:
        self.fleet_dir, self.host, self.port, self.tls = fleet_dir, host, port, tls
        self.loaded = None if tls is None else _end(tls.cert_file)  # what this process uses
        self._unreachable_said = False

    def _at(self) -> tuple[str, int]:
        return self.host, self.port

    def __call__(self) -> list[FleetCertificate]:
        if self.tls is None:
            return []
        found = []
        client = self.tls.cert_file
        on_disk = _end(client)
        if self.loaded is not None and on_disk != self.loaded:
            name = f"{client.relative_to(self.fleet_dir).as_posix()} (loaded)"
            found.append(FleetCertificate(FLEET, name, self.loaded, HOW_LOADED))
        try:
            served = presented(self.host, self.port, self.tls)
        except OSError as err:  # the broker away: the ingest says so; asked again next round
            if not self._unreachable_said:
                logger.info("certificate sweep: broker %s:%d not reached: %s", *self._at(), err)
            self._unreachable_said = True
            return found
        self._unreachable_said = False
        if served != _end(self.fleet_dir / "broker" / "server.pem"):
            name = f"broker {self.host}:{self.port} (presented)"
            found.append(FleetCertificate(FLEET, name[:64], served, HOW_PRESENTED))
        return found


__all__ = ["LiveCertificates", "presented"]
