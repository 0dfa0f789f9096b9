"""The gap sweep: a ``resync`` for a mid-stream gap that lasts (DESIGN 5 ``resync``, 13).

A gap (events held past a missing seq) younger than ``gap_resync_s`` is normal: N workers
sharing a subscription store one locker's events out of order. One that lasts is loss (e.g.
Mosquitto did not queue shared-subscription messages for the service's offline persistent
session across a broker restart), and the locker would resend only after its ack time-out
(``mqtt.ack_timeout_s``: 30 s by default, minutes on some sites). ``claim`` finds the streams
whose gap has lasted (``streams.gap_since``, set by ingest when the gap opened) and that had no
``resync`` within ``resync_interval_s`` (``ledger.GapRule``, the rule ``lockerctl watch``
follows too), claims each with a compare-and-set on ``streams.resync_at`` so that of N workers
sweeping at once exactly one sends it, and reports it (``gap_resync`` in ``reports``). The
caller sends the signed ``resync`` off its ingest thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, and_, func, insert, select, update

from locker.fleet import ledger as receipt
from locker.fleet.service.db import events, reports, streams


@dataclass(frozen=True)
class GapResync:
    """A ``resync`` due to ``locker`` for its stream ``epoch``: seqs ``first`` to ``last``
    (None: not known) have been missing for ``age_s`` seconds."""

    locker: str
    epoch: str
    first: int
    last: int | None
    age_s: float

    def line(self) -> str:
        """``LKR-1: gap 34-37 for 2.0 s: resync sent``."""
        return f"{self.locker}: " + receipt.gap_line(self.first, self.last, self.age_s)


def claim(engine: Engine, rule: receipt.GapRule, now: float) -> list[GapResync]:
    """The gap resyncs due at ``now`` (Unix seconds), each claimed and reported in one
    transaction; see the module docstring.

    :raises sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was claimed.
    """
    due: list[GapResync] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                streams.c.locker,
                streams.c.epoch,
                streams.c.contiguous,
                streams.c.gap_since,
                streams.c.resync_at,
            ).where(streams.c.gap_since <= now - rule.wait_s)
        ).all()
        for row in rows:
            if not rule.due(row.gap_since, row.resync_at, now):
                continue
            where = and_(streams.c.locker == row.locker, streams.c.epoch == row.epoch)
            unchanged = and_(
                streams.c.gap_since == row.gap_since,
                streams.c.resync_at.is_(None)
                if row.resync_at is None
                else streams.c.resync_at == row.resync_at,
            )
            claimed = conn.execute(update(streams).where(where, unchanged).values(resync_at=now))
            if claimed.rowcount != 1:
                continue  # another worker claimed it, or the gap closed meanwhile
            contiguous = int(row.contiguous or 0)
            held = conn.execute(
                select(func.min(events.c.seq)).where(
                    and_(events.c.locker == row.locker, events.c.epoch == row.epoch),
                    events.c.seq > contiguous,
                )
            ).scalar()
            gap = GapResync(
                row.locker,
                row.epoch,
                contiguous + 1,
                None if held is None else int(held) - 1,
                now - row.gap_since,
            )
            detail = {
                "epoch": gap.epoch,
                "missing_from": gap.first,
                "missing_to": gap.last,
                "age_s": round(gap.age_s, 3),
            }
            conn.execute(
                insert(reports).values(locker=gap.locker, kind="gap_resync", at=now, detail=detail)
            )
            due.append(gap)
    return due
