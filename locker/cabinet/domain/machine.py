"""The locker state machine: pure functions from (state, input, time) to a transition.

``step`` takes the current ``LockerState``, one input (a hardware event, a tick, a verified
command...) and the time, and returns the new state, the events to append to the outbox and the
actions to carry out once both are committed (pulse a lock, show feedback, reply). It does no
I/O and never reads a clock, so every flow is tested with plain values.

Flows (DESIGN sections 5 and 6): assign -> drop-off unlock -> door opened -> door closed =
deposited, pickup armed -> pickup unlock -> opened -> closed = collected; pickup window over =
expired -> courier retrieval; cancel; extend; returns follow the same steps. Actuation is not
observation: an unlock whose door is not seen open in time is a jam. The keypad and scanner
flows live in locker.cabinet.domain.access; this module dispatches to them.

About 530 lines, a little above the project's ~500: the door, parcel and time flows share
the expiry pass and its deadlines (``_expire``, ``next_deadline``, ``_quiet_until``), which
must agree exactly; the keypad and scanner (access), remote commands (remote), compartments
and spent codes already live in their own modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from locker.cabinet.domain import remote, spent, throttle
from locker.cabinet.domain.access import MAX_CODE_DIGITS, on_key, on_rejected_input, on_scan, rearm
from locker.cabinet.domain.compartments import (
    JAM_WINDOW_S,
    best_fit,
    move_reservation,
    reservation_target,
    set_service,
    start_unlock,
)
from locker.cabinet.domain.draft import Draft, IndicateAction, Transition
from locker.cabinet.domain.earliest import earliest, minimum
from locker.cabinet.domain.inputs import (
    Boot,
    CertificateDue,
    ClockSuspect,
    CommandArrived,
    Input,
    Stop,
    Tick,
)
from locker.cabinet.domain.model import (
    Compartment,
    KeypadEntry,
    LockerState,
    Parcel,
    ParcelStatus,
    Step,
    Unlock,
)
from locker.cabinet.domain.refusals import REFUSAL_BURST_S, end_bursts
from locker.cabinet.domain.rules import Rules
from locker.ports import (
    DoorChanged,
    DoorState,
    Feedback,
    HardwareFault,
    HardwareRecovered,
    InputRejected,
    InputSource,
    ItemChanged,
    KeyPressed,
    LineScanned,
    UnlockResult,
)

MAX_PULSES_IN_WINDOW = 3
DOOR_SENSOR = "door:"  # device name prefix of a door sensor's faults (``door:<compartment>``)

# Re-exported: callers drive the machine through this module alone.
__all__ = [
    "JAM_WINDOW_S",
    "MAX_CODE_DIGITS",
    "REFUSAL_BURST_S",
    "Boot",
    "CertificateDue",
    "ClockSuspect",
    "CommandArrived",
    "Input",
    "Rules",
    "Stop",
    "Tick",
    "best_fit",
    "next_deadline",
    "set_service",
    "start_unlock",
    "step",
]


def step(state: LockerState, event: Input, rules: Rules, now: float) -> Transition:
    """Apply one input. Deadlines that have passed are handled first, so a late input never
    acts on a credential or a window that has already run out."""
    d = Draft(state)
    handler = _HANDLERS.get(type(event))
    if isinstance(event, Boot):
        # Reconcile first: an unlock left pending by a crash is an unknown outcome, not a
        # jam, however long ago its deadline passed (a jam would hand the credential back).
        _on_boot(d, event, rules, now)
        _expire(d, rules, now)
        return d.finish()
    if now < _quiet_until(state, rules):
        _entry_timeout(d, rules, now)  # the only deadline that moves with every key
    else:
        _expire(d, rules, now)
    if handler is not None:
        handler(d, event, rules, now)
    return d.finish()


def _quiet_until(state: LockerState, rules: Rules) -> float:
    """Until when ``_expire`` has nothing to do but the keypad entry's time-out: the earliest
    deadline of the tables and fields that do not change with a key typed. Remembered for the
    very same objects (all immutable, replaced when they change), so a burst of keys does not
    repeat the expiry pass per key (issue 10)."""
    small = (state.compartments, state.parcels, state.refusals)
    history = (state.credentials, state.tokens, state.commands, state.spent)

    def compute() -> float:
        times = [
            _compartments_due(state.compartments, rules),
            minimum(map(_parcel_deadline, state.parcels.values())),
            *(table.earliest() for table in history),
            minimum(b.until for b in state.refusals.values()),
        ]
        if state.throttle.locked_out:
            times.append(state.throttle.locked_until)
        return min(times)

    return earliest("quiet", small, compute, *history, state.throttle, rules)


def next_deadline(state: LockerState, rules: Rules) -> float | None:
    """The earliest time at which ``step`` with a ``Tick`` would change something."""
    times: list[float] = []
    doors = _compartments_due(state.compartments, rules)
    if doors != math.inf:
        times.append(doors)
    # judged when the door closes (_expire skips busy compartments' parcels until then)
    parcels = earliest(
        "parcels_free",
        (state.parcels, state.compartments),
        lambda: minimum(
            _parcel_deadline(p)
            for p in state.parcels.values()
            if not state.compartments[p.compartment].busy
        ),
    )
    if parcels != math.inf:
        times.append(parcels)
    if state.keypad.digits or state.keypad.overflow or state.keypad.stars:
        times.append(state.keypad.last_key_at + rules.keypad_entry_timeout_s)
    times.extend(b.until for b in state.refusals.values() if b.count)
    if state.throttle.locked_out:
        times.append(state.throttle.locked_until)
    return min(times) if times else None


# --- doors ----------------------------------------------------------------------------------


def _on_door(d: Draft, ev: DoorChanged, rules: Rules, now: float) -> None:
    comp = d.compartments.get(ev.compartment)
    if comp is None or comp.door is ev.state:
        return
    if ev.state is DoorState.OPEN:
        _door_opened(d, comp, rules, now)
    elif ev.state is DoorState.CLOSED:
        _door_closed(d, comp, rules, now)
    else:
        d.update_compartment(comp.id, door=DoorState.UNKNOWN)


def _door_opened(d: Draft, comp: Compartment, rules: Rules, now: float, **extra: Any) -> None:
    left = now + rules.door_left_open_s
    if comp.pending is not None:
        # The door answered: the run of unanswered pulses (jam retries) is over.
        d.update_compartment(
            comp.id,
            door=DoorState.OPEN,
            pending=None,
            session=comp.pending,
            open_since=now,
            left_open_next=left,
            pulses=(),
        )
        d.emit(
            "door_opened", comp.id, comp.pending.parcel, purpose=str(comp.pending.purpose), **extra
        )
        return
    d.update_compartment(comp.id, door=DoorState.OPEN, open_since=now, left_open_next=left)
    if comp.session is not None:  # opened again before we saw it close (sensor flutter)
        d.emit("door_opened", comp.id, comp.parcel, purpose=str(comp.session.purpose), **extra)
        return
    if comp.door is DoorState.UNKNOWN and (
        comp.sensor_fault or any(t > now - JAM_WINDOW_S for t in comp.pulses)
    ):
        # unreadable since a recent pulse of ours, or its sensor is faulty: no evidence of force
        d.emit("door_opened", comp.id, comp.parcel, purpose="none", after_unknown=True, **extra)
        return
    d.emit("door_opened", comp.id, comp.parcel, purpose="none", **extra)
    d.emit("door_forced", comp.id, comp.parcel, **extra)
    d.act(IndicateAction(Feedback.ALARM))


def _door_closed(d: Draft, comp: Compartment, rules: Rules, now: float, **extra: Any) -> None:
    was_open = comp.door is DoorState.OPEN
    comp = d.update_compartment(
        comp.id, door=DoorState.CLOSED, open_since=None, left_open_next=None, sensor_fault=False
    )
    if was_open or extra:
        d.emit("door_closed", comp.id, comp.parcel, **extra)
    session = comp.session
    if session is None:
        return
    d.update_compartment(comp.id, session=None)
    if session.purpose is Step.REMOTE or session.parcel not in d.parcels:
        return
    _complete(d, d.compartments[comp.id], session, rules, now)


def _complete(d: Draft, comp: Compartment, session: Unlock, rules: Rules, now: float) -> None:
    """The door closed after a credential opened it: the step of the flow is done."""
    assert session.parcel is not None
    parcel = d.parcels[session.parcel]
    if session.purpose is Step.DROPOFF:
        if comp.item is False:
            d.emit("deposit_empty", comp.id, parcel.id)
            rearm(d, session)
            return
        until = now + parcel.pickup_hours * 3600
        d.update_parcel(
            parcel.id, status=ParcelStatus.DEPOSITED, deposited_at=now, pickup_until=until
        )
        for tag in list(d.credentials.group(parcel.id)):
            cred = d.credentials[tag]
            if cred.step is Step.PICKUP:
                d.update_credential(cred.tag, armed=True, valid_from=now, valid_until=until)
        spent.retire_step(d, parcel.id, Step.DROPOFF, now)
        d.emit("parcel_deposited", comp.id, parcel.id, kind=parcel.kind, pickup_until=int(until))
        return
    if comp.item is True:
        d.emit("item_left_behind", comp.id, parcel.id, step=str(session.purpose))
        rearm(d, session)
        return
    kind = "parcel_collected" if session.purpose is Step.PICKUP else "parcel_retrieved"
    d.emit(kind, comp.id, parcel.id, kind=parcel.kind)
    spent.retire_parcel(d, parcel.id, now, done=session.purpose)
    d.update_compartment(comp.id, parcel=None)


def _on_item(d: Draft, ev: ItemChanged, rules: Rules, now: float) -> None:
    if ev.compartment in d.compartments:
        d.update_compartment(ev.compartment, item=ev.present)


def _on_unlock_result(d: Draft, ev: UnlockResult, rules: Rules, now: float) -> None:
    comp = d.compartments.get(ev.compartment)
    if ev.sent or comp is None or comp.pending is None:
        return
    # Nothing reached the coil: the person may simply try again.
    rearm(d, comp.pending)
    d.update_compartment(comp.id, pending=None, pulses=comp.pulses[:-1])
    d.emit(
        "hardware_fault",
        comp.id,
        comp.pending.parcel,
        device="lock",
        detail=ev.detail or "unlock not sent",
    )
    d.act(IndicateAction(Feedback.REFUSED))


def _on_fault(d: Draft, ev: HardwareFault, rules: Rules, now: float) -> None:
    d.emit("hardware_fault", device=ev.device, detail=ev.detail, compartments=list(ev.compartments))
    if ev.device.startswith(DOOR_SENSOR):
        for cid in ev.compartments:
            if cid in d.compartments:
                d.update_compartment(cid, sensor_fault=True)
    if ev.device in set(InputSource):
        # the keypad or scanner went away: whoever is using it now learns it at the cabinet
        d.act(IndicateAction(Feedback.REFUSED))


def _on_recovered(d: Draft, ev: HardwareRecovered, rules: Rules, now: float) -> None:
    d.emit("hardware_recovered", device=ev.device, compartments=list(ev.compartments))
    if ev.device.startswith(DOOR_SENSOR):
        for cid in ev.compartments:
            if cid in d.compartments:
                d.update_compartment(cid, sensor_fault=False)


# --- time -----------------------------------------------------------------------------------


def _expire(d: Draft, rules: Rules, now: float) -> None:
    for cid in list(d.compartments) if now >= _compartments_due(d.compartments, rules) else ():
        comp = d.compartments[cid]
        if comp.pending is not None and now >= _pending_deadline(comp, rules):
            if comp.door is DoorState.UNKNOWN:
                _outcome_unknown(d, comp)
            else:
                _jammed(d, comp, rules, now)
        comp = d.compartments[cid]
        if comp.left_open_next is not None and now >= comp.left_open_next:
            open_s = int(now - (comp.open_since or now))
            d.update_compartment(comp.id, left_open_next=now + rules.door_left_open_s)
            d.emit("door_left_open", comp.id, comp.parcel, open_s=open_s)
            d.act(IndicateAction(Feedback.ALARM))
    due = earliest(
        "parcels", (d.parcels,), lambda: minimum(map(_parcel_deadline, d.parcels.values()))
    )
    for parcel in list(d.parcels.values()) if now >= due else ():
        comp = d.compartments[parcel.compartment]
        if comp.busy:
            continue  # never pull a window shut under someone at the open door
        if parcel.status is ParcelStatus.RESERVED and now >= parcel.dropoff_until:
            d.emit("assignment_cancelled", comp.id, parcel.id, reason="dropoff_expired")
            spent.retire_parcel(d, parcel.id, now)
            d.update_compartment(comp.id, parcel=None)
        elif (
            parcel.status is ParcelStatus.DEPOSITED
            and parcel.pickup_until is not None
            and now >= parcel.pickup_until
        ):
            d.update_parcel(parcel.id, status=ParcelStatus.EXPIRED)
            _disarm(d, parcel.id, Step.PICKUP)
            d.emit("pickup_expired", comp.id, parcel.id, kind=parcel.kind)
    _forget_old(d, now)
    end_bursts(d, now)
    if throttle.lockout_over(d.get("throttle"), now):
        d.put("throttle", throttle.reset(d.get("throttle")))
        d.emit("keypad_unlocked", by="timeout")
    _entry_timeout(d, rules, now)


def _entry_timeout(d: Draft, rules: Rules, now: float) -> None:
    """A half-typed entry is forgotten ``keypad_entry_timeout_s`` after its last key."""
    entry: KeypadEntry = d.get("keypad")
    if (
        entry.digits or entry.overflow or entry.stars
    ) and now >= entry.last_key_at + rules.keypad_entry_timeout_s:
        d.put("keypad", KeypadEntry())


def _forget_old(d: Draft, now: float) -> None:
    """Consumed token ids, command ids, retrieval codes and spent tags past their time, found
    through each table's deadline index (``locker.cabinet.domain.table``): no scan of the
    rows. A retrieval code past its time is remembered as expired (``spent``)."""
    for token_id in d.tokens.due(now):
        d.drop_token(token_id)
    for jti in d.commands.due(now):
        d.drop_command(jti)
    for tag in d.credentials.due(now):
        spent.retire(d, tag, spent.EXPIRED, now)
    spent.forget(d, now)


def _parcel_deadline(p: Parcel) -> float:
    """When a parcel's window closes: its drop-off, or its pickup once deposited."""
    if p.status is ParcelStatus.RESERVED:
        return p.dropoff_until
    if p.status is ParcelStatus.DEPOSITED and p.pickup_until is not None:
        return p.pickup_until
    return math.inf


