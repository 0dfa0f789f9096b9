"""The keypad and the scanner: codes and signed QR tokens checked against the credentials, refusals
counted, and the unlocks they grant (DESIGN section 6). Part of the state machine
(locker.cabinet.domain.machine, which dispatches inputs here); pure like it.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from types import MappingProxyType

from locker.cabinet.domain import spent, throttle
from locker.cabinet.domain.compartments import start_unlock
from locker.cabinet.domain.draft import Draft, IndicateAction, LanguageAction
from locker.cabinet.domain.model import (
    Credential,
    KeypadEntry,
    Parcel,
    ParcelStatus,
    SpentTag,
    Step,
    Unlock,
)
from locker.cabinet.domain.refusals import refuse
from locker.cabinet.domain.rules import Rules
from locker.contract import credentials as creds
from locker.ports import (
    DoorState,
    Feedback,
    InputRejected,
    InputSource,
    KeyPressed,
    LineScanned,
)

__all__ = ["MAX_CODE_DIGITS", "on_key", "on_rejected_input", "on_scan", "rearm"]

MAX_CODE_DIGITS = 16
STEP_FOR_TOKEN_ACTION = {1: Step.PICKUP, 2: Step.DROPOFF, 3: Step.RETRIEVE}
STATUS_FOR_STEP = {
    Step.DROPOFF: (ParcelStatus.RESERVED,),
    Step.PICKUP: (ParcelStatus.DEPOSITED,),
    Step.RETRIEVE: (ParcelStatus.EXPIRED, ParcelStatus.CANCELLED),
}


def on_key(d: Draft, ev: KeyPressed, rules: Rules, now: float) -> None:
    entry: KeypadEntry = d.get("keypad")
    d.act(IndicateAction(Feedback.KEY))
    if ev.key == "*":
        # '*' clears; pressed again on the empty entry it starts a language choice.
        stars = 1 if entry.digits or entry.overflow else entry.stars + 1
        d.put("keypad", KeypadEntry(last_key_at=now, stars=stars))
    elif entry.stars >= 2 and ev.key.isdigit() and len(ev.key) == 1:
        # '*' '*' digit: a language choice for the front panel, never a code nor a guess.
        d.put("keypad", KeypadEntry(last_key_at=now))
        d.act(LanguageAction(int(ev.key)))
    elif ev.key == "#":
        d.put("keypad", KeypadEntry(last_key_at=now))
        if entry.digits or entry.overflow:  # an empty entry is nothing at all
            _submit_code(d, entry, rules, now)
    elif ev.key.isdigit() and len(ev.key) == 1:
        overflow = entry.overflow or len(entry.digits) >= MAX_CODE_DIGITS
        digits = entry.digits if overflow else entry.digits + ev.key
        d.put("keypad", KeypadEntry(digits, overflow, now))
    else:
        refuse(d, "malformed", ev.source, now, detail="bad_key")


def _submit_code(d: Draft, entry: KeypadEntry, rules: Rules, now: float) -> None:
    """One submitted keypad entry. Only an entry that could be a code and matches no live tag
    is a guess (DESIGN section 6, throttle scope); every other refusal is not counted."""
    source = InputSource.KEYPAD
    if _refused_at_the_door(d, source, now):
        return
    if entry.overflow or len(entry.digits) != rules.code_length or not entry.digits.isdigit():
        refuse(d, "malformed", source, now, detail="length")
        return
    tag = creds.code_tag(rules.device_key, entry.digits)
    cred = _find_credential(d, tag)
    if cred is None:
        spent = _find_spent(d, tag)
        if spent is None:
            _guess_failed(d, source, rules, now)
        else:  # a real code that stopped working: why, and never a guess
            refuse(d, spent.reason, source, now, detail=spent.detail)
        return
    # A live tag is never a guess, whatever else is wrong with it.
    parcel = d.parcels.get(cred.parcel)
    if not cred.armed:
        reason, detail, door = _why_not_armed(d, cred, parcel)
        refuse(d, reason, source, now, detail=detail, compartment=door)
    elif now < cred.valid_from:
        refuse(d, "not_yet_valid", source, now)
    elif cred.valid_until is not None and now > cred.valid_until:
        refuse(d, "expired", source, now)
    else:
        _grant(d, cred.parcel, cred.step, cred.tag, source, rules, now)


def _why_not_armed(
    d: Draft, cred: Credential, parcel: Parcel | None
) -> tuple[str, str | None, str | None]:
    """Why a live code opens nothing right now, as (reason, detail, door): never a guess, its
    tag is known. A code whose unlock is under way (its door unlocked or open now) names that
    door (detail ``door_open``), so the person is told which door is theirs, not refused."""
    if parcel is None:
        return spent.EXPIRED, None, None
    if cred.step is Step.PICKUP:
        if parcel.status is ParcelStatus.RESERVED:
            return "not_yet_available", None, None  # typed before the courier deposited
        if parcel.status is ParcelStatus.EXPIRED:
            return spent.EXPIRED, None, None
        if parcel.status is ParcelStatus.CANCELLED:
            return spent.EXPIRED, "cancelled", None
    comp = d.compartments.get(parcel.compartment)
    unlock = None if comp is None else (comp.pending or comp.session)
    if comp is not None and unlock is not None and unlock.credential == cred.tag:
        return spent.USED, "door_open", comp.id
    return spent.USED, None, None  # consumed; its door was closed again before the step ended


def _find_credential(d: Draft, tag: str) -> Credential | None:
    """Look a tag up by key, then compare it in constant time (DESIGN section 6). The lookup
    costs the same at any number of codes (issue 10), and its timing tells a guesser nothing:
    a tag is an HMAC under the device key, which the guesser does not have."""
    cred = d.credentials.get(tag)
    if cred is not None and hmac.compare_digest(cred.tag, tag):
        return cred
    return None


def _find_spent(d: Draft, tag: str) -> SpentTag | None:
    """The record of a code that stopped working, looked up like a live one."""
    # A keyed read like the live table's: its timing tells a guesser nothing either (a tag
    # is an HMAC under the device key).
    return d.spent.get(tag)


def _parcel_refs(d: Draft) -> Mapping[bytes, str]:
    """QR ``parcel_ref`` -> parcel id, hashed once per version of the parcels table (issue
    10: a scan hashed every parcel id)."""
    parcels = d.parcels
    if type(parcels) is MappingProxyType:
        hit = _REFS.get("refs")
        if hit is not None and hit[0] is parcels:
            return hit[1]
    refs = {creds.parcel_ref(pid): pid for pid in parcels}
    if type(parcels) is MappingProxyType:
        _REFS["refs"] = (parcels, refs)
    return refs


_REFS: dict[str, tuple[object, Mapping[bytes, str]]] = {}


def on_scan(d: Draft, ev: LineScanned, rules: Rules, now: float) -> None:
    """A scanned line. Keypad guessing never refuses it (a signature cannot be guessed); the
    scanner's own limit only bounds the work a flood of bad scans can cause."""
    source = InputSource.SCANNER
    if d.get("lockdown"):
        refuse(d, "lockdown", source, now)
        return
    if throttle.scan_gate(d.get("scanner"), now):
        refuse(d, "throttled", source, now, detail="scan_flood")
        return
    reason, detail = _scan(d, ev, rules, now)
    if reason is not None:
        d.put("scanner", throttle.record_bad_scan(d.get("scanner"), now))
        refuse(d, reason, source, now, detail=detail)


