"""The fleet service's watch on the fleet directory's certificates (DESIGN 13, alarms).

Every hour (:mod:`locker.fleet.service.housekeeping`) :class:`CertificateSweep` reads
:func:`locker.fleet.certs.inventory` and, in one transaction, raises a
``certificate_expiring`` alarm for each certificate within ``certificates.RENEW_WITHIN`` of
its end (or past it, or unreadable) and resolves the alarm of each one that was renewed. The
alarm's locker is the owner (a locker id, or ``(fleet)`` for the CA, the broker and the server
identities), its "where" the file. A locker reports the certificate it actually loaded too
(its ``certificate_expiring`` event, raised as an alarm with no "where" by
:mod:`locker.fleet.service.alarms`): a file renewed here but never installed on the locker
resolves this one, not that one.

``/metrics`` gets ``fleet_certificate_not_after_seconds{owner,certificate}`` (Unix seconds)
from the last sweep, so a monitoring system can alert on its own threshold.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from locker.fleet.certs import FLEET, FleetCertificate, inventory
from locker.fleet.layout import Fleet
from locker.fleet.service import alarms

logger = logging.getLogger(__name__)

KIND: Final = "certificate_expiring"


def where(cert: FleetCertificate) -> str:
    """The alarm's "where": the file, in the owner's directory for a locker's."""
    return cert.name if cert.owner == FLEET else PurePosixPath(cert.name).name


class CertificateSweep:
    """See the module docstring: ``sweep`` raises and resolves the alarms."""

    def __init__(
        self,
        engine: Engine,
        fleet: Fleet,
        rules: alarms.Rules,
        *,
        live: Callable[[], list[FleetCertificate]] = list,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.engine, self.fleet, self.rules = engine, fleet, rules
        self.live, self.clock = live, clock
        self.last: list[FleetCertificate] = []

    def sweep(self) -> list[str]:
        """Raise and resolve the alarms; returns the warning lines (also logged)."""
        now = self.clock()
        found = inventory(self.fleet) + self.live()  # files, then what is in use (certs_live)
        lines = []
        with self.engine.begin() as conn:
            for cert in found:
                line = cert.message(now)
                if line is None:
                    alarms.resolve(conn, cert.owner, KIND, where(cert), now.timestamp())
                    continue
                lines.append(line)
                detail: dict[str, Any] = {"file": cert.name, "message": line}
                if cert.not_after is not None:
                    detail["not_after"] = int(cert.not_after.timestamp())
                new = alarms.raise_alarm(
                    conn, self.rules, cert.owner, KIND, where(cert), detail, now.timestamp()
                )
                if new is not None:
                    logger.warning("%s: %s", cert.owner, line)
        self.last = found
        return lines


class CertificateCollector(Collector):
    """``fleet_certificate_not_after_seconds`` from the sweep's last inventory."""

    def __init__(self, sweep: CertificateSweep) -> None:
        self.sweep = sweep

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "fleet_certificate_not_after_seconds",
            "When a certificate of the fleet directory ends (Unix seconds)",
            labels=["owner", "certificate"],
        )
        for cert in self.sweep.last:
            if cert.not_after is not None:
                g.add_metric([cert.owner, cert.name], cert.not_after.timestamp())
        yield g