def _compartments_due(compartments: Mapping[str, Compartment], rules: Rules) -> float:
    """The earliest door deadline (a pending unlock judged, a left-open reminder) over all
    compartments; remembered per table (``earliest``), so a key typed does not visit every
    compartment (issue 10)."""

    def compute() -> float:
        times = [_pending_deadline(c, rules) for c in compartments.values() if c.pending]
        times += [c.left_open_next for c in compartments.values() if c.left_open_next is not None]
        return minimum(times)

    return earliest("compartments", (compartments,), compute, rules)


def _pending_deadline(comp: Compartment, rules: Rules) -> float:
    """When a pending unlock is judged. A door that cannot be read (its sensor chatters as
    the door swings, its board is silent) is given time to settle: an opening that settles is
    an opening, not a jam followed by a forced door."""
    assert comp.pending is not None
    if comp.door is DoorState.UNKNOWN:
        return comp.pending.deadline + rules.door_left_open_s
    return comp.pending.deadline


def _outcome_unknown(d: Draft, comp: Compartment) -> None:
    """The door never became readable after a pulse: report, never re-arm or retry."""
    unlock = comp.pending
    assert unlock is not None
    d.update_compartment(comp.id, pending=None)
    d.emit(
        "unlock_outcome_unknown",
        comp.id,
        unlock.parcel,
        purpose=str(unlock.purpose),
        door=str(DoorState.UNKNOWN),
    )


