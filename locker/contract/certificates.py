"""When the fleet's TLS certificates end, and when that is worth saying (DESIGN 5, "Connection").

Every MQTT connection of the fleet is mutual TLS: a locker's client certificate (397 days, the
CA/Browser Forum's TLS maximum, ``locker.fleet.pki.CLIENT_DAYS``), the broker's server
certificate (825 days), the fleet service's and lockerctl's client certificates (397 days) and
the CA (10 years). The day one of them ends, the broker refuses it, or every client refuses
the broker: a locker falls silent, or the whole fleet does. Both ends use this module, so that
``lockerd`` (on the certificate it loads), ``lockerctl fleet certs`` and the fleet service's
alarm (on the fleet directory's) warn from the same day in the same words.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from cryptography import x509

__all__ = ["RENEW_WITHIN", "due", "end_of", "renewal_message"]

RENEW_WITHIN: Final = dt.timedelta(days=30)
"""A certificate ending sooner than this is worth a warning and an alarm: a month leaves time
to renew it and to install the new files (a locker's on site, if it is not reachable)."""


def end_of(pem: bytes) -> dt.datetime:
    """``notAfter`` (UTC, aware) of the first certificate in ``pem``.

    :raises ValueError: not a PEM certificate.
    """
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def due(end: dt.datetime, now: dt.datetime) -> bool:
    """Whether a certificate ending at ``end`` should be renewed now (or has ended)."""
    return end - now <= RENEW_WITHIN


def renewal_message(what: str, end: dt.datetime, now: dt.datetime, how: str) -> str | None:
    """One line for a certificate that is ``due``: which one, when it ends or ended, what then
    stops working and ``how`` to renew it; None while it is not due."""
    if not due(end, now):
        return None
    if end <= now:
        return f"{what}: the certificate ended on {end:%Y-%m-%d %H:%M}Z; {how}"
    days = (end - now).days
    left = "less than a day" if days < 1 else f"{days} day{'s' if days != 1 else ''}"
    return f"{what}: the certificate ends on {end:%Y-%m-%d %H:%M}Z (in {left}); {how}"
