"""Pin factory selection, the pulse scheduler and GpioLockBank specifics beyond the contract
(pulse widths from MockPin.states, debouncing, door polarity, validation)."""

from __future__ import annotations

import importlib.util
import itertools
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from gpiozero import Device, GPIOPinInUse
from gpiozero.pins.mock import MockFactory

from hardware.gpio.locks import GpioCompartment, GpioLockBank
from hardware.gpio.pins import FACTORY_NAMES, PinFactoryError, make_pin_factory
from hardware.gpio.pulse import MAX_PULSE_S, CallableCoil, PulseScheduler
from locker.ports import (
    DoorChanged,
    DoorState,
    HardwareFault,
    HardwareRecovered,
    HardwareUnavailable,
    UnlockResult,
)
from tests.conftest import wait_for
from tests.lockbank_contract import Recorder

# thread wake-up latency allowed on a loaded 2-core CI machine
TOLERANCE_S = 0.1

# -- pin factories ------------------------------------------------------------------------


def test_mock_factory_is_built_fresh_each_time() -> None:
    first, second = make_pin_factory("mock"), make_pin_factory("mock")
    assert isinstance(first, MockFactory)
    assert first is not second


def test_unknown_factory_names_the_known_ones() -> None:
    with pytest.raises(PinFactoryError, match=r"unknown pin factory 'gpiod'.*lgpio.*mock"):
        make_pin_factory("gpiod")


@pytest.mark.parametrize("name", [n for n in FACTORY_NAMES if n != "mock"])
def test_unloadable_factory_is_an_error_not_a_fallback(name: str) -> None:
    module = {"lgpio": "lgpio", "rpigpio": "RPi", "pigpio": "pigpio"}.get(name)
    if module and importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    saved = Device.pin_factory
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a PinFactoryFallback warning would fail the test
        with pytest.raises(PinFactoryError, match=f"pin factory '{name}' cannot be loaded: ."):
            make_pin_factory(name)
    assert Device.pin_factory is saved


# -- pulse scheduler ----------------------------------------------------------------------


class CoilBench:
    """Coils that record (time, compartment, on) on one clock and check the one-coil rule."""

    def __init__(self, names: list[str]) -> None:
        self.log: list[tuple[float, str, bool]] = []
        self.energised: set[str] = set()
        self.overlaps = 0
        self._lock = threading.Lock()
        self.coils = {n: CallableCoil(self._switch(n, True), self._switch(n, False)) for n in names}

    def _switch(self, name: str, on: bool) -> Callable[[], None]:
        def switch() -> None:
            with self._lock:
                if on and self.energised - {name}:
                    self.overlaps += 1
                if on:
                    self.energised.add(name)
                else:
                    self.energised.discard(name)
                self.log.append((time.monotonic(), name, on))

        return switch

    def pulses(self) -> list[tuple[str, float, float]]:
        """(name, on, off) for each energisation (an off without a prior on is not a pulse)."""
        started: dict[str, float] = {}
        out = []
        for t, name, on in self.log:
            if on:
                started[name] = t
            elif name in started:
                out.append((name, started.pop(name), t))
        return sorted(out, key=lambda p: p[1])


@pytest.mark.parametrize("pulse_s", [0.0, -0.1, MAX_PULSE_S + 0.001, 10.0])
def test_scheduler_refuses_unbounded_pulses(pulse_s: float) -> None:
    with pytest.raises(ValueError, match="pulse_s"):
        PulseScheduler({}, pulse_s=pulse_s, rest_s=0.1, sink=lambda r: None)


def test_scheduler_refuses_negative_rest() -> None:
    with pytest.raises(ValueError, match="rest_s"):
        PulseScheduler({}, pulse_s=0.1, rest_s=-1, sink=lambda r: None)