def _disarm(d: Draft, parcel_id: str, step_: Step) -> None:
    for tag in list(d.credentials.group(parcel_id)):
        if d.credentials[tag].step is step_:
            d.update_credential(tag, armed=False)


def _jammed(d: Draft, comp: Compartment, rules: Rules, now: float) -> None:
    """The door was not seen open in time after a pulse (DESIGN 7: actuation != observation)."""
    unlock = comp.pending
    assert unlock is not None
    pulses = tuple(t for t in comp.pulses if t > now - JAM_WINDOW_S)
    comp = d.update_compartment(comp.id, pending=None, pulses=pulses)
    d.emit("door_jammed", comp.id, unlock.parcel, purpose=str(unlock.purpose), pulses=len(pulses))
    d.act(IndicateAction(Feedback.ALARM))
    if unlock.purpose is Step.REMOTE:
        return
    if unlock.purpose is Step.DROPOFF and _move_parcel(d, comp, unlock, rules):
        rearm(d, unlock)
        return
    if len(pulses) >= MAX_PULSES_IN_WINDOW:
        set_service(d, comp.id, False, "door_jammed")
    rearm(d, unlock)


def _move_parcel(d: Draft, comp: Compartment, unlock: Unlock, rules: Rules) -> bool:
    """A drop-off whose door jams goes to another fitting compartment; the jammed one is
    taken out of service. False when there is nowhere to go."""
    assert unlock.parcel is not None
    target = reservation_target(d, comp.id, unlock.parcel, rules)
    if target is None:
        return False
    set_service(d, comp.id, False, "door_jammed")
    move_reservation(d, comp.id, unlock.parcel, target)
    return True


