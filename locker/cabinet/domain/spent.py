"""Codes that stopped working, remembered for a while (DESIGN section 6, throttle scope).

Only an entry that matches no live tag is a guess. A code that was just used, whose window
ran out, or whose parcel was cancelled is no guess when typed again: the person has a real
code and needs to hear what happened to it ("already used", "expired"), not "wrong code", and
must not push the device-wide throttle towards a back-off for everyone at the cabinet. So when
a credential stops existing, its tag (never the code) moves to the ``spent`` table with the
reason to give, for ``SPENT_KEEP_S`` after it stopped working; the table's deadline index
forgets it then (``forget``), so the table is bounded by a few days of traffic and a lookup
is one keyed read, whatever the history. Pure, like the machine.
"""

from __future__ import annotations

from locker.cabinet.domain.draft import Draft
from locker.cabinet.domain.model import SPENT_KEEP_S, ParcelStatus, SpentTag, Step

USED = "already_used"
EXPIRED = "expired"


def retire(d: Draft, tag: str, reason: str, now: float, detail: str | None = None) -> None:
    """Drop the live credential ``tag`` and remember why it no longer works."""
    d.drop_credential(tag)
    d.put_spent(tag, SpentTag(reason, now + SPENT_KEEP_S, detail))


def retire_parcel(d: Draft, parcel_id: str, now: float, done: Step | None = None) -> None:
    """The parcel leaves the locker's books (collected, retrieved, its drop-off window over,
    cancelled before deposit): every code bound to it is retired, those of the step just
    ``done`` (a pickup, a retrieval) as already used, the others as expired (detail
    ``cancelled`` for a cancelled parcel's). Then the parcel itself is dropped."""
    parcel = d.parcels.get(parcel_id)
    cancelled = parcel is not None and parcel.status is ParcelStatus.CANCELLED
    for tag in list(d.credentials.group(parcel_id)):
        if d.credentials[tag].step is done:
            retire(d, tag, USED, now)
        else:
            retire(d, tag, EXPIRED, now, "cancelled" if cancelled else None)
    d.drop_parcel(parcel_id)


def retire_cancelled(d: Draft, parcel_id: str, now: float) -> None:
    """A reservation cancelled by command: its codes will never work; say so if typed."""
    for tag in list(d.credentials.group(parcel_id)):
        retire(d, tag, EXPIRED, now, "cancelled")
    d.drop_parcel(parcel_id)


def retire_step(d: Draft, parcel_id: str, step_: Step, now: float) -> None:
    """A step is done (a deposit, whichever credential made it): its codes are used up."""
    for tag in list(d.credentials.group(parcel_id)):
        if d.credentials[tag].step is step_:
            retire(d, tag, USED, now)


def forget(d: Draft, now: float) -> None:
    """Spent tags past their ``forget_at``, found through the deadline index (no scan)."""
    for tag in d.spent.due(now):
        d.drop_spent(tag)
