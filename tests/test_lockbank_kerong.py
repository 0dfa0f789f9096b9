"""The LockBank contract suite run against the RS-485 driver and the emulated boards on a pty."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware.boards.rs485_bus import BoardSpec, BusTiming, KerongBus
from hardware.emulators.kerong import KerongEmulator
from tests.conftest import wait_for
from tests.lockbank_contract import BankRig, CoilPulse, LockBankContract

BOARD_PULSE_S = 0.05
TIMING = BusTiming(
    response_timeout_s=0.2,
    quiet_gap_s=0.02,
    unlock_reply_window_s=0.05,
    resync_quiet_s=0.04,
    pulse_s=BOARD_PULSE_S + 0.01,  # the driver's conservative idea of the boards' pulse
    rest_s=0.03,
    backoff_max_s=0.3,
    reopen_first_s=0.05,
)
# two boards on one bus; compartment -> (board address, channel)
WHERE = {"A1": (0, 1), "A2": (0, 7), "B1": (1, 16)}


class KerongRig:
    """Moves the emulated doors and reads the coil log the emulated boards keep."""

    max_pulse_s = BOARD_PULSE_S + 0.005
    rest_s = TIMING.rest_s
    timing_tolerance_s = 0.02
    event_timeout_s = 5.0

    def __init__(self, emu: KerongEmulator) -> None:
        self.emu = emu
        self.bus = KerongBus(
            "rig",
            emu.path,
            [BoardSpec(f"b{a}", a, 1, 0.03, item_sensors=False) for a in (0, 1)],
            {c: (f"b{addr}", ch) for c, (addr, ch) in WHERE.items()},
            baudrate=19200,
            timing=TIMING,
        )
        self.bank = self.bus
        self._names = {where: c for c, where in WHERE.items()}

    def open_door(self, compartment: str) -> None:
        self.emu.force_open(*WHERE[compartment])

    def close_door(self, compartment: str) -> None:
        self.emu.close_door(*WHERE[compartment])

    def coil_log(self) -> list[CoilPulse]:
        return [
            CoilPulse(self._names.get((p.board, p.channel), f"{p.board}/{p.channel}"), p.on, p.off)
            for p in self.emu.pulses()
        ]

    def settle(self) -> None:
        if self.bus.closed:
            return  # nothing more can be reported or sent
        target = self.bus.counters().polls + 4  # two more readings of each board
        wait_for(lambda: self.bus.counters().polls >= target, self.event_timeout_s, what="polls")


class TestKerongBusContract(LockBankContract):
    @pytest.fixture
    def rig(self, tmp_path: Path) -> Iterator[BankRig]:
        with KerongEmulator(
            [0, 1], pulse_s=BOARD_PULSE_S, open_delay_s=0.01, link=tmp_path / "ttyKR"
        ) as emu:
            rig = KerongRig(emu)
            try:
                yield rig
            finally:
                rig.bank.close()
