"""The parcel ledger: each parcel's state and history, built from the locker's events.

Called inside ingest's transaction for every NEW event (``apply_event``) and by the API for
its own actions (``record_api``). An event's state wins only over states set by earlier
events of the same stream (``state_epoch``/``state_seq``), since a shared subscription
delivers one locker's events in no particular order. A parcel first seen in an event (issued
by another tool, or before the API's own row was written) takes its kind, size and drop-off
deadline from ``parcel_reserved`` (``data.kind``, ``data.size``, ``data.dropoff_until``:
what the locker's ``assign`` stored); until that event comes they are unknown (``""``).
``created_by`` stays None for a parcel the fleet service did not issue: it cannot know who
did. Numbers from an event are taken only in the contract's range (uint32 Unix seconds).

States (DESIGN 5 event types): ``reserved`` (assign done), ``deposited``, ``collected``,
``expired``, ``cancelled``, ``retrieval_armed``, ``retrieved``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select, update

from locker.contract import numbers
from locker.fleet.service.db import parcel_history, parcels

KINDS = frozenset({"delivery", "return"})  # DESIGN 5, assign's ``kind``
SIZES = frozenset({"S", "M", "L", "XL"})  # schemas/common.json ``size``

STATE_OF_EVENT = {
    "parcel_reserved": "reserved",
    "parcel_deposited": "deposited",
    "parcel_collected": "collected",
    "pickup_expired": "expired",
    "assignment_cancelled": "cancelled",
    "retrieval_armed": "retrieval_armed",
    "parcel_retrieved": "retrieved",
}


def event_data(ev: dict[str, Any]) -> dict[str, Any]:
    """The event's ``data`` object (``{}`` when absent or not an object)."""
    data = ev.get("data")
    return data if isinstance(data, dict) else {}


def apply_event(
    conn: Connection, locker: str, epoch: str, ev: dict[str, Any], now: float
) -> str | None:
    """Record ``ev`` in its parcel's history and move the parcel's state; returns the parcel."""
    parcel = ev.get("parcel")
    if not isinstance(parcel, str) or not parcel:
        return None
    kind = ev["type"]
    state = STATE_OF_EVENT.get(kind)
    data = event_data(ev)
    until: dict[str, Any] = {}
    pickup_until = numbers.unix_s(data.get("pickup_until"))
    if kind in ("parcel_deposited", "pickup_extended") and pickup_until is not None:
        until["pickup_until"] = pickup_until
    learnt = _reservation(data) if kind == "parcel_reserved" else {}
    row = conn.execute(select(parcels).where(parcels.c.parcel == parcel)).first()
    if row is None:
        conn.execute(
            insert(parcels).values(
                parcel=parcel,
                locker=locker,
                **({"kind": "", "size": ""} | learnt),
                compartment=ev.get("compartment"),
                state=state or "unknown",
                created_at=now,
                updated_at=now,
                state_epoch=epoch,
                state_seq=ev["seq"] if state else None,
                **until,
            )
        )
    else:
        values: dict[str, Any] = {"updated_at": now, **until}
        # fill what is unknown only: a row the API wrote holds what it sent the locker
        values |= {k: v for k, v in learnt.items() if getattr(row, k) in ("", None)}
        newer = row.state_seq is None or row.state_epoch != epoch or ev["seq"] > row.state_seq
        if state is not None and newer:
            values |= {"state": state, "state_epoch": epoch, "state_seq": ev["seq"]}
        if ev.get("compartment") and newer:
            values["compartment"] = ev["compartment"]
        conn.execute(update(parcels).where(parcels.c.parcel == parcel).values(**values))
    conn.execute(
        insert(parcel_history).values(
            parcel=parcel,
            at=now,
            source="event",
            what=kind,
            state=state,
            actor=data.get("kid") if isinstance(data.get("kid"), str) else None,
            seq=ev["seq"],
            detail={
                "locker": locker,
                "epoch": epoch,
                "ts": ev.get("ts"),
                "compartment": ev.get("compartment"),
                "data": data,
            },
        )
    )
    return parcel


def _reservation(data: dict[str, Any]) -> dict[str, Any]:
    """Kind, size and drop-off deadline of a ``parcel_reserved`` event's data, each only
    when valid (a locker's word is checked like any other input)."""
    learnt: dict[str, Any] = {}
    for key, allowed in (("kind", KINDS), ("size", SIZES)):
        value = data.get(key)
        if isinstance(value, str) and value in allowed:  # a list is unhashable: check first
            learnt[key] = value
    if (until := numbers.unix_s(data.get("dropoff_until"))) is not None:
        learnt["dropoff_until"] = until
    return learnt


def record_api(
    conn: Connection,
    parcel: str,
    what: str,
    actor: str,
    now: float,
    detail: dict[str, Any] | None = None,
) -> None:
    """An action taken through the API (issue, cancel, extend, retrieve) in the history."""
    conn.execute(
        insert(parcel_history).values(
            parcel=parcel, at=now, source="api", what=what, actor=actor, detail=detail or {}
        )
    )


def history(conn: Connection, parcel: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(parcel_history)
        .where(parcel_history.c.parcel == parcel)
        .order_by(parcel_history.c.at, parcel_history.c.id)
    ).mappings()
    return [
        {k: r[k] for k in ("at", "source", "what", "state", "actor", "seq", "detail")} for r in rows
    ]
