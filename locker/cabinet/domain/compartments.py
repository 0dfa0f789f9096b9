"""Compartment helpers shared by the keypad/scanner flows and remote commands: best fit,
starting an unlock, taking a compartment in or out of service. Pure, like the machine."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from locker.cabinet.domain.draft import Draft, UnlockAction
from locker.cabinet.domain.model import SIZE_RANK, Compartment, Unlock
from locker.cabinet.domain.rules import Rules
from locker.ports import DoorState

JAM_WINDOW_S = 120.0


def start_unlock(d: Draft, comp: Compartment, unlock: Unlock, now: float) -> None:
    """Record the unlock as pending (or as an open session when the door already stands open)
    and queue the pulse."""
    pulses = (*(t for t in comp.pulses if t > now - JAM_WINDOW_S), now)
    if comp.door is DoorState.OPEN:
        d.update_compartment(comp.id, session=unlock, pulses=pulses)
    else:
        d.update_compartment(comp.id, pending=unlock, pulses=pulses)
    d.act(UnlockAction(comp.id))


def pulse_again(d: Draft, comp: Compartment, now: float) -> None:
    """Pulse a lock whose earlier unlock is still pending on an untrusted sensor (a valid
    open pulses whatever the sensor reads); the pending unlock stays as it is."""
    pulses = (*(t for t in comp.pulses if t > now - JAM_WINDOW_S), now)
    d.update_compartment(comp.id, pulses=pulses)
    d.act(UnlockAction(comp.id))


def distrust_sensor(d: Draft, comp: Compartment, detail: str) -> Compartment:
    """The door sensor cannot be believed: report it once, make the door UNKNOWN and end the
    open session it holds (its outcome is unknown: never re-armed, never completed)."""
    session = comp.session
    comp = d.update_compartment(
        comp.id,
        door=DoorState.UNKNOWN,
        sensor_fault=True,
        session=None,
        open_since=None,
        left_open_next=None,
    )
    d.emit(
        "hardware_fault", comp.id, device=f"door:{comp.id}", detail=detail, compartments=[comp.id]
    )
    if session is not None:
        d.emit(
            "unlock_outcome_unknown",
            comp.id,
            session.parcel,
            purpose=str(session.purpose),
            door=str(DoorState.UNKNOWN),
        )
    return comp


def best_fit(
    compartments: Mapping[str, Compartment],
    size: str,
    exclude: str | None = None,
    only: Collection[str] | None = None,
) -> Compartment | None:
    """The smallest free, in-service compartment whose size fits; config order breaks ties.
    ``only``: choose among these compartments alone (the accessible ones)."""
    fitting = [
        c
        for c in compartments.values()
        if (only is None or c.id in only)
        and c.parcel is None
        and c.in_service
        and not c.busy
        and c.door is not DoorState.UNKNOWN
        and c.id != exclude
        and SIZE_RANK[c.size] >= SIZE_RANK[size]
    ]
    return min(fitting, key=lambda c: SIZE_RANK[c.size], default=None)


def set_service(d: Draft, cid: str, in_service: bool, reason: str) -> None:
    if d.compartments[cid].in_service == in_service:
        return
    d.update_compartment(cid, in_service=in_service, service_reason="" if in_service else reason)
    kind = "compartment_in_service" if in_service else "compartment_out_of_service"
    d.emit(kind, cid, d.compartments[cid].parcel, reason=reason)


def reservation_target(d: Draft, cid: str, parcel_id: str, rules: Rules) -> Compartment | None:
    """Where a reserved parcel in ``cid`` would go (its door jammed, or it is taken out of
    service): the best free fitting compartment, within reach if ``cid`` was accessible and
    an accessible one is free. None when there is nowhere to go."""
    size = d.parcels[parcel_id].size
    return (
        best_fit(d.compartments, size, exclude=cid, only=rules.accessible)
        if cid in rules.accessible
        else None
    ) or best_fit(d.compartments, size, exclude=cid)


def move_reservation(d: Draft, cid: str, parcel_id: str, target: Compartment) -> None:
    """Move a reserved parcel out of ``cid`` into ``target`` (``reservation_target``);
    reported as ``parcel_reserved`` with ``moved_from``. Its codes then open ``target``."""
    parcel = d.parcels[parcel_id]
    d.update_compartment(cid, parcel=None)
    d.update_compartment(target.id, parcel=parcel.id)
    d.update_parcel(parcel.id, compartment=target.id)
    d.emit(
        "parcel_reserved",
        target.id,
        parcel.id,
        kind=parcel.kind,
        size=parcel.size,
        moved_from=cid,
        dropoff_until=int(parcel.dropoff_until),
    )
