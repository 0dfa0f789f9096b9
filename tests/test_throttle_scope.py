"""Issue 11 items 1-5 and 22 (domain): who the keypad throttle guards, and what refusals cost.

Pure: the machine is driven with plain values and a fake clock (``Sim.now``)."""

from __future__ import annotations

import itertools
import random

import pytest

from locker.cabinet.domain import machine, throttle
from locker.cabinet.domain.draft import IndicateAction
from locker.cabinet.domain.model import Throttle
from locker.config.sections import Security
from locker.ports import (
    REFUSAL_FEEDBACK,
    Feedback,
    InputRejected,
    InputSource,
    KeyPressed,
    LineScanned,
)
from tests.domain import T0, Sim, command, limits, only

GUESSER = limits(failures_before_backoff=5, hard_lockout=100, max_per_hour=30)


def _guess(sim: Sim, n: int) -> None:
    for i in range(n):
        sim.type_code(f"{90000000 + i}")


def test_keypad_guessing_never_refuses_a_signed_qr_token() -> None:
    # item 1: five wrong codes used to make a valid QR pickup fail with `throttled`
    sim = Sim(limits=GUESSER)
    cid, _ = sim.deposit("P1")
    _guess(sim, 6)
    assert "keypad_throttled" in sim.types()
    sim.feed(LineScanned(sim.keys.token("P1", 1, T0 - 60, T0 + 86400)))
    assert sim.unlocks()[-1] == cid
    assert sim.types()[-1] == "access_granted"


def test_keypad_lock_out_never_refuses_a_signed_qr_token() -> None:
    # item 1: `locked_out` from keypad guessing used to refuse QR tokens too
    sim = Sim(limits=limits(failures_before_backoff=100, hard_lockout=3))
    cid, _ = sim.deposit("P1")
    _guess(sim, 3)
    assert sim.state.throttle.locked_out
    sim.feed(LineScanned(sim.keys.token("P1", 1, T0 - 60, T0 + 86400)))
    assert sim.unlocks()[-1] == cid
    assert sim.state.throttle.locked_out  # a QR success says nothing about keypad guessing


def test_bad_scans_never_count_against_the_keypad() -> None:
    sim = Sim(limits=GUESSER)
    sim.deposit("P1")
    token = sim.keys.token("P1", 1, T0 - 60, T0 + 86400)
    forged = token[:-2] + ("00" if token[-2:] != "00" else "11")
    for _ in range(50):
        sim.feed(LineScanned(forged))
    assert sim.state.throttle == Throttle()
    assert "keypad_throttled" not in sim.types()


def test_a_flood_of_bad_scans_is_refused_unread_and_reported_once_per_burst() -> None:
    sim = Sim()
    cid, _ = sim.deposit("P1")
    start = len(sim.events)
    for _ in range(500):
        sim.feed(LineScanned("HELLO WORLD"))
    denied = only(sim.events[start:], "access_denied")
    assert [(e.data["reason"], e.data.get("detail")) for e in denied] == [
        ("malformed", None),
        ("throttled", "scan_flood"),
    ]
    # cooling off bounds the work, briefly: a real token goes through soon after
    sim.now += throttle.SCAN_COOL_S
    sim.feed(LineScanned(sim.keys.token("P1", 1, T0 - 60, T0 + 86400)))
    assert sim.unlocks()[-1] == cid
    sim.advance(machine.REFUSAL_BURST_S)
    summary = [e.data for e in only(sim.events[start:], "access_denied") if "count" in e.data]
    assert {(d["reason"], d["count"]) for d in summary} == {
        ("malformed", throttle.SCAN_BURST),
        ("throttled", 500 - throttle.SCAN_BURST - 1 - 1),
    }


def test_twelve_hash_seven_times_is_malformed_never_a_guess() -> None:
    # item 2: `12#` x7 used to give five access_denied and then keypad_throttled
    sim = Sim(limits=GUESSER)
    start = len(sim.events)
    for _ in range(7):
        sim.type_code("12")
    assert "keypad_throttled" not in sim.types(start)
    assert [e.data["reason"] for e in only(sim.events[start:], "access_denied")] == ["malformed"]
    assert sim.state.throttle.consecutive == 0
    sim.advance(machine.REFUSAL_BURST_S)
    assert only(sim.events[start:], "access_denied")[-1].data["count"] == 6


@pytest.mark.parametrize("entry", ["", "1", "1234567", "123456789", "1" * 40])
def test_only_code_length_entries_can_be_guesses(entry: str) -> None:
    sim = Sim(limits=GUESSER)
    for _ in range(20):
        sim.type_code(entry)
    assert sim.state.throttle.consecutive == 0
    expected = [] if entry == "" else ["malformed"]  # an empty entry is nothing at all
    assert [e.data["reason"] for e in only(sim.events, "access_denied")] == expected


def test_code_length_follows_the_rules() -> None:
    sim = Sim(code_length=6, limits=GUESSER)
    sim.type_code("12345678")
    assert sim.state.throttle.consecutive == 0
    sim.type_code("123456")
    assert sim.state.throttle.consecutive == 1


