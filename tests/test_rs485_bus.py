"""The RS-485 lock-board driver against the emulator on a real pty: flows and every fault."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hardware.boards.kerong import CMD_QUERY, CMD_UNLOCK, encode_unlock
from hardware.boards.rs485_bus import BoardSpec, BusTiming, KerongBus
from hardware.emulators.kerong import KerongEmulator
from locker.ports import (
    DoorChanged,
    DoorState,
    HardwareFault,
    HardwareRecovered,
    HardwareUnavailable,
    ItemChanged,
    UnlockResult,
)
from tests.conftest import wait_for
from tests.lockbank_contract import Recorder

POLL_S = 0.03
FAST = BusTiming(
    response_timeout_s=0.15,
    quiet_gap_s=0.02,
    unlock_reply_window_s=0.05,
    resync_quiet_s=0.04,
    pulse_s=0.05,
    rest_s=0.02,
    fail_threshold=3,
    start_attempts=2,
    backoff_max_s=0.2,
    reopen_first_s=0.05,
)


def spec(
    name: str, address: int, lock_bit_locked: int = 1, poll_interval_s: float = POLL_S
) -> BoardSpec:
    return BoardSpec(name, address, lock_bit_locked, poll_interval_s, item_sensors=False)


COMPARTMENTS = {"A1": ("b0", 1), "A2": ("b0", 2), "A16": ("b0", 16), "B1": ("b1", 1)}
WAIT = 5.0
CLOSED, OPEN, UNKNOWN = DoorState.CLOSED, DoorState.OPEN, DoorState.UNKNOWN

pytestmark = pytest.mark.timeout(30)

MakeBus = Callable[..., KerongBus]


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[KerongEmulator]:
    emulator = KerongEmulator([0, 1], pulse_s=0.05, open_delay_s=0.01, link=tmp_path / "ttyKR")
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def make_bus(emu: KerongEmulator) -> Iterator[MakeBus]:
    buses: list[KerongBus] = []

    def make(
        *,
        polarity: int = 1,
        timing: BusTiming = FAST,
        port: str | None = None,
        boards: tuple[str, ...] = ("b0", "b1"),
        items: bool = True,
    ) -> KerongBus:
        specs = [
            BoardSpec(name, int(name[1:]), polarity, POLL_S, item_sensors=items) for name in boards
        ]
        compartments = {c: where for c, where in COMPARTMENTS.items() if where[0] in boards}
        bus = KerongBus(
            "main", port or emu.path, specs, compartments, baudrate=19200, timing=timing
        )
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


def started(bus: KerongBus) -> Recorder:
    rec = Recorder()
    bus.start(rec)
    return rec


def polled(bus: KerongBus, rounds: int = 3) -> None:
    """Wait until every board had the chance to be read ``rounds`` more times."""
    target = bus.counters().polls + rounds * 2
    wait_for(lambda: bus.counters().polls >= target, WAIT, what=f"{rounds} poll rounds")


def door_is(rec: Recorder, compartment: str, state: DoorState) -> Callable[[], bool]:
    return lambda: bool(rec.doors(compartment)) and rec.doors(compartment)[-1] is state


def unlock_frames(emu: KerongEmulator, board: int | None = None) -> list[bytes]:
    return [f.raw for _, f in emu.frames(cmd=CMD_UNLOCK, board=board)]


def faults(rec: Recorder, device: str) -> list[HardwareFault]:
    return [e for e in rec.of(HardwareFault) if e.device == device]


def recoveries(rec: Recorder, device: str) -> list[HardwareRecovered]:
    return [e for e in rec.of(HardwareRecovered) if e.device == device]


# -- start and normal flows ----------------------------------------------------------------------


def test_start_reports_every_door_and_item_before_returning(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    emu.force_open(0, 2)
    emu.set_item(1, 1, True)
    bus = make_bus()
    rec = started(bus)
    doors = {e.compartment: e.state for e in rec.of(DoorChanged)}
    items = {e.compartment: e.present for e in rec.of(ItemChanged)}
    assert doors == {"A1": CLOSED, "A2": OPEN, "A16": CLOSED, "B1": CLOSED}
    assert items == {"A1": False, "A2": False, "A16": False, "B1": True}
    assert len(rec.events) == 8  # nothing else: no fault, no unlock
    assert dict(bus.doors()) == doors
    assert dict(bus.items()) == items
    polled(bus)
    assert len(rec.events) == 8  # only changes after start
    assert emu.pulses() == []


def test_drop_off_flow(emu: KerongEmulator, make_bus: MakeBus) -> None:
    bus = make_bus()
    rec = started(bus)
    bus.unlock("A1")
    assert rec.wait_count(UnlockResult, 1, WAIT) == [UnlockResult("A1", True)]
    wait_for(door_is(rec, "A1", OPEN), WAIT, what="A1 open")
    with emu.hold():  # the courier puts the parcel in and shuts the door between two polls
        emu.set_item(0, 1, True)
        emu.close_door(0, 1)
    wait_for(door_is(rec, "A1", CLOSED), WAIT, what="A1 closed")
    events = rec.events
    item_at = events.index(ItemChanged("A1", True))
    closed_at = len(events) - 1 - events[::-1].index(DoorChanged("A1", CLOSED))
    assert item_at < closed_at, "the item must be known when the door closes"
    assert rec.doors("A1") == [CLOSED, OPEN, CLOSED]
    assert unlock_frames(emu) == [encode_unlock(0, 1)]
    assert bus.items()["A1"] is True


@pytest.mark.parametrize("answers", [False, True], ids=["silent-unlock", "answered-unlock"])
def test_an_unlock_goes_on_the_wire_exactly_once(
    emu: KerongEmulator, make_bus: MakeBus, answers: bool
) -> None:
    emu.configure(0, answer_unlock=answers)
    bus = make_bus()
    rec = started(bus)
    bus.unlock("A16")
    assert rec.wait_count(UnlockResult, 1, WAIT) == [UnlockResult("A16", True)]
    wait_for(door_is(rec, "A16", OPEN), WAIT, what="A16 open")
    polled(bus, 5)
    assert unlock_frames(emu) == [encode_unlock(0, 16)]
    c = bus.counters()
    assert c.unlocks_sent == 1
    assert c.unlock_replies == (1 if answers else 0)
    assert (c.timeouts, c.bad_checksums, c.wrong_address, c.unexpected_frames) == (0, 0, 0, 0)


def test_a_late_unlock_answer_is_a_reading_and_leaves_no_lag(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    emu.configure(0, answer_unlock=True, reply_delay_s=0.12)
    timing = dataclasses.replace(
        FAST, response_timeout_s=0.3, unlock_reply_window_s=0.05, pulse_s=0.3
    )
    bus = make_bus(timing=timing, boards=("b0",))
    rec = started(bus)
    bus.unlock("A1")  # channel 1: its answer has the very bytes of a status reply
    wait_for(door_is(rec, "A1", OPEN), WAIT, what="A1 open")
    # the answer, read as b0's status, was taken after the unlock: a true reading; the poll
    # replies that follow are not shifted by one (a change is seen at the next poll)
    emu.close_door(0, 1)
    wait_for(door_is(rec, "A1", CLOSED), WAIT, what="A1 closed")
    emu.force_open(0, 2)
    wait_for(door_is(rec, "A2", OPEN), WAIT, what="A2 open")
    assert rec.doors("A1") == [CLOSED, OPEN, CLOSED]
    assert rec.of(HardwareFault) == []
    c = bus.counters()
    assert (c.timeouts, c.bad_checksums, c.truncated) == (0, 0, 0)


def test_no_blind_window_after_an_unlock(tmp_path: Path) -> None:
    """Issue 11 item 12: a door opened after an unlock and shut 0.35 s later is seen, with the
    daemon's default timing (0.2 s polls, 0.5 s board pulse) and a board that does not answer
    unlocks."""
    with KerongEmulator([0], open_delay_s=0.05, auto_close_s=0.35) as emu:
        bus = KerongBus(
            "blind",
            emu.path,
            [BoardSpec("b0", 0, 1, 0.2, item_sensors=False)],  # the configuration defaults
            {"A1": ("b0", 1)},
            baudrate=19200,
            timing=BusTiming(pulse_s=0.5, rest_s=0.1),
        )
        try:
            rec = started(bus)
            bus.unlock("A1")
            wait_for(lambda: rec.doors("A1") == [CLOSED, OPEN, CLOSED], WAIT, what="open then shut")
            queries = [t for t, _ in emu.frames(cmd=CMD_QUERY)]
            (unlocked,) = [t for t, _ in emu.frames(cmd=CMD_UNLOCK)]
            after = [t for t in queries if t > unlocked]
            gaps = [b - a for a, b in itertools.pairwise([unlocked, *after])]
            assert max(gaps) < 0.2 + 0.1  # polled on schedule right through the unlock
        finally:
            bus.close()


@pytest.mark.parametrize("answers", [False, True], ids=["silent-unlock", "answered-unlock"])
def test_an_adapter_that_echoes_what_it_sends_is_served(
    emu: KerongEmulator, make_bus: MakeBus, answers: bool
) -> None:
    """Issue 11 item 13: a half-duplex transceiver with its receiver always on."""
    emu.configure_line(echo=True)
    for board in (0, 1):
        emu.configure(board, answer_unlock=answers)
    bus = make_bus()
    rec = started(bus)
    assert set(bus.doors().values()) == {CLOSED}
    assert rec.of(HardwareFault) == []
    bus.unlock("A2")
    wait_for(door_is(rec, "A2", OPEN), WAIT, what="A2 open")
    polled(bus, 3)
    c = bus.counters()
    assert c.echoes >= c.polls  # every frame came back, and was dropped
    assert (c.timeouts, c.unexpected_frames, c.wrong_address) == (0, 0, 0)
    assert unlock_frames(emu) == [encode_unlock(0, 2)]


def test_an_echoing_adapter_with_dead_boards_says_local_echo(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    emu.configure_line(echo=True)
    emu.configure(0, silent=True)
    emu.configure(1, silent=True)
    bus = make_bus()
    rec = started(bus)
    details = [f.detail for f in rec.of(HardwareFault)]
    assert len(details) == 2
    assert all("local echo" in d for d in details)


def test_a_schedule_the_bus_cannot_keep_is_reported(emu: KerongEmulator) -> None:
    specs = [BoardSpec(f"b{a}", a, 1, 0.01, item_sensors=False) for a in range(2)]
    bus = KerongBus("busy", emu.path, specs, {"A1": ("b0", 1)}, timing=FAST, baudrate=9600)
    try:
        assert bus.schedule_load() > 1
        rec = started(bus)
        (fault,) = rec.of(HardwareFault)
        assert fault.device == "bus:busy"
        assert "poll schedule" in fault.detail
    finally:
        bus.close()
    ok = KerongBus(
        "ok",
        emu.path,
        [BoardSpec(f"b{a}", a, 1, 0.2, item_sensors=False) for a in range(13)],
        {"A1": ("b0", 1)},
        baudrate=19200,
        timing=FAST,
    )
    assert ok.schedule_load() < 0.8  # 13 boards at the default 200 ms fit at 19200 baud


def test_unlocks_are_spaced_by_pulse_and_rest(emu: KerongEmulator, make_bus: MakeBus) -> None:
    bus = make_bus()
    rec = started(bus)
    for c in ("A1", "A2", "B1"):
        bus.unlock(c)
    rec.wait_count(UnlockResult, 3, WAIT)
    wait_for(lambda: len(unlock_frames(emu)) == 3, WAIT, what="three unlock frames")
    assert unlock_frames(emu) == [encode_unlock(0, 1), encode_unlock(0, 2), encode_unlock(1, 1)]
    times = [t for t, _ in emu.frames(cmd=CMD_UNLOCK)]
    spacing = FAST.pulse_s + FAST.rest_s
    assert all(b - a >= spacing - 0.005 for a, b in itertools.pairwise(times))
    assert all(r.sent for r in rec.of(UnlockResult))


def test_unlock_returns_once_its_frame_is_out_unless_it_must_wait_its_turn(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    """Issue 10: the controller goes on with what can wait (sender, snapshot, panel) only
    once the frame is written, so none of it delays the frame; an unlock that must wait for
    the previous pulse and rest does not hold the controller."""
    timing = dataclasses.replace(FAST, unlock_wait_s=5.0, rest_s=1.0)
    bus = make_bus(timing=timing)
    rec = started(bus)
    bus.unlock("A1")
    assert bus.counters().unlocks_sent == 1  # written before unlock() returned
    assert rec.of(UnlockResult) == [UnlockResult("A1", True)]
    called = time.monotonic()
    bus.unlock("A2")  # within A1's pulse and rest: queued
    assert time.monotonic() - called < timing.rest_s / 2
    assert bus.counters().unlocks_sent == 1
    rec.wait_count(UnlockResult, 2, WAIT)
    # the emulator reads the frame on its own thread, after the write that made the result
    wait_for(lambda: len(unlock_frames(emu)) == 2, WAIT, what="two unlock frames")
    assert unlock_frames(emu) == [encode_unlock(0, 1), encode_unlock(0, 2)]


def test_unlocks_go_before_due_polls(emu: KerongEmulator, make_bus: MakeBus) -> None:
    timing = dataclasses.replace(FAST, response_timeout_s=0.3, fail_threshold=100)
    bus = make_bus(timing=timing)
    started(bus)
    emu.configure(1, silent=True)
    seen = len(emu.frames(cmd=CMD_QUERY, board=1))
    wait_for(lambda: len(emu.frames(cmd=CMD_QUERY, board=1)) > seen, WAIT, what="a query to b1")
    # the worker now waits up to 0.3 s for b1 while b0's next poll falls due
    bus.unlock("A2")
    request = emu.frames()[-1][0]
    wait_for(lambda: unlock_frames(emu), WAIT, what="unlock frame")
    after = [f for t, f in emu.frames() if t > request]
    assert after[0].cmd == CMD_UNLOCK


# -- fault switches ------------------------------------------------------------------------------


def test_silent_board_goes_unknown_refuses_unlocks_and_recovers(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    bus = make_bus()
    rec = started(bus)
    emu.configure(1, silent=True)
    rec.wait_count(HardwareFault, 1, WAIT)
    wait_for(door_is(rec, "B1", UNKNOWN), WAIT, what="B1 unknown")
    assert faults(rec, "board:b1") == [
        HardwareFault("board:b1", faults(rec, "board:b1")[0].detail, ("B1",))
    ]
    assert rec.doors("B1") == [CLOSED, UNKNOWN]
    assert bus.doors()["B1"] is UNKNOWN
    assert bus.items()["B1"] is None
    with pytest.raises(HardwareUnavailable):
        bus.unlock("B1")
    timeouts = bus.counters().timeouts
    wait_for(lambda: bus.counters().timeouts >= timeouts + 2, WAIT, what="polls with back-off")
    assert len(rec.of(HardwareFault)) == 1  # once, not a flood
    # the other board is still served
    bus.unlock("A1")
    wait_for(door_is(rec, "A1", OPEN), WAIT, what="A1 open")
    assert unlock_frames(emu, board=1) == []
    assert rec.doors("A1") == [CLOSED, OPEN]

    emu.force_open(1, 1)
    emu.configure(1, silent=False)
    wait_for(door_is(rec, "B1", OPEN), WAIT, what="B1 read again")
    assert recoveries(rec, "board:b1") == [HardwareRecovered("board:b1", ("B1",))]
    events = rec.events
    assert events.index(recoveries(rec, "board:b1")[0]) < events.index(DoorChanged("B1", OPEN))
    assert rec.of(ItemChanged)[-1] == ItemChanged("B1", False)
    bus.unlock("B1")
    assert rec.wait_count(UnlockResult, 2, WAIT)[-1] == UnlockResult("B1", True)


def test_late_reply_within_the_timeout_is_accepted(emu: KerongEmulator, make_bus: MakeBus) -> None:
    emu.configure(0, reply_delay_s=0.08)
    bus = make_bus(boards=("b0",))
    rec = started(bus)
    emu.force_open(0, 2)
    wait_for(door_is(rec, "A2", OPEN), WAIT, what="A2 open")
    assert bus.counters().timeouts == 0
    assert rec.of(HardwareFault) == []


def test_reply_later_than_the_timeout_is_drained_never_used(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    timing = dataclasses.replace(FAST, resync_quiet_s=0.1)
    bus = make_bus(timing=timing, boards=("b0",))
    rec = started(bus)
    emu.configure(0, reply_delay_s=0.2)
    emu.force_open(0, 2)  # a stale reply taken as fresh would report this
    rec.wait_count(HardwareFault, 1, WAIT)
    wait_for(door_is(rec, "A2", UNKNOWN), WAIT, what="A2 unknown")
    c = bus.counters()
    assert c.timeouts >= 3
    assert c.late_bytes >= 9
    assert rec.doors("A2") == [CLOSED, UNKNOWN]
    emu.configure(0, reply_delay_s=0.0)
    wait_for(door_is(rec, "A2", OPEN), WAIT, what="A2 read again")
    assert len(recoveries(rec, "board:b0")) == 1


def test_corrupted_checksums_are_counted_and_fault_the_board(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    bus = make_bus()
    rec = started(bus)
    emu.configure(0, corrupt_checksum=True)
    rec.wait_count(HardwareFault, 1, WAIT)
    assert [f.device for f in rec.of(HardwareFault)] == ["board:b0"]
    assert bus.counters().bad_checksums >= 3
    assert rec.doors("B1") == [CLOSED]  # board 1 unaffected
    emu.configure(0, corrupt_checksum=False)
    wait_for(door_is(rec, "A1", CLOSED), WAIT, what="b0 read again")
    assert len(recoveries(rec, "board:b0")) == 1


def test_split_replies_within_the_quiet_gap_are_read(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    emu.configure(0, split=(4, 0.005))
    bus = make_bus()
    rec = started(bus)
    emu.force_open(0, 16)
    wait_for(door_is(rec, "A16", OPEN), WAIT, what="A16 open")
    c = bus.counters()
    assert (c.truncated, c.bad_checksums, c.timeouts) == (0, 0, 0)
    assert rec.of(HardwareFault) == []


def test_replies_split_by_long_gaps_are_errors_not_crashes(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    bus = make_bus()
    rec = started(bus)
    emu.configure(0, split=(2, 0.06))
    rec.wait_count(HardwareFault, 1, WAIT)
    assert bus.counters().truncated >= 1
    emu.configure(0, split=(1, 0.0))
    rec.wait_count(HardwareRecovered, 1, WAIT)
    wait_for(door_is(rec, "A1", CLOSED), WAIT, what="b0 read again")
    assert rec.doors("A1") == [CLOSED, UNKNOWN, CLOSED]


def test_noise_before_replies_is_skipped(emu: KerongEmulator, make_bus: MakeBus) -> None:
    emu.configure(0, noise=b"\x00\xff\x02")
    bus = make_bus()
    rec = started(bus)
    emu.force_open(0, 1)
    wait_for(door_is(rec, "A1", OPEN), WAIT, what="A1 open")
    assert bus.counters().garbage_bytes >= 3
    assert rec.of(HardwareFault) == []


def test_jammed_lock_is_sent_once_and_the_door_stays_shut(
    emu: KerongEmulator, make_bus: MakeBus
) -> None:
    emu.set_jammed(0, 2)
    bus = make_bus()
    rec = started(bus)
    bus.unlock("A2")
    assert rec.wait_count(UnlockResult, 1, WAIT) == [UnlockResult("A2", True)]
    wait_for(lambda: emu.pulses() and emu.pulses()[0].off is not None, WAIT, what="pulse")
    polled(bus, 5)
    assert rec.doors("A2") == [CLOSED]
    assert unlock_frames(emu) == [encode_unlock(0, 2)]


def test_forced_door_is_reported_without_an_unlock(emu: KerongEmulator, make_bus: MakeBus) -> None:
    bus = make_bus()
    rec = started(bus)
    emu.force_open(0, 16)
    wait_for(door_is(rec, "A16", OPEN), WAIT, what="A16 forced")
    assert rec.of(UnlockResult) == []
    assert unlock_frames(emu) == []


def test_door_left_open_stays_open(tmp_path: Path) -> None:
    with KerongEmulator([0], pulse_s=0.02, open_delay_s=0.0, auto_close_s=0.4) as emu:
        emu.set_left_open(0, 2)
        bus = KerongBus(
            "left",
            emu.path,
            [BoardSpec("b0", 0, 1, POLL_S, item_sensors=False)],
            {"A1": ("b0", 1), "A2": ("b0", 2)},
            baudrate=19200,
            timing=FAST,
        )
        try:
            rec = started(bus)
            bus.unlock("A1")
            bus.unlock("A2")
            wait_for(lambda: rec.doors("A1") == [CLOSED, OPEN, CLOSED], WAIT, what="A1 cycle")
            wait_for(door_is(rec, "A2", OPEN), WAIT, what="A2 open")
            polled(bus, 5)
            assert rec.doors("A2") == [CLOSED, OPEN]
        finally:
            bus.close()


def test_item_present_and_absent(emu: KerongEmulator, make_bus: MakeBus) -> None:
    bus = make_bus()
    rec = started(bus)
    emu.set_item(0, 2, True)
    wait_for(lambda: ItemChanged("A2", True) in rec.events, WAIT, what="item in")
    emu.set_item(0, 2, False)
    wait_for(lambda: rec.of(ItemChanged)[-1] == ItemChanged("A2", False), WAIT, what="item out")
    assert [e.present for e in rec.of(ItemChanged) if e.compartment == "A2"] == [
        False,
        True,
        False,
    ]


def test_board_without_item_sensors_reports_none(emu: KerongEmulator, make_bus: MakeBus) -> None:
    emu.set_item(0, 1, True)
    bus = make_bus(items=False)
    rec = started(bus)
    polled(bus)
    assert rec.of(ItemChanged) == []
    assert set(bus.items().values()) == {None}


@pytest.mark.parametrize("polarity", [0, 1])
def test_configured_polarity_matches_the_board(
    emu: KerongEmulator, make_bus: MakeBus, polarity: int
) -> None:
    for board in (0, 1):
        emu.configure(board, lock_bit_locked=polarity)
    bus = make_bus(polarity=polarity)
    rec = started(bus)
    assert set(bus.doors().values()) == {CLOSED}
    bus.unlock("A1")
    wait_for(door_is(rec, "A1", OPEN), WAIT, what="A1 open")


def test_wrong_polarity_shows_every_door_open(emu: KerongEmulator, make_bus: MakeBus) -> None:
    emu.configure(0, lock_bit_locked=0)
    emu.configure(1, lock_bit_locked=0)
    bus = make_bus(polarity=1)
    started(bus)
    assert set(bus.doors().values()) == {OPEN}


# -- the port ------------------------------------------------------------------------------------


def test_adapter_unplugged_and_plugged_back(emu: KerongEmulator, make_bus: MakeBus) -> None:
    bus = make_bus()
    rec = started(bus)
    emu.unplug()
    rec.wait_count(HardwareFault, 1, WAIT)
    wait_for(lambda: set(bus.doors().values()) == {UNKNOWN}, WAIT, what="all unknown")
    (fault,) = rec.of(HardwareFault)
    assert fault.device == "bus:main"
    assert set(fault.compartments) == set(COMPARTMENTS)
    with pytest.raises(HardwareUnavailable):
        bus.unlock("A1")
    emu.force_open(0, 2)
    emu.replug()
    wait_for(lambda: bus.doors()["A2"] is OPEN, WAIT, what="A2 read on the new port")
    wait_for(lambda: set(bus.doors().values()) == {CLOSED, OPEN}, WAIT, what="all read")
    assert len(rec.of(HardwareFault)) == 1
    assert recoveries(rec, "bus:main") == [HardwareRecovered("bus:main", tuple(COMPARTMENTS))]
    assert bus.counters().reopens == 1
    bus.unlock("A1")
    assert rec.wait_count(UnlockResult, 1, WAIT) == [UnlockResult("A1", True)]
    wait_for(lambda: unlock_frames(emu) == [encode_unlock(0, 1)], WAIT, what="on the new port")


def test_missing_adapter_at_start_is_a_fault_then_recovers(
    tmp_path: Path, make_bus: MakeBus
) -> None:
    link = tmp_path / "later"
    bus = make_bus(port=str(link))
    rec = started(bus)
    assert {e.compartment: e.state for e in rec.of(DoorChanged)} == dict.fromkeys(
        COMPARTMENTS, UNKNOWN
    )
    assert [f.device for f in rec.of(HardwareFault)] == ["bus:main"]
    with pytest.raises(HardwareUnavailable):
        bus.unlock("A1")
    with KerongEmulator([0, 1], link=link):
        wait_for(lambda: set(bus.doors().values()) == {CLOSED}, WAIT, what="boards read")
        assert len(recoveries(rec, "bus:main")) == 1


# -- life cycle and validation -------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_close_is_prompt_and_idempotent(emu: KerongEmulator, make_bus: MakeBus) -> None:
    bus = make_bus(timing=dataclasses.replace(FAST, response_timeout_s=3.0))
    started(bus)
    emu.configure(1, silent=True)
    seen = len(emu.frames(cmd=CMD_QUERY, board=1))
    wait_for(lambda: len(emu.frames(cmd=CMD_QUERY, board=1)) > seen, WAIT, what="b1 query")
    began = time.monotonic()
    bus.close()  # in the middle of a 3 s wait for b1
    assert time.monotonic() - began < 0.5
    assert bus.closed
    bus.close()
    with pytest.raises(HardwareUnavailable):
        bus.unlock("A1")


def test_refusals_before_start_and_for_unknown_compartments(make_bus: MakeBus) -> None:
    bus = make_bus()
    with pytest.raises(HardwareUnavailable):
        bus.unlock("A1")
    started(bus)
    with pytest.raises(KeyError):
        bus.unlock("Z9")
    with pytest.raises(RuntimeError):
        bus.start(Recorder())


@pytest.mark.parametrize(
    ("boards", "compartments"),
    [
        ([], {}),
        ([spec("b0", 0), spec("b0", 1)], {}),
        ([spec("b0", 0), spec("b1", 0)], {}),
        ([spec("b0", 0)], {"A1": ("b9", 1)}),
        ([spec("b0", 0)], {"A1": ("b0", 17)}),
        ([spec("b0", 0)], {"A1": ("b0", 1), "A2": ("b0", 1)}),
    ],
)
def test_bad_bus_configuration_is_refused(
    boards: list[BoardSpec], compartments: dict[str, tuple[str, int]]
) -> None:
    with pytest.raises(ValueError):
        KerongBus("bad", "loop://", boards, compartments, baudrate=19200, timing=FAST)


def test_bad_board_and_timing_values_are_refused() -> None:
    with pytest.raises(ValueError):
        spec("b0", 16)
    with pytest.raises(ValueError):
        spec("b0", 0, lock_bit_locked=2)
    with pytest.raises(ValueError):
        spec("b0", 0, poll_interval_s=0)
    with pytest.raises(ValueError):
        BusTiming(pulse_s=0.5, rest_s=0.1, response_timeout_s=0)
