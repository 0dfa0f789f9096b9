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

States: ``pending`` (the API's assign sent, unanswered: ``begin_life``), then from the
locker's events (DESIGN 5 event types): ``reserved`` (assign done), ``deposited``,
``collected``, ``expired``, ``cancelled`` (cancelled before the deposit: the compartment is
free again), ``awaiting_retrieval`` (cancelled AFTER the deposit: the parcel is still inside,
its pickup code disarmed, until a courier's ``retrieve`` takes it out), ``retrieval_armed``,
``retrieved``; ``rejected`` (the API's assign was refused, by the locker or the broker); and
``withdrawn`` (a pending parcel the fleet gave up: an operator cancelled it while its assign was
unanswered, or the assign's ``exp`` passed so it can never run, ``lapse_pending``). ``FINAL_STATES``
are those in which the locker no longer knows the parcel (or the fleet no longer waits for it):
its id may be issued again.

One locker's word: an event moves a parcel only when it comes from the locker that holds the
parcel's current life (``parcels.locker``); one from any other locker of the fleet (a stolen
certificate, a stale event of an earlier life elsewhere) changes nothing and is returned as a
:class:`Foreign` for ingest to report (``foreign_parcel_event``: a report row, a WARNING line,
an alarm on the sending locker). The only exception is a ``parcel_reserved`` of a parcel id in
a final state: a new life at that locker (issued there by another tool). Order: within the
holding locker, an event is newer than the one that set the state when its epoch was first
seen later (``streams.first_seen``; the epoch's text breaks a tie) or, in the same epoch, its
seq is higher.

Lives: a parcel id may be issued again once its parcel is in a final state. Each issue starts
a new LIFE of the id (``life`` 1, 2...): a clean row (new ``created_at``, no pickup window, no
reminder sent) while the earlier lives' history stays readable, each entry marked with its
life (``history`` gives the current life's, ``earlier_lives`` the others). A
``parcel_reserved`` event that comes newer than a final state starts a new life too (issued
by another tool, lockerctl for one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from locker.contract import numbers
from locker.contract.commands import CLOCK_SKEW_S
from locker.fleet.commands import DEFAULT_LONG_TTL_S
from locker.fleet.service.db import parcel_history, parcels, streams

KINDS = frozenset({"delivery", "return"})  # DESIGN 5, assign's ``kind``
SIZES = frozenset({"S", "M", "L", "XL"})  # schemas/common.json ``size``

PENDING = "pending"  # an assign sent but unanswered: it may still run (see actions)
WITHDRAWN = "withdrawn"  # pending, given up by the fleet: cancelled, or its assign expired
FINAL_STATES = frozenset({"collected", "retrieved", "cancelled", "rejected", WITHDRAWN})
# An assign is refused by the locker once its exp has passed (DESIGN 5); a locker clock up to
# CLOCK_SKEW_S behind ours still takes it that much longer.
ASSIGN_RUNS_FOR_S = DEFAULT_LONG_TTL_S + CLOCK_SKEW_S
AWAITING_RETRIEVAL = "awaiting_retrieval"  # cancelled after the deposit: still inside

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


def _event_state(kind: str, data: dict[str, Any]) -> str | None:
    if kind == "assignment_cancelled" and data.get("after_deposit") is True:
        return AWAITING_RETRIEVAL  # the locker keeps it until parcel_retrieved
    return STATE_OF_EVENT.get(kind)


@dataclass(frozen=True)
class Foreign:
    """An event of ``locker`` about ``parcel``, whose current life is held by ``holder``: it
    changed nothing (see the module docstring)."""

    parcel: str
    holder: str
    state: str

    def detail(self, epoch: str, ev: dict[str, Any]) -> dict[str, Any]:
        """The report's detail: ``{"parcel","holder","state","epoch","seq","type"}``."""
        return {
            "parcel": self.parcel,
            "holder": self.holder,
            "state": self.state,
            "epoch": epoch,
            "seq": ev["seq"],
            "type": ev["type"],
        }


def _order(conn: Connection, locker: str, epoch: str | None, seq: int) -> tuple[float, str, int]:
    """Where ``(epoch, seq)`` stands in ``locker``'s history: epochs by when this service first
    saw them, then seqs (an epoch never seen sorts first)."""
    first = conn.execute(
        select(streams.c.first_seen).where(streams.c.locker == locker, streams.c.epoch == epoch)
    ).scalar()
    return (float(first) if first is not None else float("-inf"), epoch or "", seq)


def _newer(conn: Connection, row: Any, epoch: str, seq: int) -> bool:
    """Whether the event ``(epoch, seq)`` of the parcel's own locker is newer than the one
    that set ``row.state`` (none: an API action set it, any event is newer)."""
    if row.state_seq is None or row.state_epoch is None:
        return True
    if row.state_epoch == epoch:
        return bool(seq > row.state_seq)
    mine = _order(conn, row.locker, epoch, seq)
    return mine > _order(conn, row.locker, row.state_epoch, int(row.state_seq))


def apply_event(
    conn: Connection, locker: str, epoch: str, ev: dict[str, Any], now: float
) -> Foreign | None:
    """Record ``ev`` in its parcel's history and move the parcel's state; or, for an event of
    a locker that does not hold the parcel, nothing: returns the :class:`Foreign` to report."""
    parcel = ev.get("parcel")
    if not isinstance(parcel, str) or not parcel:
        return None
    kind = ev["type"]
    data = event_data(ev)
    state = _event_state(kind, data)
    until: dict[str, Any] = {}
    pickup_until = numbers.unix_s(data.get("pickup_until"))
    if kind in ("parcel_deposited", "pickup_extended") and pickup_until is not None:
        until["pickup_until"] = pickup_until
    learnt = _reservation(data) if kind == "parcel_reserved" else {}
    row = conn.execute(select(parcels).where(parcels.c.parcel == parcel)).first()
    life = 1
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
        life = row.life
        values: dict[str, Any] = {"updated_at": now, **until}
        relife = kind == "parcel_reserved" and row.state in FINAL_STATES
        if row.locker != locker and not relife:
            return Foreign(parcel, str(row.locker), str(row.state))
        # a withdrawn assign that ran after all (the cancel behind it follows): the same life
        late = row.state == WITHDRAWN and row.locker == locker
        newer = row.locker != locker or _newer(conn, row, epoch, ev["seq"])
        if relife and newer and not late:
            # reserved again by someone other than this service's API: a new life
            life = row.life + 1
            values |= _clean(life, now) | {"locker": locker, "created_by": None} | learnt
        else:
            # fill what is unknown only: a row the API wrote holds what it sent the locker
            values |= {k: v for k, v in learnt.items() if getattr(row, k) in ("", None)}
        if state is not None and newer:
            values |= {"state": state, "state_epoch": epoch, "state_seq": ev["seq"]}
        if ev.get("compartment") and newer:
            values["compartment"] = ev["compartment"]
        conn.execute(update(parcels).where(parcels.c.parcel == parcel).values(**values))
    conn.execute(
        insert(parcel_history).values(
            parcel=parcel,
            life=life,
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
    return None


def _clean(life: int, now: float) -> dict[str, Any]:
    """What a new life of a parcel id starts with: nothing of the earlier life's."""
    return {
        "life": life,
        "kind": "",
        "size": "",
        "compartment": None,
        "created_at": now,
        "dropoff_until": None,
        "pickup_until": None,
        "token_id": None,
        "token_nb": None,
        "token_exp": None,
        "reminded": False,
        "state_epoch": None,
        "state_seq": None,
    }


@dataclass(frozen=True)
class Life:
    """What the API's issue knows of a parcel before it sends the assign."""

    parcel: str
    locker: str
    kind: str
    size: str
    user: str
    dropoff_until: int
    token_id: str  # hex: with token_nb/exp the QR token is re-minted byte-identical
    token_nb: int
    token_exp: int


def begin_life(conn: Connection, life: Life, now: float) -> tuple[str, str] | None:
    """Record ``life.parcel`` as ``pending`` before its assign is sent: a new row, or a new
    life of a parcel id whose earlier parcel is in a final state. Returns None when done, or
    ``(state, locker)`` of the parcel that holds the id (not final: nothing written)."""
    row = conn.execute(
        select(parcels.c.state, parcels.c.locker, parcels.c.life).where(
            parcels.c.parcel == life.parcel
        )
    ).first()
    if row is not None and row.state not in FINAL_STATES:
        return str(row.state), str(row.locker)
    number = 1 if row is None else row.life + 1
    values = _clean(number, now) | {
        k: v for k, v in asdict(life).items() if k not in ("parcel", "user")
    }
    values |= {"state": PENDING, "created_by": life.user, "updated_at": now}
    if row is None:
        conn.execute(insert(parcels).values(parcel=life.parcel, **values))
    else:
        conn.execute(update(parcels).where(parcels.c.parcel == life.parcel).values(**values))
    record_api(
        conn, life.parcel, "issued", life.user, now, {"locker": life.locker, "kind": life.kind}
    )
    return None


def reserved(conn: Connection, parcel: str, compartment: str | None, now: float) -> None:
    """The assign's reply said done: ``reserved`` unless an event moved the parcel already."""
    conn.execute(
        update(parcels)
        .where(parcels.c.parcel == parcel, parcels.c.state == PENDING)
        .values(state="reserved", updated_at=now)
    )
    if compartment is not None:
        conn.execute(
            update(parcels)
            .where(parcels.c.parcel == parcel, parcels.c.compartment.is_(None))
            .values(compartment=compartment)
        )


def rejected(conn: Connection, parcel: str, actor: str, code: str, now: float) -> None:
    """The assign was refused for sure (its code): the pending parcel will never run."""
    conn.execute(
        update(parcels)
        .where(parcels.c.parcel == parcel, parcels.c.state == PENDING)
        .values(state="rejected", updated_at=now)
    )
    record_api(conn, parcel, "assign rejected", actor, now, {"code": code})


def withdrawn(conn: Connection, parcel: str, actor: str, now: float) -> None:
    """A cancel found no parcel at the locker after an unanswered assign: it never ran."""
    conn.execute(
        update(parcels)
        .where(parcels.c.parcel == parcel, parcels.c.state.in_((PENDING, WITHDRAWN)))
        .values(state="cancelled", updated_at=now)
    )
    record_api(conn, parcel, "cancelled", actor, now, {"detail": "assign never ran"})


def withdraw(conn: Connection, parcel: str, actor: str, now: float) -> bool:
    """An operator cancels a PENDING parcel: the fleet gives it up at once (``withdrawn``, its
    id free for another locker) while the cancel goes to the locker behind the assign.
    Returns whether the parcel was pending (else nothing is written)."""
    done = conn.execute(
        update(parcels)
        .where(parcels.c.parcel == parcel, parcels.c.state == PENDING)
        .values(state=WITHDRAWN, updated_at=now)
    )
    if done.rowcount != 1:
        return False
    record_api(conn, parcel, "withdrawn", actor, now, {"detail": "cancelled while pending"})
    return True


def lapse_pending(conn: Connection, now: float) -> list[tuple[str, str]]:
    """Pending parcels whose assign can no longer run (its ``exp``, at most
    ``ASSIGN_RUNS_FOR_S`` after the parcel was recorded, has passed) become ``withdrawn``;
    returns their ``(parcel, locker)``. Idempotent: a parcel lapses once."""
    rows = conn.execute(
        select(parcels.c.parcel, parcels.c.locker).where(
            parcels.c.state == PENDING, parcels.c.created_at < now - ASSIGN_RUNS_FOR_S
        )
    ).all()
    lapsed = []
    for row in rows:
        done = conn.execute(
            update(parcels)
            .where(parcels.c.parcel == row.parcel, parcels.c.state == PENDING)
            .values(state=WITHDRAWN, updated_at=now)
        )
        if done.rowcount == 1:
            detail = {"locker": row.locker, "detail": "the assign expired unanswered"}
            record_api(conn, row.parcel, "withdrawn", "fleet", now, detail)
            lapsed.append((str(row.parcel), str(row.locker)))
    return lapsed


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
    """An action taken through the API (issue, cancel, extend, retrieve) in the history of
    the parcel's current life."""
    life = conn.execute(select(parcels.c.life).where(parcels.c.parcel == parcel)).scalar()
    conn.execute(
        insert(parcel_history).values(
            parcel=parcel,
            life=life or 1,
            at=now,
            source="api",
            what=what,
            actor=actor,
            detail=detail or {},
        )
    )


_ENTRY = ("at", "source", "what", "state", "actor", "seq", "detail")


def history(conn: Connection, parcel: str) -> list[dict[str, Any]]:
    """The current life's history, oldest first:
    ``[{"at","source","what","state","actor","seq","detail"}]``."""
    life = conn.execute(select(parcels.c.life).where(parcels.c.parcel == parcel)).scalar()
    return [e for n, e in _entries(conn, parcel) if n == (life or 1)]


def earlier_lives(conn: Connection, parcel: str) -> list[dict[str, Any]]:
    """Earlier lives of the parcel id, oldest first: ``[{"life", "history": [...]}]``."""
    life = conn.execute(select(parcels.c.life).where(parcels.c.parcel == parcel)).scalar()
    lives: dict[int, list[dict[str, Any]]] = {}
    for n, entry in _entries(conn, parcel):
        if n != (life or 1):
            lives.setdefault(n, []).append(entry)
    return [{"life": n, "history": lives[n]} for n in sorted(lives)]


def _entries(conn: Connection, parcel: str) -> list[tuple[int, dict[str, Any]]]:
    rows = conn.execute(
        select(parcel_history)
        .where(parcel_history.c.parcel == parcel)
        .order_by(parcel_history.c.at, parcel_history.c.id)
    ).mappings()
    return [(r["life"], {k: r[k] for k in _ENTRY}) for r in rows]
