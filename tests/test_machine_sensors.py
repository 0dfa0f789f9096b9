"""The state machine's answers to faulty inputs and sensors (issue 11 items 10, 11 and 15),
driven with plain values like ``test_machine``."""

from __future__ import annotations

from locker.cabinet.domain.draft import IndicateAction
from locker.ports import Feedback, HardwareFault, HardwareRecovered
from tests.domain import Sim, only


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
