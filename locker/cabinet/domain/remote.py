"""Executing verified remote commands (DESIGN section 5, "Actions and arguments").

Called by ``machine.step`` for a ``CommandArrived``. Every command id (``jti``) is recorded in
the same transaction as its effects, with its outcome, so a repeated id is answered
``duplicate`` with the stored result and nothing runs twice, across restarts too. A refusal
changes nothing but the outbox (``command_rejected``) and the reply.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from locker import errors
from locker.cabinet.domain import spent, throttle
from locker.cabinet.domain.compartments import (
    best_fit,
    distrust_sensor,
    move_reservation,
    pulse_again,
    reservation_target,
    set_service,
    start_unlock,
)
from locker.cabinet.domain.draft import Draft, ReplyAction, ResyncAction
from locker.cabinet.domain.inputs import CommandArrived
from locker.cabinet.domain.model import (
    SIZE_RANK,
    CommandRecord,
    Credential,
    Parcel,
    ParcelStatus,
    Step,
    Unlock,
)
from locker.cabinet.domain.rules import Rules
from locker.contract.actions import (
    MAX_PICKUP_HOURS,
    Action,
    AssignArgs,
    CancelArgs,
    Command,
    CommandRejected,
    ExtendArgs,
    LockdownArgs,
    OpenArgs,
    RetrieveArgs,
    SetServiceArgs,
)
from locker.contract.replies import ReplyStatus, rejection_reply, reply_payload
from locker.ports import DoorState

HOUR_S = 3600.0


class Refusal(errors.LockerError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def handle(d: Draft, ev: CommandArrived, rules: Rules, now: float) -> None:
    if ev.rejected is not None or ev.command is None:
        rej = ev.rejected or CommandRejected("malformed", "no command")
        d.emit("command_rejected", cmd_id=rej.cmd_id, code=rej.code, message=rej.message)
        d.act(ReplyAction(rejection_reply(rej, ts=now), ev.correlation_data))
        return
    cmd = ev.command
    seen = d.commands.get(cmd.cmd_id)
    if seen is not None:
        _reply(
            d,
            cmd.cmd_id,
            "duplicate",
            ev.correlation_data,
            now,
            result=seen.result,
            error=seen.error,
        )
        return
    caused_from = len(d.events)
    try:
        result = _execute(d, cmd, rules, now)
    except Refusal as r:
        error = {"code": r.code, "message": r.message}
        d.emit(
            "command_rejected",
            cmd_id=cmd.cmd_id,
            code=r.code,
            message=r.message,
            action=str(cmd.action),
        )
        d.put_command(CommandRecord(cmd.cmd_id, float(cmd.exp), "rejected", None, error))
        _reply(d, cmd.cmd_id, "rejected", ev.correlation_data, now, error=error)
        return
    _name_the_signer(d, caused_from, cmd.kid, cmd.cmd_id)
    d.put_command(CommandRecord(cmd.cmd_id, float(cmd.exp), "done", result, None))
    _reply(d, cmd.cmd_id, "done", ev.correlation_data, now, result=result)


def _name_the_signer(d: Draft, since: int, kid: str, cmd_id: str) -> None:
    """Every event a command caused names who signed it (``data.kid``: a fleet service signs
    with each user's own key, kid = the user's name, DESIGN 13) and the command (``cmd_id``),
    so the locker's own record says who acted."""
    d.events[since:] = [
        replace(e, data=MappingProxyType({**e.data, "kid": kid, "cmd_id": cmd_id}))
        for e in d.events[since:]
    ]


def _reply(
    d: Draft,
    cmd_id: str | None,
    status: ReplyStatus,
    correlation: bytes | None,
    now: float,
    *,
    result: Any = None,
    error: Any = None,
) -> None:
    err = None if error is None else (str(error["code"]), str(error["message"]))
    d.act(ReplyAction(reply_payload(cmd_id, status, err, result, ts=now), correlation))


def _execute(d: Draft, cmd: Command, rules: Rules, now: float) -> dict[str, Any]:
    args = cmd.args
    match cmd.action:
        case Action.ASSIGN:
            assert isinstance(args, AssignArgs)
            return _assign(d, args, rules, now)
        case Action.CANCEL:
            assert isinstance(args, CancelArgs)
            return _cancel(d, args, now)
        case Action.EXTEND:
            assert isinstance(args, ExtendArgs)
            return _extend(d, args, now)
        case Action.RETRIEVE:
            assert isinstance(args, RetrieveArgs)
            return _retrieve(d, args, now)
        case Action.OPEN:
            assert isinstance(args, OpenArgs)
            return _open(d, args, rules, now)
        case Action.SET_SERVICE:
            assert isinstance(args, SetServiceArgs)
            return _set_service(d, args, rules)
        case Action.LOCKDOWN:
            assert isinstance(args, LockdownArgs)
            if d.get("lockdown") != args.on:
                d.put("lockdown", args.on)
                d.emit("lockdown_changed", on=args.on)
            return {"lockdown": args.on}
        case Action.RESET_LOCKOUT:
            d.put("throttle", throttle.reset(d.get("throttle")))
            d.emit("keypad_unlocked", by="command")
            return {}
        case Action.RESYNC:
            d.act(ResyncAction())
            return {}
    raise Refusal("unknown_action", str(cmd.action))  # pragma: no cover - enum is exhaustive


