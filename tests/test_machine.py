"""The state machine's flows, driven with plain values (no fakes, no clock, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import base45
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locker.cabinet.domain import machine
from locker.cabinet.domain.draft import IndicateAction, ReplyAction, Transition
from locker.cabinet.domain.model import Occupancy, ParcelStatus
from locker.ports import (
    DoorState,
    Feedback,
    InputRejected,
    InputSource,
    ItemChanged,
    KeyPressed,
    LineScanned,
)
from tests.domain import T0, Sim, command, limits, only


def _flip_last_bit(token: str) -> str:
    raw = bytearray(base45.b45decode(token[4:]))
    raw[-1] ^= 1
    return "LK1:" + str(base45.b45encode(bytes(raw)).decode())


def last_reply(transition: Transition) -> Mapping[str, Any]:
    """The reply document of a command's transition (its last action)."""
    action = transition.actions[-1]
    assert isinstance(action, ReplyAction)
    return action.reply


def test_delivery_dropoff_then_pickup_emits_the_whole_story_in_order() -> None:
    sim = Sim()
    start = len(sim.events)
    cid, drop, pick = sim.assign("P1", "M")
    assert cid == "B1"  # smallest fitting, config order
    sim.type_code(drop)
    assert sim.unlocks() == ["B1"]
    sim.door(cid, "open")
    sim.door(cid, "closed")
    assert sim.state.occupancy(sim.state.compartments[cid]) is Occupancy.OCCUPIED
    sim.type_code(pick)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    assert sim.types(start) == [
        "parcel_reserved",
        "access_granted",
        "door_opened",
        "door_closed",
        "parcel_deposited",
        "access_granted",
        "door_opened",
        "door_closed",
        "parcel_collected",
    ]
    assert sim.unlocks() == ["B1", "B1"]
    assert sim.state.compartments[cid].parcel is None
    assert sim.state.credentials == {}


def test_events_name_compartment_and_parcel_at_top_level() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.type_code(drop)
    granted = only(sim.events, "access_granted")[0]
    assert (granted.compartment, granted.parcel) == (cid, "P1")
    assert granted.data["source"] == "keypad"


def test_a_code_opens_once() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.type_code(drop)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    sim.type_code(drop)
    assert sim.unlocks() == [cid]
    assert only(sim.events, "access_denied")[-1].data["reason"] == "already_used"
    assert sim.state.throttle.consecutive == 0  # a used code is no guess


def test_pickup_code_before_the_deposit_is_not_yet_available_and_not_a_guess() -> None:
    # issue 11 item 3: a customer typing their real code early is not guessing
    sim = Sim()
    _, _, pick = sim.assign("P1")
    for _ in range(10):
        sim.type_code(pick)
    assert sim.unlocks() == []
    assert only(sim.events, "access_denied")[0].data["reason"] == "not_yet_available"
    assert sim.state.throttle.consecutive == 0
    assert "keypad_throttled" not in sim.types()
    assert sim.actions[-1] == IndicateAction(Feedback.NOT_YET_AVAILABLE)


def test_wrong_codes_back_off_then_lock_out_and_a_reset_lifts_it() -> None:
    sim = Sim(limits=limits(failures_before_backoff=3, hard_lockout=6, max_per_hour=100))
    for _ in range(3):
        sim.type_code("11112222")
    assert sim.types()[-1] == "keypad_throttled"
    assert only(sim.events, "keypad_throttled")[0].data["delay_s"] == 30
    # While blocked, input is refused unevaluated and does not count.
    sim.type_code("11112222")
    assert only(sim.events, "access_denied")[-1].data["reason"] == "throttled"
    assert sim.state.throttle.consecutive == 3
    for delay in (30, 60, 120):
        sim.advance(delay)
        sim.type_code("11112222")
    assert sim.state.throttle.locked_out
    assert "keypad_locked_out" in sim.types()
    sim.advance(10_000)
    sim.type_code("11112222")
    assert only(sim.events, "access_denied")[-1].data["reason"] == "locked_out"
    sim.feed(command("reset_lockout", sim.now))
    assert sim.types()[-1] == "keypad_unlocked"
    assert not sim.state.throttle.locked_out


def test_hourly_failure_cap_locks_out() -> None:
    sim = Sim(limits=limits(failures_before_backoff=100, hard_lockout=100, max_per_hour=4))
    for _ in range(5):
        sim.type_code("99998888")
        sim.advance(60)
    assert sim.state.throttle.locked_out


