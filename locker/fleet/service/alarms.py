"""Alarms and customer notifications, decided inside ingest's transaction (DESIGN 13).

An alarm is raised once: while it is open, ``alarms.open_key`` (``locker/kind/compartment``)
is unique, so a repeat only bumps ``count`` and ``last_at``. Acknowledging or resolving it
clears the key, so the next occurrence is a new alarm. Each new alarm is queued for delivery
(``deliveries``) to every webhook taking ``alarm`` and to e-mail, in the same transaction.

Raised by events: door_forced, door_jammed, door_left_open, hardware_fault, storage_fault,
clock_suspect, keypad_locked_out, certificate_expiring (the locker's own certificate; the fleet
directory's are swept by ``locker.fleet.service.certs``). Resolved by events: door_closed
(door_left_open of that compartment), hardware_recovered, keypad_unlocked. By state:
``outbox_growing`` at ``outbox_depth >= outbox_growth`` (resolved below half of it). By the
sweep: ``locker_offline`` after ``offline_alarm_s`` without a birth (resolved by the next
birth). By ingest: ``invalid_event`` when an event whose body broke the contract is held as a
placeholder (one alarm per locker while open; its ``count`` says how many); placeholders never
reach the rules below (``on_event``) nor the parcel ledger.

Customer notifications to webhooks taking ``notification``: ``parcel_deposited``,
``pickup_reminder`` (``reminder_before_s`` before ``pickup_until``, once), ``pickup_expired``.
Their idempotency key names the event (locker, epoch, seq) and the parcel's life (a parcel id
issued again is a new parcel: ``…-life2``); the reminder's names the parcel and its life
(``pickup_reminder-P1-life2``), so a redelivery is recognisable and a new life is reminded
again. Each payload carries ``life`` too. By ingest as well: ``foreign_parcel_event`` when a
locker reports on a parcel another locker holds (``parcel_ledger.Foreign``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from locker.fleet import ledger
from locker.fleet.service import delivery, parcel_ledger
from locker.fleet.service.db import alarms, lockers, parcels

EVENT_ALARMS = frozenset(
    {
        "door_forced",
        "door_jammed",
        "door_left_open",
        "hardware_fault",
        "storage_fault",
        "clock_suspect",
        "keypad_locked_out",
        "certificate_expiring",
    }
)
RESOLVED_BY = {
    "door_closed": "door_left_open",
    "hardware_recovered": "hardware_fault",
    "keypad_unlocked": "keypad_locked_out",
}
NOTIFY_EVENTS = {"parcel_deposited": "parcel_deposited", "pickup_expired": "pickup_expired"}


@dataclass(frozen=True)
class Rules:
    """Thresholds and routes (from ``fleet.toml``); ``routes``: channel targets per kind."""

    outbox_growth: int = 500
    offline_alarm_s: int = 300
    reminder_before_s: int = 86400
    resync_interval_s: float = ledger.RESYNC_INTERVAL_S  # at most one resync per stream
    gap_resync_s: float = ledger.GAP_RESYNC_S  # a mid-stream gap this old gets a resync
    routes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @property
    def gap_rule(self) -> ledger.GapRule:
        return ledger.GapRule(wait_s=self.gap_resync_s, interval_s=self.resync_interval_s)


def _open_key(locker: str, kind: str, compartment: str | None) -> str:
    return f"{locker}/{kind}/{compartment or ''}"


def raise_alarm(
    conn: Connection,
    rules: Rules,
    locker: str,
    kind: str,
    compartment: str | None,
    detail: dict[str, Any],
    now: float,
) -> int | None:
    """Open an alarm, or count a repeat of the open one; returns the id of a NEW alarm."""
    key = _open_key(locker, kind, compartment)
    row = conn.execute(select(alarms.c.id).where(alarms.c.open_key == key)).first()
    if row is not None:
        conn.execute(
            update(alarms)
            .where(alarms.c.id == row.id)
            .values(count=alarms.c.count + 1, last_at=now)
        )
        return None
    alarm_id = conn.execute(
        insert(alarms)
        .values(
            locker=locker,
            kind=kind,
            compartment=compartment,
            open_key=key,
            state="open",
            first_at=now,
            last_at=now,
            count=1,
            detail=detail,
        )
        .returning(alarms.c.id)
    ).scalar_one()
    payload = {
        "type": "alarm",
        "alarm": {
            "id": alarm_id,
            "locker": locker,
            "kind": kind,
            "compartment": compartment,
            "at": now,
            "detail": detail,
        },
    }
    delivery.enqueue(conn, rules.routes.get("alarm", []), f"alarm-{alarm_id}", payload, now)
    return int(alarm_id)


def resolve(conn: Connection, locker: str, kind: str, compartment: str | None, now: float) -> None:
    conn.execute(
        update(alarms)
        .where(alarms.c.open_key == _open_key(locker, kind, compartment))
        .values(state="resolved", open_key=None, last_at=now)
    )


def acknowledge(conn: Connection, alarm_id: int, user: str, note: str, now: float) -> bool:
    """Close an open alarm with a note; False when there is no such open alarm."""
    result = conn.execute(
        update(alarms)
        .where(and_(alarms.c.id == alarm_id, alarms.c.state == "open"))
        .values(state="acked", open_key=None, acked_by=user, acked_at=now, note=note)
    )
    return bool(result.rowcount)


def on_event(
    conn: Connection, rules: Rules, locker: str, epoch: str, ev: dict[str, Any], now: float
) -> None:
    kind = ev["type"]
    compartment = ev.get("compartment")
    data = parcel_ledger.event_data(ev)
    if kind in EVENT_ALARMS:
        detail = {"seq": ev["seq"], "epoch": epoch, "ts": ev.get("ts"), "data": data}
        raise_alarm(conn, rules, locker, kind, compartment, detail, now)
    elif kind in RESOLVED_BY:
        target = RESOLVED_BY[kind]
        resolve(conn, locker, target, compartment if target == "door_left_open" else None, now)
    if kind in NOTIFY_EVENTS and ev.get("parcel"):
        life = conn.execute(select(parcels.c.life).where(parcels.c.parcel == ev["parcel"]))
        number = life.scalar() or 1
        payload = {
            "type": NOTIFY_EVENTS[kind],
            "parcel": ev["parcel"],
            "life": number,
            "locker": locker,
            "compartment": compartment,
            "ts": ev.get("ts"),
            "pickup_until": data.get("pickup_until"),
        }
        key = f"{kind}-{locker}-{epoch}-{ev['seq']}-life{number}"
        delivery.enqueue(conn, rules.routes.get("notification", []), key, payload, now)


def on_state(
    conn: Connection, rules: Rules, locker: str, outbox_depth: int | None, now: float
) -> None:
    if outbox_depth is None:
        return
    if outbox_depth >= rules.outbox_growth:
        detail = {"outbox_depth": outbox_depth}
        raise_alarm(conn, rules, locker, "outbox_growing", None, detail, now)
    elif outbox_depth < rules.outbox_growth // 2:
        resolve(conn, locker, "outbox_growing", None, now)


def sweep(conn: Connection, rules: Rules, now: float) -> None:
    """Time-driven rules: lockers offline too long, pickup reminders. Idempotent."""
    late = conn.execute(
        select(lockers.c.id, lockers.c.offline_since).where(
            and_(
                lockers.c.online.is_(False),
                lockers.c.offline_since.is_not(None),
                lockers.c.offline_since < now - rules.offline_alarm_s,
            )
        )
    ).all()
    for row in late:
        detail = {"offline_since": row.offline_since}
        raise_alarm(conn, rules, row.id, "locker_offline", None, detail, now)
    due = conn.execute(
        select(parcels).where(
            and_(
                parcels.c.state == "deposited",
                parcels.c.reminded.is_(False),
                parcels.c.pickup_until.is_not(None),
                parcels.c.pickup_until < now + rules.reminder_before_s,
            )
        )
    ).all()
    for p in due:
        payload = {
            "type": "pickup_reminder",
            "parcel": p.parcel,
            "life": p.life,
            "locker": p.locker,
            "compartment": p.compartment,
            "pickup_until": p.pickup_until,
        }
        key = f"pickup_reminder-{p.parcel}-life{p.life}"  # each life of an id is reminded
        delivery.enqueue(conn, rules.routes.get("notification", []), key, payload, now)
        conn.execute(
            update(parcels)
            .where(parcels.c.parcel == p.parcel, parcels.c.life == p.life)
            .values(reminded=True)
        )