@pytest.mark.timeout(20)
def test_scheduler_serialises_bounded_pulses_with_rest() -> None:
    bench = CoilBench(["a", "b", "c"])
    results: list[UnlockResult] = []
    scheduler = PulseScheduler(bench.coils, pulse_s=0.03, rest_s=0.02, sink=results.append)
    try:
        order = ["a", "b", "c", "a", "c"]
        for name in order:
            scheduler.request(name)
        wait_for(lambda: len(results) == len(order), 10, what="five results")
    finally:
        scheduler.close()
    assert [r.compartment for r in results] == order
    assert all(r.sent for r in results)
    assert bench.overlaps == 0
    pulses = bench.pulses()
    assert [p[0] for p in pulses] == order
    for _, on, off in pulses:
        assert 0.03 <= off - on <= 0.03 + TOLERANCE_S
    for (_, _, off), (_, on, _) in itertools.pairwise(pulses):
        assert on - off >= 0.02


@pytest.mark.timeout(20)
def test_idle_bank_switches_the_coil_on_before_request_returns() -> None:
    """Issue 10: no thread hand-off between the controller's commit and an idle bank's coil;
    a request behind a pulse or its rest still waits its turn."""
    bench = CoilBench(["a", "b"])
    results: list[UnlockResult] = []
    scheduler = PulseScheduler(bench.coils, pulse_s=0.05, rest_s=0.05, sink=results.append)
    try:
        scheduler.request("a")
        assert bench.energised == {"a"}  # on already, on this thread
        scheduler.request("b")
        assert bench.energised == {"a"}  # queued behind a's pulse and rest
        wait_for(lambda: len(results) == 2, 10, what="two results")
        # parked again after b's rest: the next request is switched on at once again
        wait_for(lambda: scheduler._idle, 5, what="bank idle")
        scheduler.request("b")
        assert bench.energised == {"b"}
        wait_for(lambda: len(results) == 3, 10, what="three results")
    finally:
        scheduler.close()
    assert all(r.sent for r in results)
    assert bench.overlaps == 0
    pulses = bench.pulses()
    assert [p[0] for p in pulses] == ["a", "b", "b"]
    for _, on, off in pulses:
        assert 0.05 <= off - on <= 0.05 + TOLERANCE_S
    for (_, _, off), (_, on, _) in itertools.pairwise(pulses):
        assert on - off >= 0.05


@pytest.mark.timeout(20)
def test_scheduler_reports_a_coil_that_cannot_be_driven() -> None:
    bench = CoilBench(["ok"])
    off_calls: list[str] = []

    def broken_on() -> None:
        raise OSError("driver gone")

    coils = {**bench.coils, "bad": CallableCoil(broken_on, lambda: off_calls.append("bad"))}
    results: list[UnlockResult] = []
    with_scheduler = PulseScheduler(coils, pulse_s=0.01, rest_s=0.0, sink=results.append)
    try:
        with_scheduler.request("bad")
        with_scheduler.request("ok")
        wait_for(lambda: len(results) == 2, 10, what="two results")
    finally:
        with_scheduler.close()
    bad, ok = results
    assert bad.compartment == "bad"
    assert bad.sent is False
    assert "driver gone" in bad.detail
    assert off_calls  # switched off defensively
    assert ok == UnlockResult("ok", sent=True)


@pytest.mark.timeout(20)
def test_scheduler_close_ends_queue_and_refuses_later_requests() -> None:
    bench = CoilBench(["a", "b"])
    results: list[UnlockResult] = []
    scheduler = PulseScheduler(bench.coils, pulse_s=1.0, rest_s=0.0, sink=results.append)
    scheduler.request("a")
    scheduler.request("b")
    wait_for(lambda: bench.energised == {"a"}, 5, what="first pulse on")
    started = time.monotonic()
    scheduler.close()
    scheduler.close()
    assert time.monotonic() - started < 0.5  # the 1 s pulse was cut short
    assert bench.energised == set()
    scheduler.request("a")
    assert results[0] == UnlockResult("a", sent=True)
    assert results[1].compartment == "b"
    assert results[1].sent is False
    assert results[2].compartment == "a"
    assert results[2].sent is False
    assert len(results) == 3
    assert [p[0] for p in bench.pulses()] == ["a"]
    with pytest.raises(KeyError):
        scheduler.request("zz")