def test_a_right_code_resets_the_consecutive_count() -> None:
    sim = Sim()
    _, drop, _ = sim.assign("P1")
    for _ in range(4):
        sim.type_code("12341234")
    sim.type_code(drop)
    assert sim.state.throttle.consecutive == 0
    assert len(sim.unlocks()) == 1


def test_star_clears_and_entry_times_out() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.feed(*[KeyPressed(k) for k in "999*"])
    sim.feed(*[KeyPressed(k) for k in drop[:4]])
    sim.advance(21)  # entry timeout: the half-typed code is dropped
    sim.feed(*[KeyPressed(k) for k in drop[4:] + "#"])
    assert sim.unlocks() == []
    sim.type_code(drop)
    assert sim.unlocks() == [cid]


def test_overlong_and_short_entries_are_malformed_in_one_burst() -> None:
    sim = Sim()
    sim.type_code("1" * 40)
    sim.type_code("12")
    reasons = [e.data["reason"] for e in only(sim.events, "access_denied")]
    assert reasons == ["malformed"]  # the second one is counted into the burst
    assert len(sim.state.keypad.digits) == 0
    assert sim.state.throttle.consecutive == 0
    sim.advance(machine.REFUSAL_BURST_S)
    summary = only(sim.events, "access_denied")[-1]
    assert summary.data["count"] == 1
    assert summary.data["aggregated"] is True