def _set_service(d: Draft, a: SetServiceArgs, rules: Rules) -> dict[str, Any]:
    """Take a compartment out of service (or back). A reservation in it moves to another free
    fitting compartment, as after a jam (its courier's code then opens that one); a parcel
    that is inside stays, and the result says so: ``holds`` {parcel, status} for what the
    compartment still holds, ``moved`` {parcel, to} for a reservation that moved."""
    comp = d.compartments.get(a.compartment)
    if comp is None:
        raise Refusal("invalid_args", "unknown compartment")
    set_service(d, comp.id, a.in_service, a.reason)
    result: dict[str, Any] = {"compartment": comp.id, "in_service": a.in_service}
    parcel = d.parcels.get(comp.parcel) if comp.parcel is not None else None
    if parcel is None or a.in_service:
        return result
    if parcel.status is ParcelStatus.RESERVED and not comp.busy:
        target = reservation_target(d, comp.id, parcel.id, rules)
        if target is not None:
            move_reservation(d, comp.id, parcel.id, target)
            result["moved"] = {"parcel": parcel.id, "to": target.id}
            return result
    # inside (or nowhere to move it): its codes are refused with out_of_service until the
    # compartment is back in service or the parcel is cancelled and retrieved
    result["holds"] = {"parcel": parcel.id, "status": str(parcel.status)}
    return result


def _live_tag(d: Draft, tag: str) -> bool:
    return tag in d.credentials


def _assign(d: Draft, a: AssignArgs, rules: Rules, now: float) -> dict[str, Any]:
    if a.parcel in d.parcels:
        raise Refusal("duplicate_parcel", "parcel already in this locker")
    if a.dropoff_tag == a.pickup_tag or _live_tag(d, a.dropoff_tag) or _live_tag(d, a.pickup_tag):
        raise Refusal("code_collision", "a tag is already live in this locker")
    if a.compartment is not None:
        comp = d.compartments.get(a.compartment)
        if comp is None:
            raise Refusal("invalid_args", "unknown compartment")
        if (
            comp.parcel is not None
            or comp.busy
            or not comp.in_service
            or SIZE_RANK[comp.size] < SIZE_RANK[a.size]
        ):
            raise Refusal("no_compartment", f"compartment {comp.id} is not free for size {a.size}")
        if a.accessible and comp.id not in rules.accessible:
            raise Refusal("no_compartment", f"compartment {comp.id} is not accessible")
    else:
        comp = best_fit(d.compartments, a.size, only=rules.accessible if a.accessible else None)
        if comp is None:
            which = "accessible compartment" if a.accessible else "compartment"
            raise Refusal("no_compartment", f"no free {which} fits size {a.size}")
    until = (
        float(a.dropoff_until) if a.dropoff_until is not None else now + rules.dropoff_hours * 3600
    )
    if until <= now:
        raise Refusal("invalid_args", "dropoff_until is in the past")
    hours = a.pickup_hours if a.pickup_hours is not None else rules.pickup_hours
    d.put_parcel(Parcel(a.parcel, a.kind, a.size, comp.id, ParcelStatus.RESERVED, until, hours))
    d.put_credential(Credential(a.dropoff_tag, a.parcel, Step.DROPOFF, now, until, armed=True))
    d.put_credential(Credential(a.pickup_tag, a.parcel, Step.PICKUP, now, None, armed=False))
    d.update_compartment(comp.id, parcel=a.parcel)
    d.emit("parcel_reserved", comp.id, a.parcel, kind=a.kind, size=a.size, dropoff_until=int(until))
    return {"compartment": comp.id}


def _parcel(d: Draft, pid: str) -> Parcel:
    parcel = d.parcels.get(pid)
    if parcel is None:
        raise Refusal("unknown_parcel", "no such parcel in this locker")
    if d.compartments[parcel.compartment].busy:
        raise Refusal("busy", "the compartment door is being used right now")
    return parcel