# -- GPIO bank ----------------------------------------------------------------------------


def make_bank(
    factory: MockFactory, *, debounce_s: float = 0.02, pulse_s: float = 0.05, level: str = "low"
) -> GpioLockBank:
    layout = [
        GpioCompartment("A1", lock_pin=17, door_pin=27, door_closed_level=level),  # type: ignore[arg-type]
        GpioCompartment("A2", lock_pin=22, door_pin=23, door_closed_level=level),  # type: ignore[arg-type]
    ]
    return GpioLockBank(
        layout,
        pulse_s=pulse_s,
        rest_s=0.01,
        debounce_s=debounce_s,
        unstable_after_s=10.0,
        pin_factory=factory,
    )


@pytest.fixture
def bank(mock_factory: MockFactory) -> Iterator[GpioLockBank]:
    b = make_bank(mock_factory)
    mock_factory.pin(27).drive_low()
    mock_factory.pin(23).drive_low()
    yield b
    b.close()


def test_locks_are_outputs_that_start_off(mock_factory: MockFactory, bank: GpioLockBank) -> None:
    for pin_no in (17, 22):
        pin = mock_factory.pin(pin_no)
        assert pin.function == "output"
        assert pin.state is False
        assert [s.state for s in pin.states] == [False]
    assert dict(bank.doors()) == {"A1": DoorState.UNKNOWN, "A2": DoorState.UNKNOWN}


@pytest.mark.timeout(20)
def test_on_close_lock_pins_stay_outputs_driven_low(mock_factory: MockFactory) -> None:
    """Issue 11 item 14: gpiozero turns a closed pin into a floating input; a lock pin must
    stay an output at 0, also mid-pulse, and a later bank takes it over without a glitch."""
    b = make_bank(mock_factory, pulse_s=0.5)
    rec = Recorder()
    b.start(rec)
    lock = mock_factory.pin(22)
    b.unlock("A2")
    wait_for(lambda: lock.state is True, 5, what="coil on")
    b.close()  # in the middle of the pulse
    for pin_no in (17, 22):
        pin = mock_factory.pin(pin_no)
        assert pin.function == "output"
        assert pin.state is False
    assert [s.state for s in lock.states] == [False, True, False]
    again = make_bank(mock_factory)  # the pins are free for the next owner
    try:
        assert mock_factory.pin(22).function == "output"
        assert [s.state for s in lock.states] == [False, True, False]
    finally:
        again.close()
    assert mock_factory.pin(22).function == "output"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("pulse_s", [0.05, 0.2])
def test_pulse_width_on_the_pin(mock_factory: MockFactory, pulse_s: float) -> None:
    b = make_bank(mock_factory, pulse_s=pulse_s)
    try:
        rec = Recorder()
        b.start(rec)
        pin = mock_factory.pin(22)
        pin.clear_states()
        b.unlock("A2")
        rec.wait_count(UnlockResult, 1, 5)
    finally:
        b.close()
    assert [s.state for s in pin.states] == [False, True, False]
    high = pin.states[2].timestamp
    assert pulse_s <= high <= pulse_s + TOLERANCE_S
    assert [s.state for s in mock_factory.pin(17).states] == [False]


