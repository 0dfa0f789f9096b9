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

Only the CURRENT epoch of an ONLINE locker is resynced: a ``resync`` to an offline locker
would pile up in its broker session (Mosquitto drops silently past ``max_queued_messages``,
which can crowd out real commands), and one for an old epoch can never be answered (the
locker's store moved on: it resends only its current epoch). An old epoch's gap (the locker's
state names another epoch, or this service has since seen a newer stream of it) is given up
once, in the same compare-and-set way: reported (``gap_given_up``: the seqs that will never
come), the stream's ``contiguous`` moved past what it holds so it stops waiting, and returned
for one WARNING line (:class:`GapGivenUp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from locker.fleet import ledger as receipt
from locker.fleet.ledger import short_epoch
from locker.fleet.service.db import events, lockers, reports, streams


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
        """``LKR-1 (epoch 3f2a9c1e): gap 34-37 for 2.0 s: resync sent``."""
        where = f"{self.locker} (epoch {short_epoch(self.epoch)})"
        return f"{where}: " + receipt.gap_line(self.first, self.last, self.age_s)


@dataclass(frozen=True)
class GapGivenUp:
    """The gap ``first``-``last`` of ``locker``'s old ``epoch`` will never be filled: the
    stream stopped waiting for it (now held up to ``upto``)."""

    locker: str
    epoch: str
    first: int
    last: int
    upto: int

    def line(self) -> str:
        """``LKR-1 (epoch 3f2a9c1e): gap 3-4 given up: ...``."""
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return (
            f"{self.locker} (epoch {short_epoch(self.epoch)}): gap {span} given up: the locker "
            "has moved to another epoch, so these events can never come; the old stream is "
            f"closed at seq {self.upto}"
        )


@dataclass
class Sweep:
    """What one sweep claimed: resyncs to send, gaps given up (each once)."""

    resyncs: list[GapResync]
    given_up: list[GapGivenUp]


def claim(engine: Engine, rule: receipt.GapRule, now: float) -> list[GapResync]:
    """The gap resyncs due at ``now`` (:func:`sweep`'s, dropping what it gave up)."""
    return sweep(engine, rule, now).resyncs


def _old_epoch(conn: Connection, row: Any) -> bool:
    """Whether ``row``'s stream is not its locker's current epoch."""
    if row.current and row.current != row.epoch:
        return True  # the locker's own state names another epoch
    newer = conn.execute(
        select(func.count())
        .select_from(streams)
        .where(streams.c.locker == row.locker, streams.c.first_seen > row.first_seen)
    ).scalar_one()
    return bool(newer)


def _give_up(conn: Connection, row: Any, now: float) -> GapGivenUp | None:
    where = and_(streams.c.locker == row.locker, streams.c.epoch == row.epoch)
    contiguous = int(row.contiguous or 0)
    held = conn.execute(
        select(func.min(events.c.seq), func.max(events.c.seq), func.count()).where(
            and_(events.c.locker == row.locker, events.c.epoch == row.epoch),
            events.c.seq > contiguous,
        )
    ).one()
    upto = int(held[1]) if held[1] is not None else contiguous
    done = conn.execute(
        update(streams)
        .where(where, streams.c.gap_since == row.gap_since)
        .values(contiguous=upto, gap_reported=None, gap_since=None)
    )
    if done.rowcount != 1:
        return None  # another worker did it, or the gap closed meanwhile
    last = int(held[0]) - 1 if held[0] is not None else contiguous
    gone = GapGivenUp(row.locker, row.epoch, contiguous + 1, max(last, contiguous + 1), upto)
    detail = {
        "epoch": row.epoch,
        "missing_from": gone.first,
        "missing_to": gone.last,
        "upto": upto,
        "never_stored": upto - contiguous - int(held[2]),
    }
    conn.execute(
        insert(reports).values(locker=row.locker, kind="gap_given_up", at=now, detail=detail)
    )
    return gone


def sweep(engine: Engine, rule: receipt.GapRule, now: float) -> Sweep:
    """The gap resyncs due at ``now`` (Unix seconds) and the old epochs' gaps given up, each
    claimed and reported in one transaction; see the module docstring.

    :raises sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was claimed.
    """
    due: list[GapResync] = []
    given_up: list[GapGivenUp] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                streams.c.locker,
                streams.c.epoch,
                streams.c.contiguous,
                streams.c.gap_since,
                streams.c.resync_at,
                streams.c.first_seen,
                lockers.c.online,
                lockers.c.epoch.label("current"),
            )
            .select_from(streams.outerjoin(lockers, lockers.c.id == streams.c.locker))
            .where(streams.c.gap_since <= now - rule.wait_s)
        ).all()
        for row in rows:
            if _old_epoch(conn, row):
                if (gone := _give_up(conn, row, now)) is not None:
                    given_up.append(gone)
                continue
            if not row.online or not rule.due(row.gap_since, row.resync_at, now):
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
    return Sweep(due, given_up)
