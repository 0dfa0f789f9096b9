"""What the front panel says around a door opening, a lifted lock-out, a language number that
does not exist, and a countdown (the pure projection, driven by the real state machine).

Reported: after ``reset_lockout`` the countdown went on to the old deadline; a wrong entry
while B2 stood open replaced "Door B2 is open"; "Door B4 is open." showed while the door was
still jammed shut; ``**4`` with three languages did nothing; the voice said "27 s" as
"twenty-seven ess" and German "#" as "Nummer"; a 30 s back-off counted down from 31.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from locker.cabinet.domain import machine
from locker.cabinet.domain.draft import Transition
from locker.cabinet.domain.model import Throttle
from locker.cabinet.panel import texts
from locker.cabinet.panel.hub import PanelHub
from locker.cabinet.panel.view import DENIED_HOLD_S, GRANTED_HOLD_S, Message, PanelView, project
from locker.cabinet.panel.web import payload
from locker.ports import DoorChanged, DoorState, KeyPressed, UnlockResult
from tests.domain import Sim, command, limits


class Panel:
    """A ``Sim`` whose every transition is projected, as the controller's hub does."""

    def __init__(self, **rules: Any) -> None:
        self.sim = Sim(**rules)
        self.view = PanelView()
        self.views: list[PanelView] = []

    def feed(self, *inputs: object) -> Message:
        for inp in inputs:
            tr: Transition = self.sim.feed(inp)
            self.view = project(self.view, tr, self.sim.now, 3)
            self.views.append(self.view)
        return self.message()

    def type_code(self, code: str) -> Message:
        return self.feed(*(KeyPressed(k) for k in code + "#"))

    def door(self, cid: str, state: str) -> Message:
        return self.feed(DoorChanged(cid, DoorState(state)))

    def advance(self, seconds: float) -> Message:
        self.sim.now += seconds
        return self.feed(machine.Tick())

    def message(self, later: float = 0.0) -> Message:
        return self.view.message(self.sim.now + later)


def _consistent(views: list[PanelView], now: float) -> None:
    """Every message on show: a grant names its door and carries no refusal reason; a
    refusal carries its reason."""
    for v in views:
        for m in (v.outcome.message if v.outcome else None, *(x.message for x in v.standing)):
            if m is None:
                continue
            if m.state == "granted":
                assert m.reason is None and m.compartment, m
            if m.state == "denied":
                assert m.reason, m


def test_the_door_is_unlocked_until_it_is_seen_open_then_open() -> None:
    p = Panel()
    cid, drop, _ = p.sim.assign("P1", "M")
    assert p.type_code(drop) == Message("granted", "unlocked", cid)
    assert "unlocked" in texts.render(p.message(), "en", p.sim.now)
    assert p.door(cid, "open") == Message("granted", "granted", cid)
    assert p.door(cid, "closed").state == "idle"
    _consistent(p.views, p.sim.now)


def test_a_door_jammed_shut_never_read_open() -> None:
    p = Panel()
    cid, drop, _ = p.sim.assign("P1", "M")
    p.type_code(drop)
    for _ in range(3):  # 3 s into the 10 s door-open window: still only unlocked
        assert p.advance(1).key == "unlocked"
    msg = p.advance(8)  # not seen open in time: a jam, the parcel moved
    assert msg.key == "jam_moved" and msg.other == cid and msg.reason == "compartment_unavailable"
    _consistent(p.views, p.sim.now)


def test_an_unlock_that_could_not_be_sent_is_not_shown_as_open() -> None:
    p = Panel()
    cid, drop, _ = p.sim.assign("P1", "M")
    p.type_code(drop)
    msg = p.feed(UnlockResult(cid, sent=False, detail="bus down"))
    assert (msg.state, msg.reason, msg.compartment) == ("denied", "compartment_unavailable", cid)
    _consistent(p.views, p.sim.now)


def test_a_wrong_entry_while_a_door_is_open_leaves_that_door_on_show() -> None:
    p = Panel()
    cid, drop, _ = p.sim.assign("P1", "M")
    p.type_code(drop)
    p.door(cid, "open")
    msg = p.type_code("12345678")  # someone types a wrong code while B-door stands open
    assert (msg.state, msg.reason) == ("denied", "unknown_code")
    hub = PanelHub(["en"], "en")
    snap = dataclasses.replace(hub.latest, view=p.view)
    assert payload(snap, p.sim.now)["door"] == cid  # the big door number stays
    # once the refusal lapses, the open door is named again
    assert p.message(DENIED_HOLD_S + 0.1) == Message("granted", "granted", cid)
    assert p.view.message(p.sim.now + GRANTED_HOLD_S + 1).state == "idle"
    _consistent(p.views, p.sim.now)


def test_the_code_of_the_open_door_typed_again_names_the_door() -> None:
    p = Panel(limits=limits(failures_before_backoff=2))
    cid, drop, _ = p.sim.assign("P1", "M")
    p.type_code(drop)
    p.door(cid, "open")
    for _ in range(5):  # the first is an event, the rest are counted in a burst
        assert p.type_code(drop) == Message("granted", "granted", cid)
    assert p.sim.state.throttle == Throttle()
    p.door(cid, "closed")
    msg = p.type_code(drop)
    assert (msg.state, msg.key, msg.reason) == ("denied", "denied.already_used", "already_used")
    assert "already been used" in texts.render(msg, "en", p.sim.now)
    _consistent(p.views, p.sim.now)


def test_reset_lockout_ends_the_countdown_at_once() -> None:
    p = Panel(limits=limits(failures_before_backoff=2))
    for i in range(2):
        msg = p.type_code(f"{90000000 + i}")
    assert msg.state == "throttled" and msg.deadline is not None
    assert texts.remaining_s(msg, p.sim.now) == 30
    # the surface's wall clock a little behind the domain clock: never 31 for a 30 s delay
    assert texts.remaining_s(msg, p.sim.now - 0.4) == 30
    p.feed(command("reset_lockout", p.sim.now))
    assert p.message().state == "idle"
    assert p.message(5).state == "idle"


def test_a_language_number_beyond_the_offered_ones_is_answered() -> None:
    p = Panel()
    msg = p.feed(KeyPressed("*"), KeyPressed("*"), KeyPressed("4"))
    assert (msg.state, msg.key, msg.other) == ("denied", "language.unknown", "3")
    assert "1 to 3" in texts.render(msg, "en", p.sim.now)
    assert p.sim.state.throttle == Throttle()


def test_the_voice_says_seconds_and_names_the_keys() -> None:
    msg = Message("throttled", "throttled", reason="throttled", deadline=1027.0, total_s=30.0)
    assert "in 27 seconds." in texts.render(msg, "en", 1000.0, spoken=True)
    assert "27 s." in texts.render(msg, "en", 1000.0)  # the screen keeps its short unit
    assert "in 27 Sekunden" in texts.render(msg, "de", 1000.0, spoken=True)
    assert "za 27 sekund" in texts.render(msg, "pl", 1000.0, spoken=True)
    assert "za 22 sekundy" in texts.render(msg, "pl", 1005.0, spoken=True)
    idle = Message("idle", "idle")
    assert "Rautetaste" in texts.render(idle, "de", 0.0, spoken=True)
    assert "#" not in texts.render(idle, "de", 0.0, spoken=True)
    assert "krzyżyk" in texts.render(idle, "pl", 0.0, spoken=True)
    assert "#" in texts.render(idle, "de", 0.0)
