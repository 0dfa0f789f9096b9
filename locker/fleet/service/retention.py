"""How long the fleet service keeps history: ``[retention] days`` (fleet.toml; 0 keeps all).

Without a limit the database only grows: 500 lockers at 1,000 events a day are 180 million
event rows a year, until the disk is full and ingest stops for every locker. :func:`prune`
deletes what is older than ``days``: events (by ``received_at``), parcel history entries,
reports, closed alarms (an open one stays, however old), deliveries that were sent or gave up,
and command records. What is current is never touched: lockers, streams (each stream's
``contiguous`` is kept, so acks and gap detection go on), parcels, open alarms, pending
deliveries, users.

Each table is walked from its oldest row by its integer id, which grows with insertion and so
with time: a batch of ``BATCH`` rows is read in id order, the old ones deleted, and the walk
stops at the first batch holding a row that is not old yet. A sweep that has caught up reads
one batch per table, whatever the table's size, and needs no extra index; each batch is its
own short transaction, so ingest is never blocked for long. Ids are not strictly in time order
across N workers: a row written late with a lower id is deleted one sweep later.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from sqlalchemy import ColumnElement, Engine, Table, delete, false, select

from locker.fleet.service.db import alarms, commands, deliveries, events, parcel_history, reports

logger = logging.getLogger(__name__)

BATCH: Final = 5000
DAY_S: Final = 86_400


def _walk(engine: Engine, table: Table, at: Any, cutoff: float, keep: ColumnElement[bool]) -> int:
    """Delete the rows of ``table`` older than ``cutoff`` (column ``at``) in id order, except
    those ``keep`` selects; returns how many."""
    deleted, after = 0, None
    while True:
        query = select(table.c.id, at, keep).order_by(table.c.id).limit(BATCH)
        if after is not None:
            query = query.where(table.c.id > after)
        with engine.begin() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return deleted
            old = [r[0] for r in rows if r[1] < cutoff and not r[2]]
            if old:
                conn.execute(delete(table).where(table.c.id.in_(old)))
            deleted += len(old)
        after = rows[-1][0]
        if any(r[1] >= cutoff for r in rows) or len(rows) < BATCH:
            return deleted


def prune(engine: Engine, days: int, now: float) -> dict[str, int]:
    """Delete history older than ``days`` (0: nothing); returns the rows deleted per table."""
    if days <= 0:
        return {}
    cutoff = now - days * DAY_S
    counts = {
        "events": _walk(engine, events, events.c.received_at, cutoff, false()),
        "parcel_history": _walk(engine, parcel_history, parcel_history.c.at, cutoff, false()),
        "reports": _walk(engine, reports, reports.c.at, cutoff, false()),
        "alarms": _walk(engine, alarms, alarms.c.last_at, cutoff, alarms.c.state == "open"),
        "deliveries": _walk(
            engine, deliveries, deliveries.c.next_at, cutoff, deliveries.c.state == "pending"
        ),
    }
    # commands: keyed by their jti (no integer id), few (one per operator action): by time
    with engine.begin() as conn:
        gone = conn.execute(delete(commands).where(commands.c.sent_at < cutoff))
        counts["commands"] = int(gone.rowcount or 0)
    if any(counts.values()):
        shown = ", ".join(f"{n} {table}" for table, n in counts.items() if n)
        logger.info("retention (%d days): deleted %s", days, shown)
    return counts