def _on_tick(d: Draft, ev: Tick, rules: Rules, now: float) -> None:
    pass  # deadlines were handled by _expire


# --- start and stop -------------------------------------------------------------------------


def _on_boot(d: Draft, ev: Boot, rules: Rules, now: float) -> None:
    """Reconcile what was stored with what the sensors say. Never pulses anything."""
    d.emit("started", version=ev.version, compartments=len(d.compartments))
    for cid in list(d.compartments):
        if cid in ev.items:
            d.update_compartment(cid, item=ev.items[cid])
        comp = d.compartments[cid]
        door = ev.doors.get(cid, DoorState.UNKNOWN)
        if comp.pending is not None and door is not DoorState.OPEN:
            # The daemon died between committing an unlock and seeing the door: we cannot know
            # whether the coil fired. Report; never retry on our own.
            d.emit(
                "unlock_outcome_unknown",
                cid,
                comp.pending.parcel,
                purpose=str(comp.pending.purpose),
                door=str(door),
            )
            comp = d.update_compartment(cid, pending=None)
        if door is comp.door:
            continue
        if comp.door is DoorState.UNKNOWN and not comp.busy:
            # Nothing was known to contradict (first start, or a board that was silent): learn
            # the door quietly; an open one is still worth a word, but it is no alarm.
            if door is DoorState.OPEN:
                d.update_compartment(
                    cid, door=door, open_since=now, left_open_next=now + rules.door_left_open_s
                )
                d.emit("door_opened", cid, comp.parcel, purpose="none", reconciled=True)
            else:
                d.update_compartment(cid, door=door)
        elif door is DoorState.OPEN:
            _door_opened(d, comp, rules, now, reconciled=True)
        elif door is DoorState.CLOSED:
            _door_closed(d, comp, rules, now, reconciled=True)
        else:
            d.update_compartment(cid, door=DoorState.UNKNOWN)