def _scan(d: Draft, ev: LineScanned, rules: Rules, now: float) -> tuple[str | None, str | None]:
    """Verify a token and grant it; returns the refusal (reason, detail), or (None, None)."""
    try:
        token = creds.parse_token(ev.text)
        creds.verify_token(token, rules.token_keys)
    except creds.TokenError as err:
        return err.reason, None
    if not hmac.compare_digest(token.locker_ref, creds.locker_ref(rules.locker_id)):
        return "wrong_locker", None
    step_ = STEP_FOR_TOKEN_ACTION.get(int(token.action))
    if step_ is None:
        return "malformed", "action"
    window = creds.token_window_reason(token, now)
    if window is not None:
        return window, None
    pid = _parcel_refs(d).get(token.parcel_ref)
    parcel = d.parcels.get(pid) if pid is not None else None
    if parcel is not None and not hmac.compare_digest(
        creds.parcel_ref(parcel.id), token.parcel_ref
    ):
        parcel = None
    token_id = token.token_id.hex()
    if parcel is not None and token_id in d.tokens:
        return spent.USED, None
    if parcel is None or token_id in d.tokens:
        return "unknown_code", "used_or_unknown"
    if parcel.status not in STATUS_FOR_STEP[step_]:
        if parcel.status is ParcelStatus.EXPIRED:
            return "expired", "parcel_state"
        if step_ is Step.PICKUP and parcel.status is ParcelStatus.RESERVED:
            return "not_yet_available", "parcel_state"
        return "unknown_code", "parcel_state"
    source = InputSource.SCANNER
    _grant(d, parcel.id, step_, f"qr:{token_id}", source, rules, now, float(token.expires))
    return None, None