@pytest.mark.timeout(20)
def test_bounce_storm_gives_one_event(mock_factory: MockFactory) -> None:
    # a window far longer than the storm, so a preempted test thread cannot split it
    b = make_bank(mock_factory, debounce_s=0.3)
    door = mock_factory.pin(27)
    door.drive_low()
    try:
        rec = Recorder()
        b.start(rec)
        threads_before = threading.active_count()
        for _ in range(200):
            door.drive_high()
            door.drive_low()
        door.drive_high()  # settles open
        assert threading.active_count() == threads_before  # no thread per edge
        assert rec.doors("A1") == [DoorState.CLOSED]  # nothing during the storm
        wait_for(lambda: rec.doors("A1") == [DoorState.CLOSED, DoorState.OPEN], 5)
        wait_for(lambda: not b.settling, 5)
        assert rec.doors("A1") == [DoorState.CLOSED, DoorState.OPEN]
        assert b.doors()["A1"] is DoorState.OPEN
    finally:
        b.close()


@pytest.mark.timeout(20)
def test_glitch_back_to_the_same_level_reports_nothing(
    mock_factory: MockFactory, bank: GpioLockBank
) -> None:
    rec = Recorder()
    bank.start(rec)
    door = mock_factory.pin(23)
    for _ in range(20):
        door.drive_high()
        door.drive_low()
    assert bank.settling
    wait_for(lambda: not bank.settling, 5, what="glitch resolved")
    assert rec.doors("A2") == [DoorState.CLOSED]
    assert len(rec.of(DoorChanged)) == 2


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("level", "closed_pin_high"), [("low", False), ("high", True)])
def test_door_polarity(mock_factory: MockFactory, level: str, closed_pin_high: bool) -> None:
    b = make_bank(mock_factory, level=level)
    door = mock_factory.pin(27)

    def drive(high: bool) -> None:
        if high:
            door.drive_high()
        else:
            door.drive_low()

    drive(closed_pin_high)
    try:
        rec = Recorder()
        b.start(rec)
        assert rec.doors("A1") == [DoorState.CLOSED]
        drive(not closed_pin_high)
        wait_for(lambda: rec.doors("A1") == [DoorState.CLOSED, DoorState.OPEN], 5)
        drive(closed_pin_high)
        wait_for(lambda: rec.doors("A1")[-1:] == [DoorState.CLOSED], 5)
    finally:
        b.close()


def test_door_sensor_is_pulled_up(mock_factory: MockFactory, bank: GpioLockBank) -> None:
    assert mock_factory.pin(27).pull == "up"
    assert mock_factory.pin(23).pull == "up"


def test_start_twice_and_unlock_before_start(bank: GpioLockBank) -> None:
    with pytest.raises(HardwareUnavailable, match="not started"):
        bank.unlock("A1")
    bank.start(Recorder())
    with pytest.raises(RuntimeError, match="already started"):
        bank.start(Recorder())


def test_close_before_start_frees_the_pins(mock_factory: MockFactory) -> None:
    b = make_bank(mock_factory)
    b.close()
    b.close()
    with pytest.raises(HardwareUnavailable):
        b.start(Recorder())
    make_bank(mock_factory).close()  # the same pins can be claimed again


def test_failed_construction_releases_claimed_pins(mock_factory: MockFactory) -> None:
    blocker = make_bank(mock_factory)
    layout = [
        GpioCompartment("B1", lock_pin=5, door_pin=6),
        GpioCompartment("B2", lock_pin=17, door_pin=13),  # 17 is taken by the blocker
    ]
    with pytest.raises(GPIOPinInUse):
        GpioLockBank(
            layout,
            pulse_s=0.1,
            rest_s=0.1,
            debounce_s=0.01,
            unstable_after_s=10.0,
            pin_factory=mock_factory,
        )
    blocker.close()
    GpioLockBank(
        layout,
        pulse_s=0.1,
        rest_s=0.1,
        debounce_s=0.01,
        unstable_after_s=10.0,
        pin_factory=mock_factory,
    ).close()


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ([], "at least one"),
        ([GpioCompartment("A", 5, 6), GpioCompartment("A", 7, 8)], "duplicate compartment"),
        ([GpioCompartment("A", 5, 6), GpioCompartment("B", 7, 5)], "pins used more than once"),
    ],
)
def test_layout_is_validated(
    mock_factory: MockFactory, layout: list[GpioCompartment], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        GpioLockBank(
            layout,
            pulse_s=0.1,
            rest_s=0.1,
            debounce_s=0.01,
            unstable_after_s=10.0,
            pin_factory=mock_factory,
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"door_closed_level": "up"}, "door_closed_level"),
        ({"door_pin": 5}, "both 5"),
        ({"id": ""}, "empty"),
    ],
)
def test_compartment_is_validated(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"id": "A", "lock_pin": 5, "door_pin": 6} | kwargs
    with pytest.raises(ValueError, match=match):
        GpioCompartment(**args)  # type: ignore[arg-type]


