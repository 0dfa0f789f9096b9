"""The state machine's answers to faulty inputs and sensors (issue 11 items 10, 11 and 15),
driven with plain values like ``test_machine``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from locker.cabinet.domain.draft import IndicateAction
from locker.ports import Feedback, HardwareFault, HardwareRecovered
from tests.domain import Sim, command, only


def test_a_scanner_that_goes_away_is_reported_and_shown_at_the_cabinet() -> None:
    sim = Sim()
    tr = sim.feed(HardwareFault("scanner", "read failed: device disconnected"))
    assert only(tr.events, "hardware_fault")[0].data["device"] == "scanner"
    assert IndicateAction(Feedback.REFUSED) in tr.actions
    tr = sim.feed(HardwareRecovered("scanner"))
    assert sim.types()[-2:] == ["hardware_fault", "hardware_recovered"]


def test_a_board_fault_is_no_beep_at_the_door() -> None:
    tr = Sim().feed(HardwareFault("board:b0", "no reply", ("B1",)))
    assert only(tr.events, "hardware_fault")
    assert not [a for a in tr.actions if isinstance(a, IndicateAction)]


def _pickup_pulsed(sim: Sim) -> str:
    cid, pick = sim.deposit("P1")
    sim.type_code(pick)
    assert sim.unlocks()[-1] == cid
    return cid


def test_an_opening_whose_sensor_chatters_past_the_window_is_an_opening() -> None:
    """Item 10: the door swings open after a valid pulse and its reed switch chatters (the
    bank reports UNKNOWN) beyond the open window, then settles open."""
    sim = Sim()
    cid = _pickup_pulsed(sim)
    start = len(sim.events)
    sim.advance(0.3)
    sim.door(cid, "unknown")
    sim.advance(sim.rules.door_open_timeout_s + 1)  # past the window, still chattering
    sim.door(cid, "open")
    sim.advance(2)
    sim.door(cid, "closed")
    assert sim.types(start) == ["door_opened", "door_closed", "parcel_collected"]
    assert "P1" not in sim.state.parcels


def test_a_sensor_that_never_settles_is_one_fault_not_a_forced_door() -> None:
    sim = Sim()
    cid = _pickup_pulsed(sim)
    start = len(sim.events)
    sim.door(cid, "unknown")
    sim.feed(HardwareFault(f"door:{cid}", "door sensor unstable", (cid,)))
    assert sim.state.compartments[cid].sensor_fault
    for _ in range(30):
        sim.advance(10)
    types = sim.types(start)
    assert types == ["hardware_fault", "unlock_outcome_unknown"]
    assert not sim.state.compartments[cid].busy
    # it settles open much later: no forced-door alarm for a door we pulsed
    sim.door(cid, "open")
    assert "door_forced" not in sim.types(start)
    sim.feed(HardwareRecovered(f"door:{cid}", (cid,)))
    assert not sim.state.compartments[cid].sensor_fault


def test_a_chattering_sensor_that_settles_shut_after_the_window_is_a_jam() -> None:
    sim = Sim()
    cid = _pickup_pulsed(sim)
    sim.door(cid, "unknown")
    sim.advance(sim.rules.door_open_timeout_s + 1)
    sim.door(cid, "closed")
    sim.advance(0.1)
    assert sim.types()[-1] == "door_jammed"


def test_a_stuck_open_sensor_never_makes_a_door_permanently_busy() -> None:
    """Item 11: the cable breaks during a pickup, the sensor reads open for ever."""
    sim = Sim(max_remote_opens_per_hour=20)
    cid = _pickup_pulsed(sim)
    sim.door(cid, "open")  # and it never reads closed again
    sim.advance(sim.rules.door_left_open_s + 1)
    start = len(sim.events)
    pulses = len(sim.unlocks())

    def remote_open() -> Mapping[str, Any]:
        sim.now += 1
        tr = sim.feed(command("open", sim.now, compartment=cid, reason="stuck"))
        reply = tr.actions[-1].reply  # type: ignore[union-attr]
        assert reply["status"] == "done", reply
        return reply

    assert remote_open()["status"] == "done"
    assert len(sim.unlocks()) == pulses + 1
    faults = only(sim.events[start:], "hardware_fault")
    assert [f.data["device"] for f in faults] == [f"door:{cid}"]
    assert sim.state.compartments[cid].door.value == "unknown"
    assert "unlock_outcome_unknown" in sim.types(start)
    for _ in range(3):  # every later open pulses too, and the fault is not repeated
        assert remote_open()["status"] == "done"
    assert len(sim.unlocks()) == pulses + 4
    assert len(only(sim.events[start:], "hardware_fault")) == 1
    sim.advance(sim.rules.door_open_timeout_s + sim.rules.door_left_open_s + 1)
    assert not sim.state.compartments[cid].busy
    assert remote_open()["status"] == "done"
    # the cable is mended: the door reads shut, the sensor is trusted again
    sim.door(cid, "closed")
    assert sim.state.compartments[cid].sensor_fault is False


def test_someone_at_an_open_door_is_still_busy_for_a_remote_open() -> None:
    sim = Sim()
    cid = _pickup_pulsed(sim)
    sim.door(cid, "open")
    sim.advance(5)
    reply = sim.feed(command("open", sim.now, compartment=cid, reason="x")).actions[-1].reply  # type: ignore[union-attr]
    assert reply["error"]["code"] == "busy"
