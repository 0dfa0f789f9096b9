"""The machine's expiry fast path (issue 10) changes nothing but its cost.

``machine.step`` skips the expiry pass while nothing but the keypad entry can be due
(``_quiet_until``, remembered per table object). Every input of a random program is fed to
two machines in lockstep, one with the fast path and one with the full pass forced on every
step, across every kind of deadline (entry time-out, refusal bursts, unlock judged, door left
open, drop-off and pickup windows, retrieval codes forgotten): the transitions must be equal.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locker.cabinet.domain import machine
from locker.cabinet.domain.draft import Draft, Transition
from locker.cabinet.domain.model import LockerState, fresh_state
from locker.ports import DoorChanged, DoorState, KeyPressed, LineScanned
from tests.domain import SIZES, T0, Keys, command, rules

PARCELS = 4
WAITS = (0.5, 9.0, 11.0, 21.0, 61.0, 130.0, 49 * 3600.0, 73 * 3600.0, 200 * 3600.0)

op = st.one_of(
    st.tuples(st.just("assign"), st.integers(0, PARCELS - 1), st.sampled_from(["S", "M", "L"])),
    st.tuples(st.just("code"), st.integers(0, PARCELS - 1), st.sampled_from(["drop", "pick"])),
    st.tuples(st.just("wrong"), st.integers(0, 99)),
    st.tuples(st.just("key"), st.sampled_from(list("0123456789*#"))),
    st.tuples(st.just("door"), st.sampled_from(sorted(SIZES)), st.sampled_from(["open", "closed"])),
    st.tuples(st.just("wait"), st.sampled_from(WAITS), st.booleans()),
    st.tuples(st.just("scan"), st.sampled_from(["garbage", "LK1:zz"])),
)


def _codes(i: int) -> dict[str, str]:
    return {"drop": f"1{i:07d}", "pick": f"2{i:07d}"}


def _inputs(o: tuple[Any, ...], keys: Keys, now: float) -> list[Any]:
    kind = o[0]
    if kind == "assign":
        codes = _codes(o[1])
        return [
            command(
                "assign",
                now,
                parcel=f"P{o[1]}",
                kind="delivery",
                size=o[2],
                dropoff_tag=keys.tag(codes["drop"]),
                pickup_tag=keys.tag(codes["pick"]),
            )
        ]
    if kind == "code":
        return [KeyPressed(k) for k in _codes(o[1])[o[2]] + "#"]
    if kind == "wrong":
        return [KeyPressed(k) for k in f"9{o[1]:07d}#"]
    if kind == "key":
        return [KeyPressed(o[1])]
    if kind == "door":
        return [DoorChanged(o[1], DoorState(o[2]))]
    if kind == "scan":
        return [LineScanned(o[1])]
    return [machine.Tick()] if o[2] else []


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@settings(max_examples=150, deadline=None)
@given(program=st.lists(op, min_size=1, max_size=60))
def test_fast_path_and_full_pass_make_the_same_transitions(
    keys: Keys, program: list[tuple[Any, ...]]
) -> None:
    r = rules(keys)
    boot = machine.Boot(dict.fromkeys(SIZES, DoorState.CLOSED), {}, "test")
    fast: LockerState = machine.step(fresh_state(SIZES), boot, r, T0).state
    full = fast
    now = T0
    quiet_until = machine._quiet_until
    for o in program:
        if o[0] == "wait":
            now += o[1]
        for inp in _inputs(o, keys, now):
            a = machine.step(fast, inp, r, now)
            machine._quiet_until = lambda state, rules: -math.inf
            try:
                b = machine.step(full, inp, r, now)
            finally:
                machine._quiet_until = quiet_until
            _same(a, b, o)
            fast, full = a.state, b.state
        now += 0.05


def _same(a: Transition, b: Transition, o: tuple[Any, ...]) -> None:
    assert a.events == b.events, o
    assert a.actions == b.actions, o
    assert a.state == b.state, o


def test_a_table_cannot_be_put_whole_into_a_draft() -> None:
    """``Draft.finish`` skips ``LockerState.__post_init__`` (``draft._evolve``): that is sound
    only while tables change row by row, so ``put`` refuses a table."""
    d = Draft(fresh_state(SIZES))
    for name in ("credentials", "tokens", "commands", "spent", "compartments", "parcels"):
        with pytest.raises(TypeError, match="table"):
            d.put(name, {})
    d.put("lockdown", True)
    assert d.finish().state.lockdown is True