def _on_stop(d: Draft, ev: Stop, rules: Rules, now: float) -> None:
    d.emit("stopping", reason=ev.reason)


def _on_clock_suspect(d: Draft, ev: ClockSuspect, rules: Rules, now: float) -> None:
    """Reported once per episode by the controller's clock; nothing is judged on the reading."""
    d.emit(
        "clock_suspect",
        reading=int(ev.reading),
        trusted=int(ev.trusted),
        step_s=int(ev.reading - ev.trusted),
        synced=ev.synced,
    )


def _on_certificate_due(d: Draft, ev: CertificateDue, rules: Rules, now: float) -> None:
    """Reported at start and once a day while due, so the fleet alarms while the certificate
    still connects (after its end nothing more reaches the fleet)."""
    d.emit(
        "certificate_expiring",
        certificate=ev.certificate,
        not_after=int(ev.not_after),
        days_left=max(0, int((ev.not_after - now) // 86400)),
    )


def _on_command(d: Draft, ev: CommandArrived, rules: Rules, now: float) -> None:
    remote.handle(d, ev, rules, now)


_HANDLERS: dict[type, Any] = {
    KeyPressed: on_key,
    LineScanned: on_scan,
    InputRejected: on_rejected_input,
    DoorChanged: _on_door,
    ItemChanged: _on_item,
    UnlockResult: _on_unlock_result,
    HardwareFault: _on_fault,
    HardwareRecovered: _on_recovered,
    Tick: _on_tick,
    Boot: _on_boot,
    Stop: _on_stop,
    CommandArrived: _on_command,
    ClockSuspect: _on_clock_suspect,
    CertificateDue: _on_certificate_due,
}