def test_qr_pickup_and_replay() -> None:
    sim = Sim()
    cid, _pick_code = sim.deposit("P1")
    token = sim.keys.token("P1", 1, T0 - 60, T0 + 86400)
    sim.feed(LineScanned(token))
    assert sim.unlocks()[-1] == cid
    sim.door(cid, "open")
    sim.door(cid, "closed")
    assert sim.types()[-1] == "parcel_collected"
    sim.feed(LineScanned(token))
    assert only(sim.events, "access_denied")[-1].data["reason"] == "unknown_code"
    assert sim.unlocks().count(cid) == 2  # drop-off + one pickup


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s.keys.token("P1", 1, T0 + 3600, T0 + 7200), "not_yet_valid"),
        (lambda s: s.keys.token("P1", 1, T0 - 7200, T0 - 3600), "expired"),
        (lambda s: s.keys.token("P1", 1, T0 - 60, T0 + 60, locker_id="OTHER"), "wrong_locker"),
        (lambda s: _flip_last_bit(s.keys.token("P1", 1, T0 - 60, T0 + 60)), "bad_signature"),
        (lambda s: "HELLO WORLD", "malformed"),
        (lambda s: s.keys.token("P1", 1, T0 - 60, T0 + 60, kid=9), "bad_signature"),
    ],
)
def test_qr_rejections(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    sim = Sim()
    sim.deposit("P1")
    sim.feed(LineScanned(mutate(sim)))
    denied = only(sim.events, "access_denied")[-1]
    assert denied.data == {"reason": reason, "source": "scanner"} | (
        {"detail": denied.data["detail"]} if "detail" in denied.data else {}
    )
    assert len(sim.unlocks()) == 1


def test_lockdown_refuses_everything_until_lifted() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.feed(command("lockdown", sim.now, on=True))
    sim.type_code(drop)
    sim.feed(command("open", sim.now, compartment="A1", reason="test"))
    assert sim.unlocks() == []
    assert only(sim.events, "access_denied")[-1].data["reason"] == "lockdown"
    sim.feed(command("lockdown", sim.now, on=False))
    sim.type_code(drop)
    assert sim.unlocks() == [cid]


def test_jammed_dropoff_moves_the_parcel_and_takes_the_compartment_out() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1", "S")
    sim.type_code(drop)
    sim.advance(11)
    assert "door_jammed" in sim.types()
    assert not sim.state.compartments[cid].in_service
    moved = only(sim.events, "parcel_reserved")[-1]
    assert moved.data["moved_from"] == cid and moved.compartment == "A2"
    sim.type_code(drop)  # the same code now opens the new compartment
    assert sim.unlocks() == [cid, "A2"]


def test_jammed_pickup_retries_at_most_three_pulses() -> None:
    sim = Sim()
    cid, pick = sim.deposit("P1")
    for _ in range(4):
        sim.type_code(pick)
        sim.advance(11)
    assert sim.unlocks().count(cid) == 1 + 3
    assert len(only(sim.events, "door_jammed")) == 3
    assert not sim.state.compartments[cid].in_service
    assert only(sim.events, "access_denied")[-1].data["reason"] == "out_of_service"


def test_door_forced_and_left_open_alarms_repeat() -> None:
    sim = Sim()
    sim.door("C1", "open")
    assert sim.types()[-2:] == ["door_opened", "door_forced"]
    sim.advance(121)
    sim.advance(121)
    assert len(only(sim.events, "door_left_open")) == 2
    sim.door("C1", "closed")
    sim.advance(500)
    assert len(only(sim.events, "door_left_open")) == 2


def test_pickup_expiry_then_courier_retrieval() -> None:
    sim = Sim()
    cid, pick = sim.deposit("P1")
    sim.advance(72 * 3600 + 1)
    assert sim.types()[-1] == "pickup_expired"
    assert sim.state.occupancy(sim.state.compartments[cid]) is Occupancy.EXPIRED
    sim.type_code(pick)
    assert only(sim.events, "access_denied")[-1].data["reason"] == "expired"
    assert sim.state.throttle.consecutive == 0  # a known code is never a guess
    courier = "55554444"
    sim.feed(
        command(
            "retrieve",
            sim.now,
            parcel="P1",
            code_tag=sim.keys.tag(courier),
            valid_until=int(sim.now + 3600),
        )
    )
    sim.type_code(courier)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    assert sim.types()[-1] == "parcel_retrieved"
    assert sim.state.compartments[cid].parcel is None


def test_extend_after_expiry_rearms_pickup() -> None:
    sim = Sim()
    cid, pick = sim.deposit("P1")
    sim.advance(72 * 3600 + 1)
    sim.feed(command("extend", sim.now, parcel="P1", pickup_until=int(sim.now + 3600)))
    sim.type_code(pick)
    assert sim.unlocks()[-1] == cid


@pytest.mark.parametrize(
    ("after_now", "until", "why"),
    [
        (20, 0, "earlier than the window's end"),  # now + 20 s with 72 h left: a shortening
        (0, 4294967295, "h from now"),  # 2106: past the contract's longest pickup window
    ],
)
def test_extend_never_shortens_the_window_nor_sets_one_past_the_bound(
    after_now: int, until: int, why: str
) -> None:
    """Found by a newcomer: extend to now + 20 s on a parcel with 72 h left was done, and
    pickup_expired locked the customer out 25 s later; 2106 was accepted too."""
    sim = Sim()
    cid, pick = sim.deposit("P1")
    window = sim.state.parcels["P1"].pickup_until
    assert window is not None and window > sim.now + 71 * 3600
    asked = int(sim.now) + after_now if after_now else until
    t = sim.feed(command("extend", sim.now, parcel="P1", pickup_until=asked))
    reply = last_reply(t)
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "invalid_args" and why in reply["error"]["message"]
    assert sim.state.parcels["P1"].pickup_until == window  # unchanged
    sim.advance(30)
    assert "pickup_expired" not in sim.types()
    # the same window's end again is fine (a retry), and the code still opens
    ok = sim.feed(command("extend", sim.now, parcel="P1", pickup_until=int(window)))
    assert last_reply(ok)["status"] == "done"
    sim.type_code(pick)
    assert sim.unlocks()[-1] == cid


def test_dropoff_window_expiry_releases_the_compartment() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1", dropoff_until=int(T0 + 600))
    sim.advance(601)
    assert only(sim.events, "assignment_cancelled")[-1].data["reason"] == "dropoff_expired"
    assert sim.state.compartments[cid].parcel is None
    sim.type_code(drop)
    assert sim.unlocks() == []


def test_cancel_before_and_after_deposit() -> None:
    sim = Sim()
    cid, _, _ = sim.assign("P1")
    sim.feed(command("cancel", sim.now, parcel="P1"))
    assert sim.state.compartments[cid].parcel is None
    _cid2, pick = sim.deposit("P2")
    sim.feed(command("cancel", sim.now, parcel="P2"))
    assert sim.state.parcels["P2"].status is ParcelStatus.CANCELLED
    sim.type_code(pick)
    denied = only(sim.events, "access_denied")[-1]
    assert (denied.data["reason"], denied.data["detail"]) == ("expired", "cancelled")


def test_return_flow_uses_the_same_steps() -> None:
    sim = Sim()
    cid, drop, pick = sim.assign("R1", kind="return")
    sim.type_code(drop)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    sim.type_code(pick)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    collected = only(sim.events, "parcel_collected")[-1]
    assert collected.data["kind"] == "return"


def test_item_sensor_empty_deposit_keeps_the_code_and_left_item_blocks() -> None:
    sim = Sim()
    cid, drop, pick = sim.assign("P1")
    sim.feed(ItemChanged(cid, False))
    sim.type_code(drop)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    assert sim.types()[-1] == "deposit_empty"
    sim.feed(ItemChanged(cid, True))
    sim.type_code(drop)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    assert sim.types()[-1] == "parcel_deposited"
    sim.type_code(pick)
    sim.door(cid, "open")
    sim.door(cid, "closed")  # item still seen inside
    assert sim.types()[-1] == "item_left_behind"
    assert sim.state.parcels["P1"].status is ParcelStatus.DEPOSITED


def test_commands_run_once_and_duplicates_get_the_stored_result() -> None:
    sim = Sim()
    cmd = command(
        "assign",
        sim.now,
        parcel="P1",
        kind="delivery",
        size="S",
        dropoff_tag=sim.keys.tag("12345678"),
        pickup_tag=sim.keys.tag("87654321"),
    )
    first = sim.feed(cmd).actions[-1].reply  # type: ignore[union-attr]
    again = sim.feed(cmd).actions[-1].reply  # type: ignore[union-attr]
    assert first["status"] == "done" and again["status"] == "duplicate"
    assert again["result"] == first["result"]
    assert len(only(sim.events, "parcel_reserved")) == 1


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"parcel": "P1", "size": "S"}, "duplicate_parcel"),
        ({"parcel": "P9", "size": "XL", "compartment": "A2"}, "no_compartment"),
    ],
)
def test_assign_refusals(args, code) -> None:  # type: ignore[no-untyped-def]
    sim = Sim()
    sim.assign("P1")
    reply = last_reply(
        sim.feed(
            command(
                "assign",
                sim.now,
                kind="delivery",
                dropoff_tag=sim.keys.tag("11223344"),
                pickup_tag=sim.keys.tag("44332211"),
                **args,
            )
        )
    )
    assert reply["status"] == "rejected" and reply["error"]["code"] == code
    assert sim.types()[-1] == "command_rejected"