def _cancel(d: Draft, a: CancelArgs, now: float) -> dict[str, Any]:
    parcel = _parcel(d, a.parcel)
    if parcel.status is ParcelStatus.RESERVED:
        spent.retire_cancelled(d, parcel.id, now)
        d.update_compartment(parcel.compartment, parcel=None)
        d.emit("assignment_cancelled", parcel.compartment, parcel.id, reason="command")
        return {"released": True}
    if parcel.status is ParcelStatus.CANCELLED:
        raise Refusal("invalid_state", "parcel already cancelled")
    d.update_parcel(parcel.id, status=ParcelStatus.CANCELLED)
    for tag in list(d.credentials.group(parcel.id)):
        if d.credentials[tag].step is Step.PICKUP:
            d.update_credential(tag, armed=False)
    d.emit(
        "assignment_cancelled", parcel.compartment, parcel.id, reason="command", after_deposit=True
    )
    return {"released": False}


def _extend(d: Draft, a: ExtendArgs, now: float) -> dict[str, Any]:
    parcel = _parcel(d, a.parcel)
    if parcel.status not in (ParcelStatus.DEPOSITED, ParcelStatus.EXPIRED):
        raise Refusal("invalid_state", f"parcel is {parcel.status}")
    if a.pickup_until <= now:
        raise Refusal("invalid_args", "pickup_until is in the past")
    if parcel.pickup_until is not None and a.pickup_until < parcel.pickup_until:
        # an "extend" that shortened the window locked a customer out 25 s later
        raise Refusal(
            "invalid_args",
            f"pickup_until {a.pickup_until} is earlier than the window's end "
            f"{int(parcel.pickup_until)}: extend only makes it longer",
        )
    if a.pickup_until > now + MAX_PICKUP_HOURS * HOUR_S:
        # the contract's bound on assign's pickup_hours, from now: 2106 was accepted
        raise Refusal("invalid_args", f"pickup_until is more than {MAX_PICKUP_HOURS} h from now")
    d.update_parcel(parcel.id, status=ParcelStatus.DEPOSITED, pickup_until=float(a.pickup_until))
    for tag in list(d.credentials.group(parcel.id)):
        if d.credentials[tag].step is Step.PICKUP:
            d.update_credential(tag, armed=True, valid_until=float(a.pickup_until))
    d.emit("pickup_extended", parcel.compartment, parcel.id, pickup_until=a.pickup_until)
    return {"pickup_until": a.pickup_until}


def _retrieve(d: Draft, a: RetrieveArgs, now: float) -> dict[str, Any]:
    parcel = _parcel(d, a.parcel)
    if parcel.status not in (ParcelStatus.EXPIRED, ParcelStatus.CANCELLED):
        raise Refusal("invalid_state", f"parcel is {parcel.status}, not expired or cancelled")
    if _live_tag(d, a.code_tag):
        raise Refusal("code_collision", "the tag is already live in this locker")
    if a.valid_until <= now:
        raise Refusal("invalid_args", "valid_until is in the past")
    d.put_credential(
        Credential(a.code_tag, parcel.id, Step.RETRIEVE, now, float(a.valid_until), armed=True)
    )
    d.emit("retrieval_armed", parcel.compartment, parcel.id, valid_until=a.valid_until)
    return {"compartment": parcel.compartment}


def _open(d: Draft, a: OpenArgs, rules: Rules, now: float) -> dict[str, Any]:
    if d.get("lockdown"):
        raise Refusal("lockdown", "the locker is in lockdown")
    comp = d.compartments.get(a.compartment)
    if comp is None:
        raise Refusal("invalid_args", "unknown compartment")
    if comp.session is not None and comp.door is DoorState.OPEN:
        open_s = now - (comp.open_since or now)
        if open_s < rules.door_left_open_s:
            raise Refusal("busy", "the compartment door is being used right now")
        # Open through a whole session and past the left-open alarm, and now asked to open:
        # a door stuck open and a broken sensor cable read the same; the reading is no
        # longer trusted, and the open goes ahead whatever it says.
        comp = distrust_sensor(
            d, comp, f"door sensor has read open for {int(open_s)} s: stuck sensor or cable?"
        )
    if comp.pending is not None and not comp.sensor_fault:
        raise Refusal("busy", "the compartment door is being used right now")
    if comp.door is DoorState.UNKNOWN and not comp.sensor_fault:
        raise Refusal("compartment_unavailable", "door state unknown: its board is not answering")
    recent = tuple(t for t in d.get("remote_opens") if t > now - HOUR_S)
    if len(recent) >= rules.max_remote_opens_per_hour:
        d.emit("remote_open_limited", comp.id, limit=rules.max_remote_opens_per_hour)
        raise Refusal("rate_limited", "local cap on remote opens per hour reached")
    d.put("remote_opens", (*recent, now))
    d.emit("remote_open", comp.id, comp.parcel, reason=a.reason)
    if comp.pending is not None:
        pulse_again(d, comp, now)
        return {"compartment": comp.id}
    unlock = Unlock(Step.REMOTE, comp.parcel, None, "remote", now + rules.door_open_timeout_s)
    start_unlock(d, comp, unlock, now)
    return {"compartment": comp.id}
