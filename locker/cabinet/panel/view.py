"""The front panel's projection (DESIGN section 12): pure, no I/O, no clock.

``project(prev, transition, now)`` turns the controller's committed state and the events and
actions of one transition into a new immutable ``PanelView``. The controller calls it (through
``PanelHub.observe``) on its own thread after every transition; every surface (web page, LCD,
voice, locator LEDs) only reads the views it produces.

A view holds layers rather than one message, so that it stays right while time passes without a
transition: ``message(now)`` is the latest outcome (a door granted, a refusal) while it lasts,
else the standing condition of the highest priority (keypad locked, lockdown, back-off, a typed
entry, a door left open), else the idle instructions. Times are the controller's domain clock
(Unix seconds).

Every text fits where the person is: a refusal of a scan is worded for a QR code (never "type
the code"), one of the keypad for a typed code; and while the keypad or the scanner is out of
order (a ``hardware_fault`` on ``keypad`` / ``scanner`` until its ``hardware_recovered``), the
idle instructions and the keypad lock-out say only what still works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from locker.cabinet.domain.draft import LanguageAction, Transition
from locker.cabinet.domain.earliest import earliest
from locker.cabinet.domain.model import Burst, Compartment, LockerState, Out
from locker.ports import DoorState

# The ``data-state`` values of the test contract (DESIGN section 12).
STATES = (
    "idle",
    "entry",
    "granted",
    "denied",
    "throttled",
    "locked_out",
    "lockdown",
    "close_door",
)
# The access_denied reasons of DESIGN section 5 a person may be shown.
REASONS = (
    "unknown_code",
    "expired",
    "not_yet_valid",
    "not_yet_available",
    "wrong_locker",
    "bad_signature",
    "malformed",
    "throttled",
    "locked_out",
    "lockdown",
    "compartment_unavailable",
    "out_of_service",
    "already_used",
)
GRANTED_HOLD_S = 30.0  # "Door B3 is open" stays this long at most (or until that door closes)
DENIED_HOLD_S = 8.0  # a refusal stays this long (or until the person types again)
# Events that say a person is at the cabinet (a language they picked stays while they are).
_PERSON_EVENTS = frozenset(
    {"access_granted", "access_denied", "keypad_throttled", "door_opened", "door_closed"}
)
# A refusal reason shown as its own state rather than "denied".
_STATE_OF_REASON = {"throttled": "throttled", "locked_out": "locked_out", "lockdown": "lockdown"}
# Refusals of a scan with words of their own (``denied.qr.<reason>``): those whose keypad text
# speaks of a typed code. The rest (lockdown, a door out of service...) read the same for both.
QR_REASONS = frozenset(
    {
        "unknown_code",
        "expired",
        "not_yet_valid",
        "wrong_locker",
        "bad_signature",
        "malformed",
        "already_used",
    }
)
# How a grant reads while its door is unlocked but not yet seen open (it may be jammed shut),
# and once it is open.
UNLOCKED, OPENED = "unlocked", "granted"
GRANTED_KEYS = frozenset({UNLOCKED, OPENED})
_PERSON_SOURCES = frozenset({"keypad", "scanner"})
# What happens to the door a person was just granted (``_granted_door_event``).
_DOOR_EVENTS = frozenset({"door_opened", "door_closed", "hardware_fault"})
# The input devices a person uses (``InputSource`` values): their faults change what to say.
INPUTS = ("keypad", "scanner")
# Idle instructions by the inputs out of order.
_IDLE_BY_FAULT = {
    frozenset(): "idle",
    frozenset({"scanner"}): "idle.no_scanner",
    frozenset({"keypad"}): "idle.no_keypad",
    frozenset(INPUTS): "idle.out_of_order",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """What to tell the person: ``state`` (one of ``STATES``), ``key`` (a message id of
    ``locker.cabinet.panel.texts``), the compartment it is about, the refusal ``reason`` (one of
    ``REASONS``), ``deadline`` (Unix s) of a countdown and ``total_s`` its length when it was
    set (a countdown never shows more: the surfaces' wall clock may lag the domain clock the
    deadline was set by), ``other``: a second door (after a jam, the door that did not open;
    for a language number that does not exist, how many there are)."""

    state: str
    key: str
    compartment: str | None = None
    reason: str | None = None
    deadline: float | None = None
    other: str | None = None
    source: str | None = None
    total_s: float | None = None


IDLE = Message("idle", "idle")
ENTRY = Message("entry", "entry")


@dataclasses.dataclass(frozen=True, slots=True)
class Layer:
    message: Message
    until: float | None = None  # lapses then; None: as long as its condition lasts

    def live(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclasses.dataclass(frozen=True, slots=True)
class PanelView:
    """One immutable picture of the front panel.

    ``outcome``: the latest grant or refusal, shown while live. ``standing``: conditions from
    the state, by priority. ``entry``: how many digits are typed (shown masked). ``left_open``:
    doors a ``door_left_open`` reminder named that are still open. ``active_doors``: doors
    unlocked or open (their locator LEDs blink). ``language_choice``: the keypad's language
    pick in this transition (1-9), if any. ``person_at``: the last sign of a person at the
    cabinet (Unix s). ``out_of_order``: the inputs (``INPUTS``) with a fault not yet recovered.
    ``refusals``: the state's refusal bursts as last seen (a repeat within a burst is counted
    there, not reported as an event, and must still be shown). ``rev``: counts projections."""

    outcome: Layer | None = None
    standing: tuple[Layer, ...] = ()
    entry: int = 0
    left_open: tuple[str, ...] = ()
    active_doors: tuple[str, ...] = ()
    language_choice: int | None = None
    person_at: float = 0.0  # when someone last used the cabinet (keys, grants, refusals, doors)
    out_of_order: frozenset[str] = frozenset()
    refusals: Mapping[tuple[str, str], Burst] = dataclasses.field(default_factory=dict)
    rev: int = 0

    def message(self, now: float) -> Message:
        if self.outcome is not None and self.outcome.live(now):
            return self._fitted(self.outcome.message)
        for layer in self.standing:
            if layer.live(now):
                return self._fitted(layer.message)
        key = _IDLE_BY_FAULT[self.out_of_order & frozenset(INPUTS)]
        return IDLE if key == "idle" else Message("idle", key)

    def door_in_use(self, now: float) -> str | None:
        """The door a person was just granted and that is still unlocked or open (shown in
        large type even while a later refusal is on the screen), if any."""
        for layer in self.standing:
            if layer.message.key in GRANTED_KEYS and layer.live(now):
                return layer.message.compartment
        return None

    def _fitted(self, msg: Message) -> Message:
        """``msg`` reworded when it points to an input that is out of order."""
        if msg.key in ("locked_out", "denied.locked_out") and "scanner" in self.out_of_order:
            return dataclasses.replace(msg, key="locked_out.no_scanner")
        return msg

    def next_change(self, now: float) -> float | None:
        """When ``message`` may change without a new transition (a layer lapsing), if ever."""
        layers = [*self.standing, *((self.outcome,) if self.outcome else ())]
        times = [x.until for x in layers if x.until is not None and x.until > now]
        return min(times) if times else None


def project(prev: PanelView, tr: Transition, now: float, languages: int = 9) -> PanelView:
    """The view after ``tr`` (committed at ``now``), given the view before it. ``languages``:
    how many languages the keypad may pick from (``*`` ``*`` n beyond them is answered)."""
    state = tr.state
    outcome = prev.outcome
    entry = len(state.keypad.digits) if not state.keypad.overflow else max(prev.entry, 1)
    if entry and entry != prev.entry:
        outcome = None  # typing again: the last outcome is old news
    left_open = [c for c in prev.left_open if _is_open(state, c)]
    moved = {e.data.get("moved_from"): e for e in tr.events if e.type == "parcel_reserved"}
    out_of_order = set(prev.out_of_order)
    repeated = _repeated_refusals(prev.refusals, state.refusals)
    for (source, reason), burst in repeated:
        outcome = _refusal(reason, state, now, burst.compartment, source)
    for ev in tr.events:
        outcome = _outcome(outcome, ev, state, moved, now)
        device = ev.data.get("device")
        if device in INPUTS and ev.type == "hardware_fault":
            out_of_order.add(device)
        elif device in INPUTS and ev.type == "hardware_recovered":
            out_of_order.discard(device)
        if ev.type == "door_left_open" and ev.compartment and ev.compartment not in left_open:
            left_open.append(ev.compartment)
            if outcome is not None and outcome.message.compartment == ev.compartment:
                outcome = None  # "door open" has become "please close it"
    choice = next((a.number for a in tr.actions if isinstance(a, LanguageAction)), None)
    if choice is not None and not 1 <= choice <= languages:
        msg = Message("denied", "language.unknown", reason="malformed", other=str(languages))
        outcome = Layer(msg, now + DENIED_HOLD_S)
    busy = (
        choice is not None
        or entry != prev.entry
        or bool(repeated)
        or any(ev.type in _PERSON_EVENTS for ev in tr.events)
    )
    return PanelView(
        outcome=outcome,
        standing=_standing(state, tuple(left_open), now),
        entry=entry,
        left_open=tuple(left_open),
        active_doors=_active_doors(state.compartments),
        language_choice=choice,
        person_at=now if busy else prev.person_at,
        out_of_order=frozenset(out_of_order),
        refusals=state.refusals,
        rev=prev.rev + 1,
    )


def _active_doors(compartments: Mapping[str, Compartment]) -> tuple[str, ...]:
    """Doors unlocked or open. The compartments table is replaced, never changed, so the
    answer is remembered for the very same table object (a key typed does not visit every
    compartment, issue 10). Only the controller thread projects."""
    return earliest(
        "active_doors",
        (compartments,),
        lambda: tuple(
            c.id for c in compartments.values() if c.pending is not None or c.door is DoorState.OPEN
        ),
    )


def _is_open(state: LockerState, cid: str) -> bool:
    comp = state.compartments.get(cid)
    return comp is not None and comp.door is DoorState.OPEN


def _outcome(
    current: Layer | None, ev: Out, state: LockerState, moved: Mapping[object, Out], now: float
) -> Layer | None:
    """The latest grant or refusal after one event."""
    if ev.type == "access_granted":
        return Layer(_door_message(state, ev.compartment), now + GRANTED_HOLD_S)
    if ev.type == "keypad_unlocked" and current is not None:
        if current.message.state in ("throttled", "locked_out"):
            return None  # lifted (reset_lockout, or its time ran out): no countdown to keep
        return current
    if ev.type in _DOOR_EVENTS and current is not None and _about_granted_door(current, ev):
        return _granted_door_event(current, ev, now)
    if ev.type == "access_denied":
        if ev.data.get("aggregated"):
            return current  # the count of a burst that ended: each was shown when it came
        reason = str(ev.data.get("reason", ""))
        source = ev.data.get("source")
        return _refusal(reason, state, now, ev.compartment, str(source) if source else None)
    if ev.type == "keypad_throttled":
        return _refusal("throttled", state, now)
    if ev.type == "keypad_locked_out":
        return _refusal("locked_out", state, now)
    if ev.type == "door_jammed" and ev.data.get("purpose") != "remote":
        target = moved.get(ev.compartment)
        if target is not None:
            msg = Message(
                "denied",
                "jam_moved",
                target.compartment,
                "compartment_unavailable",
                other=ev.compartment,
            )
        else:
            msg = Message("denied", "jammed", ev.compartment, "compartment_unavailable")
        return Layer(msg, now + DENIED_HOLD_S * 2)
    return current


def _granted_door_event(current: Layer, ev: Out, now: float) -> Layer | None:
    """The outcome after an event about the door the outcome on show granted."""
    if ev.type == "door_opened":
        return Layer(Message("granted", OPENED, ev.compartment), current.until)
    if ev.type == "door_closed":
        return None  # the door this person opened is shut again: done
    if ev.type == "hardware_fault":
        # the unlock could not be sent: that door is not open, whatever was said a moment ago
        msg = Message(
            "denied", "denied.compartment_unavailable", ev.compartment, "compartment_unavailable"
        )
        return Layer(msg, now + DENIED_HOLD_S)
    return current  # pragma: no cover - only _DOOR_EVENTS come here


def _about_granted_door(current: Layer | None, ev: Out) -> bool:
    """Whether ``ev`` concerns the door the outcome on show granted."""
    return (
        current is not None
        and current.message.key in GRANTED_KEYS
        and ev.compartment is not None
        and current.message.compartment == ev.compartment
    )


def _door_message(state: LockerState, cid: str | None) -> Message:
    """The grant's message: "Door B3 is open" once it is seen open; until then (the coil
    pulsed, the door may still be jammed shut) "Door B3 is unlocked", never a promise the
    sensor has not kept."""
    comp = state.compartments.get(cid) if cid is not None else None
    opened = comp is not None and comp.door is DoorState.OPEN
    return Message("granted", OPENED if opened else UNLOCKED, cid)


def _refusal(
    reason: str,
    state: LockerState,
    now: float,
    compartment: str | None = None,
    source: str | None = None,
) -> Layer | None:
    if source == "scanner" and reason == "throttled":
        # too many scans (the scanner's own gate): no keypad back-off to count down
        msg = Message("throttled", "denied.qr.throttled", reason=reason, source=source)
        return Layer(msg, now + DENIED_HOLD_S)
    if reason == "throttled":
        until = state.throttle.blocked_until
        msg = _countdown(until, now, source)
        return Layer(msg, until) if until > now else None
    if reason == "already_used" and compartment is not None:
        # the code of the door that is open (or unlocked) right now: show that door again
        return Layer(_door_message(state, compartment), now + DENIED_HOLD_S)
    if reason == "locked_out":
        msg = Message("locked_out", "locked_out", reason=reason, source=source)
        return Layer(msg, now + DENIED_HOLD_S)
    if source == "scanner":
        key = f"denied.qr.{reason}" if reason in QR_REASONS else f"denied.{reason}"
        if reason not in REASONS:
            key = "denied.qr.other"
    else:
        key = f"denied.{reason}" if reason in REASONS else "denied.other"
    state_name = _STATE_OF_REASON.get(reason, "denied")
    msg = Message(state_name, key, compartment, reason or None, source=source)
    return Layer(msg, now + DENIED_HOLD_S)


def _repeated_refusals(
    before: Mapping[tuple[str, str], Burst], after: Mapping[tuple[str, str], Burst]
) -> list[tuple[tuple[str, str], Burst]]:
    """The (source, reason) refusals counted into a running burst by this transition: they
    made no ``access_denied`` event (``locker.cabinet.domain.refusals``), yet the person who
    scanned the same bad code again must be told again."""
    if after is before:
        return []
    out = []
    for key, burst in after.items():
        old = before.get(key)
        if old is not None and old.until == burst.until and burst.count > old.count:
            out.append((key, burst))
    return out


def _standing(state: LockerState, left_open: tuple[str, ...], now: float) -> tuple[Layer, ...]:
    layers: list[Layer] = []
    if state.throttle.locked_out:
        layers.append(Layer(Message("locked_out", "locked_out", reason="locked_out")))
    if state.lockdown:
        layers.append(Layer(Message("lockdown", "denied.lockdown", reason="lockdown")))
    until = state.throttle.blocked_until
    if until > now:
        layers.append(Layer(_countdown(until, now), until))
    if state.keypad.digits or state.keypad.overflow:
        layers.append(Layer(ENTRY))
    layers.extend(_granted_doors(state.compartments, left_open))
    layers.extend(Layer(Message("close_door", "close_door", cid)) for cid in left_open)
    return tuple(layers)


def _countdown(until: float, now: float, source: str | None = None) -> Message:
    return Message(
        "throttled",
        "throttled",
        reason="throttled",
        deadline=until,
        source=source,
        total_s=until - now,
    )


def _granted_doors(
    compartments: Mapping[str, Compartment], left_open: tuple[str, ...]
) -> tuple[Layer, ...]:
    """Doors a person was granted that are unlocked or open now: under any later message (a
    wrong code typed meanwhile lapses, and the door is named again) for ``GRANTED_HOLD_S``
    after it opened, or until its unlock is judged. Remembered per compartments table (only
    the controller thread projects), so a key typed does not visit every compartment."""

    def compute() -> tuple[Layer, ...]:
        layers = []
        for c in compartments.values():
            if c.pending is not None and c.pending.source in _PERSON_SOURCES:
                layers.append(Layer(Message("granted", UNLOCKED, c.id), c.pending.deadline))
            elif (
                c.session is not None
                and c.session.source in _PERSON_SOURCES
                and c.door is DoorState.OPEN
                and c.open_since is not None
            ):
                msg = Message("granted", OPENED, c.id)
                layers.append(Layer(msg, c.open_since + GRANTED_HOLD_S))
        return tuple(layers)

    layers = earliest("granted_doors", (compartments,), compute)
    return tuple(x for x in layers if x.message.compartment not in left_open)
