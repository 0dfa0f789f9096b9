"""Codes that stopped working are no guesses, and say why; ``set_service`` and what a
compartment holds. Pure: the machine driven with plain values and a fake clock (``Sim.now``).

The reported inputs: a courier re-typing their code while B2 stands open; a customer
re-typing after the pickup; a courier typing after the drop-off window ended; the code of a
parcel cancelled after deposit. Each gave "Wrong code" (``unknown_code``) and, four or five
times over, a back-off for everyone at the cabinet.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from locker.cabinet.domain import spent
from locker.cabinet.domain.draft import IndicateAction, ReplyAction
from locker.cabinet.domain.model import SPENT_KEEP_S, ParcelStatus, SpentTag, Throttle
from locker.cabinet.store import Store
from locker.ports import Feedback, LineScanned
from tests.domain import SIZES, T0, Sim, command, limits, only

# back-off after 2 failures: a counted re-type would show within three tries
TOUCHY = limits(failures_before_backoff=2, hard_lockout=100, max_per_hour=30)


def _denied(sim: Sim, since: int = 0) -> list[tuple[str, str | None, str | None]]:
    return [
        (e.data["reason"], e.data.get("detail"), e.compartment)
        for e in only(sim.events[since:], "access_denied")
    ]


def _retype(sim: Sim, code: str, times: int = 10) -> int:
    """Type ``code`` ``times`` times, a refusal window apart (each reported on its own)."""
    start = len(sim.events)
    for _ in range(times):
        sim.type_code(code)
        sim.advance(61)
    return start


def test_a_courier_retyping_while_the_door_is_open_is_told_which_door() -> None:
    sim = Sim(limits=TOUCHY)
    cid, drop, _ = sim.assign("P1", "M")
    sim.type_code(drop)
    sim.door(cid, "open")
    start = len(sim.events)
    for _ in range(6):
        sim.type_code(drop)
    assert _denied(sim, start) == [("already_used", "door_open", cid)]  # one burst
    assert sim.state.throttle == Throttle()
    assert "keypad_throttled" not in sim.types()
    assert IndicateAction(Feedback.ALREADY_USED) in sim.actions
    assert sim.unlocks() == [cid]  # nothing opens twice
    assert sim.state.refusals[("keypad", "already_used")].compartment == cid


def test_a_code_retyped_after_its_step_is_already_used_and_never_a_guess() -> None:
    sim = Sim(limits=TOUCHY)
    cid, drop, pick = sim.assign("P1")
    sim.type_code(drop)
    sim.door(cid, "open")
    sim.door(cid, "closed")  # deposited: the drop-off code is used up
    start = _retype(sim, drop, 5)
    assert _denied(sim, start) == [("already_used", None, None)] * 5
    sim.type_code(pick)
    sim.door(cid, "open")
    sim.door(cid, "closed")  # collected: the parcel is gone from the books
    assert "P1" not in sim.state.parcels
    start = _retype(sim, pick, 5)
    assert _denied(sim, start) == [("already_used", None, None)] * 5
    assert sim.state.throttle == Throttle()
    assert sim.unlocks() == [cid, cid]


def test_a_drop_off_code_after_its_window_is_expired_not_wrong() -> None:
    sim = Sim(limits=TOUCHY)
    _, drop, pick = sim.assign("P1", dropoff_until=int(T0 + 15))
    sim.advance(20)
    assert only(sim.events, "assignment_cancelled")[-1].data["reason"] == "dropoff_expired"
    start = _retype(sim, drop, 5)
    assert _denied(sim, start) == [("expired", None, None)] * 5
    start = _retype(sim, pick, 1)
    assert _denied(sim, start) == [("expired", None, None)]
    assert sim.state.throttle == Throttle()
    assert sim.unlocks() == []


def test_codes_of_a_cancelled_parcel_are_expired_with_the_detail() -> None:
    sim = Sim(limits=TOUCHY)
    _, pick = sim.deposit("P1")  # cancelled after deposit: the pickup code stays known
    sim.feed(command("cancel", sim.now, parcel="P1"))
    _, drop2, pick2 = sim.assign("P2")  # cancelled before deposit: both codes retired
    sim.feed(command("cancel", sim.now, parcel="P2"))
    start = len(sim.events)
    for code in (pick, drop2, pick2):
        _retype(sim, code, 3)
    assert set(_denied(sim, start)) == {("expired", "cancelled", None)}
    assert sim.state.throttle == Throttle()


def test_a_retrieval_code_past_its_time_is_expired() -> None:
    sim = Sim(limits=TOUCHY)
    sim.deposit("P1")
    sim.advance(72 * 3600 + 1)
    code = "31415926"
    sim.feed(
        command(
            "retrieve",
            sim.now,
            parcel="P1",
            code_tag=sim.keys.tag(code),
            valid_until=int(sim.now + 100),
        )
    )
    sim.advance(200)
    start = _retype(sim, code, 4)
    assert _denied(sim, start) == [("expired", None, None)] * 4
    assert sim.state.throttle == Throttle()


def test_spent_tags_are_forgotten_after_a_few_days_so_the_table_stays_bounded() -> None:
    sim = Sim(limits=TOUCHY)
    cid, pick = sim.deposit("P1")
    sim.type_code(pick)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    assert len(sim.state.spent) == 2  # tags only: the codes are never stored
    assert sim.keys.tag(pick) in sim.state.spent
    assert sim.state.spent.earliest() == sim.now + SPENT_KEEP_S
    sim.advance(SPENT_KEEP_S + 1)
    assert len(sim.state.spent) == 0
    sim.type_code(pick)  # days later it is an unknown code like any other
    assert _denied(sim)[-1] == ("unknown_code", None, None)
    assert sim.state.throttle.consecutive == 1


def test_a_spent_tag_issued_again_is_live_again() -> None:
    sim = Sim()
    cid, pick = sim.deposit("P1")
    sim.type_code(pick)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    tag = sim.keys.tag(pick)
    sim.feed(
        command(
            "assign",
            sim.now,
            parcel="P2",
            kind="delivery",
            size="S",
            dropoff_tag=tag,
            pickup_tag=sim.keys.tag("27182818"),
        )
    )
    assert tag not in sim.state.spent and tag in sim.state.credentials
    sim.type_code(pick)
    assert sim.unlocks()[-1] == sim.state.parcels["P2"].compartment


def test_a_qr_token_shown_again_while_its_door_is_open_is_already_used() -> None:
    sim = Sim()
    cid, _ = sim.deposit("P1")
    token = sim.keys.token("P1", 1, T0 - 60, T0 + 86400)
    sim.feed(LineScanned(token))
    sim.door(cid, "open")
    start = len(sim.events)
    sim.feed(LineScanned(token))
    assert [d[0] for d in _denied(sim, start)] == ["already_used"]
    assert sim.unlocks().count(cid) == 2  # drop-off, pickup: nothing opened twice


def test_spent_tags_survive_a_restart(tmp_path: Path) -> None:
    sim = Sim()
    cid, pick = sim.deposit("P1")
    sim.type_code(pick)
    sim.door(cid, "open")
    sim.door(cid, "closed")
    store = Store(tmp_path / "locker.db", boot_id="b")
    base = store.load(SIZES)
    store.commit(base, sim.state, [], sim.now, True)
    store.close()
    store = Store(tmp_path / "locker.db", boot_id="c")
    loaded = store.load(SIZES)
    assert dict(loaded.spent) == dict(sim.state.spent)
    assert loaded.spent[sim.keys.tag(pick)] == SpentTag(spent.USED, sim.now + SPENT_KEEP_S)
    assert loaded.spent.earliest() == sim.now + SPENT_KEEP_S
    store.close()


# --- set_service: what the compartment holds ------------------------------------------------


def _reply(sim: Sim) -> Mapping[str, Any]:
    assert sim.last is not None
    action = sim.last.actions[-1]
    assert isinstance(action, ReplyAction)
    return action.reply


def test_set_service_moves_a_reservation_and_its_code_opens_the_new_door() -> None:
    sim = Sim()
    cid, drop, _ = sim.assign("P1", "M")
    sim.feed(command("set_service", sim.now, compartment=cid, in_service=False, reason="broken"))
    reply = _reply(sim)
    assert reply["status"] == "done"
    moved = only(sim.events, "parcel_reserved")[-1]
    assert moved.data["moved_from"] == cid
    target = moved.compartment
    assert target != cid and sim.state.parcels["P1"].compartment == target
    assert reply["result"] == {
        "compartment": cid,
        "in_service": False,
        "moved": {"parcel": "P1", "to": target},
    }
    sim.type_code(drop)  # the courier is not refused: their code opens the new door
    assert sim.unlocks() == [target]


def test_set_service_says_what_a_compartment_still_holds() -> None:
    sim = Sim()
    cid, pick = sim.deposit("P1", "L")
    sim.feed(command("set_service", sim.now, compartment=cid, in_service=False, reason="broken"))
    assert _reply(sim)["result"] == {
        "compartment": cid,
        "in_service": False,
        "holds": {"parcel": "P1", "status": str(ParcelStatus.DEPOSITED)},
    }
    sim.type_code(pick)
    assert _denied(sim)[-1][0] == "out_of_service"
    # a reservation with nowhere to go (D1 is the only XL) stays, and is reported the same way
    xl, _, _ = sim.assign("P2", "XL")
    sim.feed(command("set_service", sim.now, compartment=xl, in_service=False, reason="broken"))
    assert _reply(sim)["result"] == {
        "compartment": xl,
        "in_service": False,
        "holds": {"parcel": "P2", "status": str(ParcelStatus.RESERVED)},
    }