def on_rejected_input(d: Draft, ev: InputRejected, rules: Rules, now: float) -> None:
    if ev.source is InputSource.KEYPAD:
        # Keys were lost or garbled: what is left of the entry is no code, and reading it as
        # one would turn a mashed keypad into guesses.
        d.put("keypad", KeypadEntry(last_key_at=now))
    refuse(d, "malformed", ev.source, now, detail=ev.reason)


def _refused_at_the_door(d: Draft, source: InputSource, now: float) -> bool:
    """Lockdown and the keypad throttle refuse keypad input unevaluated (and do not count)."""
    if d.get("lockdown"):
        refuse(d, "lockdown", source, now)
        return True
    why = throttle.gate(d.get("throttle"), now)
    if why is not None:
        refuse(d, why, source, now)
        return True
    return False


def _guess_failed(d: Draft, source: InputSource, rules: Rules, now: float) -> None:
    """A code-shaped entry that matches no live tag: one guess against the device throttle."""
    d.emit("access_denied", reason="unknown_code", source=str(source))
    t, verdict, delay = throttle.record_failure(d.get("throttle"), now, rules.limits)
    d.put("throttle", t)
    if verdict == "locked_out":
        d.emit(
            "keypad_locked_out",
            consecutive=t.consecutive,
            last_hour=throttle.last_hour(t.recent),
            lockout_s=delay,
        )
        d.act(IndicateAction(Feedback.LOCKED_OUT))
    elif verdict == "throttled":
        d.emit("keypad_throttled", consecutive=t.consecutive, delay_s=delay)
        d.act(IndicateAction(Feedback.THROTTLED))
    else:
        d.act(IndicateAction(Feedback.UNKNOWN_CODE))


def _grant(
    d: Draft,
    parcel_id: str,
    step_: Step,
    credential: str,
    source: InputSource,
    rules: Rules,
    now: float,
    token_expires: float | None = None,
) -> None:
    """Consume the credential and queue the unlock; the controller commits before pulsing."""
    parcel = d.parcels[parcel_id]
    comp = d.compartments[parcel.compartment]
    if parcel.status not in STATUS_FOR_STEP[step_]:
        refuse(d, "unknown_code", source, now, detail="parcel_state")
        return
    if not comp.in_service:
        refuse(d, "out_of_service", source, now)
        return
    if comp.busy or comp.door is DoorState.UNKNOWN:
        # Unknown door: its board is not answering, an unlock could not even be sent.
        refuse(d, "compartment_unavailable", source, now)
        return
    if credential.startswith("qr:"):
        d.put_token(credential[3:], token_expires or now)
    else:
        d.update_credential(credential, armed=False)
    if source is InputSource.KEYPAD:
        d.put("throttle", throttle.record_success(d.get("throttle")))
    unlock = Unlock(
        step_, parcel_id, credential, str(source), now + rules.door_open_timeout_s, token_expires
    )
    d.emit("access_granted", comp.id, parcel_id, source=str(source), step=str(step_))
    d.act(IndicateAction(Feedback.ACCEPTED))
    start_unlock(d, comp, unlock, now)


def rearm(d: Draft, unlock: Unlock) -> None:
    """Give the person their credential back (the door never opened, or the step is undone)."""
    if unlock.credential is None:
        return
    if unlock.credential.startswith("qr:"):
        d.drop_token(unlock.credential[3:])
    elif unlock.credential in d.credentials:
        d.update_credential(unlock.credential, armed=True)