def test_code_collision_is_refused() -> None:
    sim = Sim()
    tag = sim.keys.tag("12121212")
    sim.feed(
        command(
            "assign",
            sim.now,
            parcel="P1",
            kind="delivery",
            size="S",
            dropoff_tag=tag,
            pickup_tag=sim.keys.tag("34343434"),
        )
    )
    reply = last_reply(
        sim.feed(
            command(
                "assign",
                sim.now,
                parcel="P2",
                kind="delivery",
                size="S",
                dropoff_tag=tag,
                pickup_tag=sim.keys.tag("56565656"),
            )
        )
    )
    assert reply["error"]["code"] == "code_collision"


def test_no_compartment_when_full() -> None:
    sim = Sim()
    for i in range(6):
        sim.assign(f"P{i}", "S")
    reply = last_reply(
        sim.feed(
            command(
                "assign",
                sim.now,
                parcel="PX",
                kind="delivery",
                size="S",
                dropoff_tag=sim.keys.tag("10101010"),
                pickup_tag=sim.keys.tag("20202020"),
            )
        )
    )
    assert reply["error"]["code"] == "no_compartment"


def test_remote_open_is_capped_locally() -> None:
    sim = Sim()
    for _ in range(5):
        sim.feed(command("open", sim.now, compartment="D1", reason="audit"))
        sim.door("D1", "open")
        sim.door("D1", "closed")
    assert sim.unlocks() == ["D1"] * 3
    assert "remote_open_limited" in sim.types()
    sim.advance(3601)
    sim.feed(command("open", sim.now, compartment="D1", reason="audit"))
    assert sim.unlocks() == ["D1"] * 4