def test_overlong_pulse_refused_before_any_pin_is_claimed(mock_factory: MockFactory) -> None:
    with pytest.raises(ValueError, match="pulse_s"):
        make_bank(mock_factory, pulse_s=2.5)
    assert not mock_factory.pins


def chatter(pin: object, seconds: float, gap_s: float = 0.004) -> None:
    """The stimulus: a reed switch bouncing for ``seconds`` (the level flips every gap_s)."""
    end = time.monotonic() + seconds
    high = False
    while time.monotonic() < end:
        high = not high
        pin.drive_high() if high else pin.drive_low()  # type: ignore[attr-defined]
        time.sleep(gap_s)


@pytest.mark.timeout(20)
def test_a_chattering_door_is_unknown_until_it_settles(mock_factory: MockFactory) -> None:
    """Issue 11 item 10: chatter longer than the debounce time is not a closed door."""
    door = mock_factory.pin(27)
    door.drive_low()
    b = GpioLockBank(
        [GpioCompartment("A1", lock_pin=17, door_pin=27)],
        pulse_s=0.05,
        rest_s=0.01,
        debounce_s=0.02,
        unstable_after_s=5.0,
        pin_factory=mock_factory,
    )
    door.drive_low()  # the bank pulled the input up: the door is shut
    try:
        rec = Recorder()
        b.start(rec)
        chatter(door, 0.3)
        door.drive_high()  # settles open
        wait_for(lambda: rec.doors("A1")[-1:] == [DoorState.OPEN], 5, what="settled open")
        wait_for(lambda: not b.settling, 5)
    finally:
        b.close()
    assert rec.doors("A1") == [DoorState.CLOSED, DoorState.UNKNOWN, DoorState.OPEN]
    assert rec.of(HardwareFault) == []


@pytest.mark.timeout(20)
def test_a_sensor_that_never_settles_is_one_fault(mock_factory: MockFactory) -> None:
    door = mock_factory.pin(27)
    door.drive_low()
    b = GpioLockBank(
        [GpioCompartment("A1", lock_pin=17, door_pin=27)],
        pulse_s=0.05,
        rest_s=0.01,
        debounce_s=0.02,
        unstable_after_s=0.3,
        pin_factory=mock_factory,
    )
    door.drive_low()  # the bank pulled the input up: the door is shut
    try:
        rec = Recorder()
        b.start(rec)
        chatter(door, 1.0)
        assert [type(e) for e in rec.events if not isinstance(e, DoorChanged)] == [HardwareFault]
        (fault,) = rec.of(HardwareFault)
        assert (fault.device, fault.compartments) == ("door:A1", ("A1",))
        assert "unstable" in fault.detail
        door.drive_high()
        wait_for(lambda: rec.doors("A1")[-1:] == [DoorState.OPEN], 5, what="settled open")
    finally:
        b.close()
    assert rec.doors("A1") == [DoorState.CLOSED, DoorState.UNKNOWN, DoorState.OPEN]
    assert rec.of(HardwareRecovered) == [HardwareRecovered("door:A1", ("A1",))]
    assert rec.events.index(rec.of(HardwareRecovered)[0]) < rec.events.index(
        DoorChanged("A1", DoorState.OPEN)
    )