def test_500_random_keypad_bytes_make_at_most_a_handful_of_events() -> None:
    # item 2: 500 random bytes on the serial keypad used to give 29 access_denied events. The
    # serial keypad turns digits, * and # into keys, CR/LF into #, anything else into
    # InputRejected; this is the same stream as the machine sees it.
    rnd = random.Random(11)
    sim = Sim(limits=GUESSER)
    cid, drop, _ = sim.assign("P1")
    start = len(sim.events)
    for b in rnd.randbytes(500):
        ch = chr(b)
        if ch in "0123456789*#":
            sim.feed(KeyPressed(ch))
        elif ch in "\r\n":
            sim.feed(KeyPressed("#"))
        else:
            sim.feed(InputRejected(InputSource.KEYPAD, "bad byte"))
    denied = only(sim.events[start:], "access_denied")
    assert len(denied) <= 3, [e.data for e in denied]
    assert "keypad_locked_out" not in sim.types(start)
    assert "keypad_throttled" not in sim.types(start)
    sim.advance(sim.rules.keypad_entry_timeout_s)  # the half entry left behind times out
    sim.type_code(drop)  # the next courier is not locked out
    assert sim.unlocks() == [cid]


def test_a_burst_of_ten_thousand_refusals_is_two_events_a_minute() -> None:
    # item 22: `1#` typed 10,000 times a second gave ~48,000 events
    sim = Sim(limits=GUESSER)
    start = len(sim.events)
    for i in range(20_000):
        sim.now = T0 + i / 1000
        sim.feed(KeyPressed("1"), KeyPressed("#"))
    sim.advance(machine.REFUSAL_BURST_S)
    denied = only(sim.events[start:], "access_denied")
    assert len(denied) == 2
    assert sum(e.data.get("count", 1) for e in denied) == 20_000


def test_pickup_code_before_deposit_never_locks_out() -> None:
    # item 3
    sim = Sim(limits=limits(failures_before_backoff=2, hard_lockout=3))
    cid, drop, pick = sim.assign("P1")
    for _ in range(10):
        sim.type_code(pick)
    assert not sim.state.throttle.locked_out
    assert {e.data["reason"] for e in only(sim.events, "access_denied")} == {"not_yet_available"}
    sim.type_code(drop)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    sim.type_code(pick)
    assert sim.unlocks() == [cid, cid]


def test_hard_lock_out_ends_by_itself_after_lockout_s() -> None:
    # item 4: a lock-out used to last until a signed reset, however long the locker is offline
    sim = Sim(limits=limits(failures_before_backoff=100, hard_lockout=3, lockout_s=600))
    cid, drop, _ = sim.assign("P1")
    _guess(sim, 3)
    locked = only(sim.events, "keypad_locked_out")
    assert len(locked) == 1 and locked[0].data["lockout_s"] == 600
    assert machine.next_deadline(sim.state, sim.rules) == T0 + 600
    sim.advance(599)
    sim.type_code(drop)
    assert sim.unlocks() == []
    assert only(sim.events, "access_denied")[-1].data["reason"] == "locked_out"
    sim.advance(1)
    assert only(sim.events, "keypad_unlocked")[-1].data == {"by": "timeout"}
    sim.type_code(drop)
    assert sim.unlocks() == [cid]


def test_a_reset_ends_a_lock_out_before_its_time() -> None:
    sim = Sim(limits=limits(failures_before_backoff=100, hard_lockout=3))
    _guess(sim, 3)
    sim.feed(command("reset_lockout", sim.now))
    assert not sim.state.throttle.locked_out
    assert machine.next_deadline(sim.state, sim.rules) is None
    sim.advance(sim.rules.limits.lockout_s)
    assert len(only(sim.events, "keypad_unlocked")) == 1  # no second unlock by timeout


def test_the_default_lock_out_lasts_four_hours() -> None:
    assert Security.model_fields["lockout_s"].default == 4 * 3600


def _feedback(sim: Sim) -> list[Feedback]:
    fbs = (
        [a.feedback for a in sim.last.actions if isinstance(a, IndicateAction)] if sim.last else []
    )
    return [f for f in fbs if f is not Feedback.KEY]


def test_each_refusal_reason_has_its_own_feedback() -> None:
    # item 5: every refusal sounded the same except "throttled"
    sim = Sim(limits=limits(failures_before_backoff=2, hard_lockout=3))
    _, _, pick = sim.assign("P1")
    seen: dict[str, list[Feedback]] = {}
    sim.type_code("12")
    seen["malformed"] = _feedback(sim)
    sim.type_code(pick)
    seen["not_yet_available"] = _feedback(sim)
    sim.feed(LineScanned(sim.keys.token("P1", 2, T0 - 60, T0 + 60, locker_id="OTHER")))
    seen["wrong_locker"] = _feedback(sim)
    sim.feed(LineScanned(sim.keys.token("P1", 2, T0 + 600, T0 + 6000)))
    seen["not_yet_valid"] = _feedback(sim)
    sim.type_code("11112222")
    seen["unknown_code"] = _feedback(sim)
    for reason, fbs in seen.items():
        assert fbs == [Feedback(reason)], reason


def test_feedback_members_cover_every_refusal_reason() -> None:
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    common = Path(machine.__file__).parents[2] / "contract" / "schemas" / "common.json"
    reasons = json.loads(common.read_text())["$defs"]["denied_reason"]["enum"]
    assert {str(f) for f in REFUSAL_FEEDBACK} >= set(reasons)
    assert len(set(itertools.chain(REFUSAL_FEEDBACK))) == len(REFUSAL_FEEDBACK)


def test_an_entry_that_lost_keys_to_shedding_is_dropped_not_guessed() -> None:
    # `1#` floods with some `#` shed used to leave runs like "11111111": phantom guesses
    sim = Sim(limits=limits(failures_before_backoff=1, hard_lockout=2))
    sim.feed(*[KeyPressed("1") for _ in range(4)])
    sim.feed(InputRejected(InputSource.KEYPAD, "overload"))  # the inbox's in-band mark
    sim.feed(*[KeyPressed("1") for _ in range(4)], KeyPressed("#"))
    assert sim.state.throttle.consecutive == 0
    assert {e.data["reason"] for e in only(sim.events, "access_denied")} == {"malformed"}