def test_set_service_blocks_allocation_and_access() -> None:
    sim = Sim()
    sim.feed(command("set_service", sim.now, compartment="A1", in_service=False, reason="broken"))
    assert sim.types()[-1] == "compartment_out_of_service"
    cid, _, _ = sim.assign("P1", "S")
    assert cid == "A2"


def test_boot_reconciles_doors_and_reports_unknown_unlock_outcome() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.type_code(drop)  # committed and pulsed, then the daemon "dies"
    doors = {c: DoorState.CLOSED for c in sim.state.compartments} | {"D1": DoorState.OPEN}
    before = len(sim.events)
    sim.feed(machine.Boot(doors, {}, "test"))
    types = sim.types(before)
    assert types[0] == "started"
    assert "unlock_outcome_unknown" in types
    assert {"door_opened", "door_forced"} <= set(types)
    assert sim.state.compartments[cid].pending is None
    sim.type_code(drop)  # never retried blindly: the code stays consumed
    assert sim.unlocks() == [cid]


def test_boot_with_the_door_open_completes_the_step_when_it_closes() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.type_code(drop)
    doors = {c: DoorState.CLOSED for c in sim.state.compartments} | {cid: DoorState.OPEN}
    sim.feed(machine.Boot(doors, {}, "test"))
    sim.door(cid, "closed")
    assert sim.types()[-1] == "parcel_deposited"


def test_rejected_scanner_input_is_a_typed_denial() -> None:
    sim = Sim()
    sim.feed(InputRejected(InputSource.SCANNER, "too long"))
    assert only(sim.events, "access_denied")[-1].data == {
        "reason": "malformed",
        "source": "scanner",
        "detail": "too long",
    }


def test_next_deadline_follows_the_state() -> None:
    sim = Sim()
    assert machine.next_deadline(sim.state, sim.rules) is None
    _, drop, _ = sim.assign("P1")
    sim.type_code(drop)
    assert machine.next_deadline(sim.state, sim.rules) == pytest.approx(sim.now + 10)


KNOWN = {"access_denied", "access_granted", "keypad_throttled", "keypad_locked_out"}


@given(keys=st.lists(st.text(max_size=3), min_size=1, max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_key_sequence_gives_only_typed_outcomes(keys: list[str]) -> None:
    """The keypad-entry parser: whatever arrives as a key (even what a broken adapter might
    pass on), the machine answers with typed events and never raises."""
    sim = Sim()
    start = len(sim.events)
    sim.feed(*[KeyPressed(k) for k in keys])
    assert set(sim.types(start)) <= KNOWN
    assert len(sim.state.keypad.digits) <= machine.MAX_CODE_DIGITS
    for e in only(sim.events[start:], "access_denied"):
        assert e.data["reason"] in {"malformed", "unknown_code", "throttled", "locked_out"}


def test_a_crash_long_before_the_restart_is_not_taken_for_a_jam() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.type_code(drop)
    sim.now += 3600  # the daemon was down for an hour after committing the unlock
    before = len(sim.events)
    sim.feed(machine.Boot({c: DoorState.CLOSED for c in sim.state.compartments}, {}, "t"))
    assert "unlock_outcome_unknown" in sim.types(before)
    assert "door_jammed" not in sim.types(before)
    sim.type_code(drop)
    assert sim.unlocks() == [cid]


def test_a_compartment_whose_board_is_silent_is_unavailable() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1")
    sim.door(cid, "unknown")
    sim.type_code(drop)
    assert only(sim.events, "access_denied")[-1].data["reason"] == "compartment_unavailable"
    reply = sim.feed(command("open", sim.now, compartment=cid, reason="t")).actions[-1].reply  # type: ignore[union-attr]
    assert reply["error"]["code"] == "compartment_unavailable"
    sim.door(cid, "closed")
    sim.type_code(drop)
    assert sim.unlocks() == [cid]


def test_a_deadline_that_cannot_act_yet_is_not_reported_as_due() -> None:
    """A window that ends while the door is open is judged when it closes; until then it must
    not be announced as due, or the controller would spin on it."""
    sim = Sim()
    cid, drop, _ = sim.assign("P1", dropoff_until=int(T0 + 30))
    sim.type_code(drop)
    sim.door(cid, "open")
    sim.advance(60)
    due = machine.next_deadline(sim.state, sim.rules)
    assert due is None or due > sim.now
    sim.door(cid, "closed")
    assert sim.types()[-1] == "parcel_deposited"
