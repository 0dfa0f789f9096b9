"""The LockBank contract suite run against GpioLockBank on gpiozero's MockFactory.

The coil log comes from the lock pins' own ``pin.states`` (gpiozero records every level change
with its time), so it observes the pins, not our code's idea of them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from hardware.gpio.locks import GpioCompartment, GpioLockBank
from tests.conftest import wait_for
from tests.lockbank_contract import BankRig, CoilPulse, LockBankContract

PULSE_S = 0.05
REST_S = 0.03
DEBOUNCE_S = 0.02
# thread wake-up latency on a loaded 2-core CI machine
TOLERANCE_S = 0.1

LAYOUT = (
    GpioCompartment("A1", lock_pin=17, door_pin=27),
    GpioCompartment("A2", lock_pin=22, door_pin=23),
    GpioCompartment("A3", lock_pin=24, door_pin=25, door_closed_level="high"),
)


def pulses_of(compartment: str, pin: MockPin, origin: float) -> list[CoilPulse]:
    """Turn a pin's recorded (delta, level) list into pulses on the rig's clock."""
    states = list(pin.states)
    # each timestamp is the time since the previous change; the first is the clear_states()
    times = (origin + t for t in itertools.accumulate(s.timestamp for s in states))
    pulses: list[CoilPulse] = []
    on: float | None = None
    for t, state in zip(times, (s.state for s in states), strict=False):
        if state and on is None:
            on = t
        elif not state and on is not None:
            pulses.append(CoilPulse(compartment, on, t))
            on = None
    if on is not None:
        pulses.append(CoilPulse(compartment, on, None))
    return pulses


class GpioRig:
    """BankRig for GpioLockBank on a MockFactory (see tests/lockbank_contract.py)."""

    max_pulse_s = PULSE_S + TOLERANCE_S
    rest_s = REST_S
    timing_tolerance_s = 0.002
    event_timeout_s = 5.0

    def __init__(self, factory: MockFactory, layout: tuple[GpioCompartment, ...] = LAYOUT):
        self.factory = factory
        self.layout = {c.id: c for c in layout}
        self.bank = GpioLockBank(
            layout,
            pulse_s=PULSE_S,
            rest_s=REST_S,
            debounce_s=DEBOUNCE_S,
            unstable_after_s=10.0,
            pin_factory=factory,
        )
        # after the bank: configuring the pull-up resets a mock input to high
        for c in layout:
            self._set_door(c, closed=True)
        self.lock_pins = {c.id: factory.pin(c.lock_pin) for c in layout}
        # one common time origin: every lock pin's state list restarts now
        self.origin = time.monotonic()
        for pin in self.lock_pins.values():
            pin.clear_states()

    def _set_door(self, c: GpioCompartment, closed: bool) -> None:
        pin = self.factory.pin(c.door_pin)
        if closed == (c.door_closed_level == "low"):
            pin.drive_low()
        else:
            pin.drive_high()

    def open_door(self, compartment: str) -> None:
        self._set_door(self.layout[compartment], closed=False)

    def close_door(self, compartment: str) -> None:
        self._set_door(self.layout[compartment], closed=True)

    def coil_log(self) -> list[CoilPulse]:
        log = [p for cid, pin in self.lock_pins.items() for p in pulses_of(cid, pin, self.origin)]
        return sorted(log, key=lambda p: p.on)

    def settle(self) -> None:
        # edges reach the debouncer synchronously with MockPin; wait until it has resolved them
        wait_for(lambda: not self.bank.settling, self.event_timeout_s, what="doors settled")


class TestGpioLockBankContract(LockBankContract):
    @pytest.fixture
    def rig(self, mock_factory: MockFactory) -> Iterator[BankRig]:
        rig = GpioRig(mock_factory)
        yield rig
        rig.bank.close()
