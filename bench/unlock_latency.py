"""Unlock latency at driver level: ``KerongBus.unlock()`` called -> unlock frame fully received.

Runs the RS-485 driver against the CU16 emulator on a real pty and measures, for each unlock,
the time from the call to the moment the emulator has read the frame's last byte (both on
``time.monotonic``). Scenarios: an idle bus (polls far apart), the default configuration (two
boards polled every 200 ms) and a saturated bus (four boards polled every 50 ms, so an unlock
usually arrives while a poll transaction is in flight and must wait for it).

Each unlock is issued at a random moment well after the previous one, so that it lands at a
random phase of the polling cycle, as a person's unlock does. A pty has no baud rate: on a
real 19200 baud line add about 2.6 ms for the five bytes of the frame.

Percentiles are nearest-rank over 500 unlocks per scenario by default (p99: the 5th slowest).
The goal is that an unlock waits behind a poll no longer than one frame time: the extra wait
(a scenario's p99 less the idle bus's) is given beside the frame time of a status reply, the
longest frame a poll puts on a real 19200 baud line.

    python bench/unlock_latency.py [--samples 500] [--out bench/results-unlock-latency.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figure, percentile, write_results
from hardware.boards.kerong import CMD_UNLOCK, Frame
from hardware.boards.rs485_bus import BoardSpec, BusTiming, KerongBus, frame_time_s
from hardware.emulators.kerong import KerongEmulator
from locker.ports import HardwareEvent

# Shorter than a real board's 0.5 s pulse to keep the run short, and no shorter than the
# driver's unlock-reply window (0.1 s), so each unlock finds the previous one finished.
PULSE_S = 0.06
REST_S = 0.04
# Unlocks on one bus are spaced by the pulse plus the rest; waiting past that before the next
# call keeps each call independent of the previous unlock, as a person's is. The random part
# then spreads calls over the whole polling cycle.
SETTLE_S = PULSE_S + REST_S + 0.05
PHASE_S = 0.2


@dataclass(frozen=True)
class Scenario:
    name: str
    boards: int
    poll_interval_s: float


SCENARIOS = (
    Scenario("idle bus (polls 60 s apart)", boards=2, poll_interval_s=60.0),
    Scenario("default polling (2 boards, 200 ms)", boards=2, poll_interval_s=0.2),
    Scenario("saturated bus (4 boards, 50 ms)", boards=4, poll_interval_s=0.05),
)


class _WireWatch:
    """Wakes the benchmark when an unlock frame reaches the emulator."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.times: list[float] = []

    def __call__(self, t: float, frame: Frame) -> None:
        if frame.cmd == CMD_UNLOCK:
            with self._cond:
                self.times.append(t)
                self._cond.notify_all()

    def wait_count(self, count: int, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.times) >= count, timeout):
                raise TimeoutError("unlock frame never reached the emulator")
            return self.times[count - 1]


def _ignore(event: HardwareEvent) -> None:
    pass


def measure(scenario: Scenario, samples: int, seed: int = 1) -> dict[str, object]:
    """Run ``samples`` unlocks in ``scenario``; return latency figures in milliseconds."""
    rng = random.Random(seed)
    watch = _WireWatch()
    timing = BusTiming(pulse_s=PULSE_S, rest_s=REST_S)
    with tempfile.TemporaryDirectory() as tmp:
        emu = KerongEmulator(
            range(scenario.boards),
            pulse_s=PULSE_S,
            open_delay_s=0.005,
            auto_close_s=0.05,
            link=Path(tmp) / "ttyKR",
            on_frame=watch,
        )
        emu.start()
        specs = [
            BoardSpec(f"b{a}", a, 1, scenario.poll_interval_s, item_sensors=False)
            for a in range(scenario.boards)
        ]
        compartments = {
            f"C{a}-{ch}": (f"b{a}", ch) for a in range(scenario.boards) for ch in (1, 8, 16)
        }
        bus = KerongBus("bench", emu.path, specs, compartments, baudrate=19200, timing=timing)
        names = list(compartments)
        latencies: list[float] = []
        try:
            bus.start(_ignore)
            for i in range(samples):
                time.sleep(SETTLE_S + rng.uniform(0.0, PHASE_S))
                called = time.monotonic()
                bus.unlock(names[i % len(names)])
                arrived = watch.wait_count(i + 1, timeout=5.0)
                latencies.append((arrived - called) * 1000.0)
            counters = bus.counters()
        finally:
            bus.close()
            emu.stop()
    return {
        "scenario": scenario.name,
        "boards": scenario.boards,
        "poll_interval_s": scenario.poll_interval_s,
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "polls_during_run": counters.polls,
        "bus_errors": counters.timeouts + counters.bad_checksums + counters.unexpected_frames,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("results-unlock-latency.json")
    )
    args = parser.parse_args(argv)
    results = [measure(s, args.samples) for s in SCENARIOS]
    print(f"unlock() call -> unlock frame received by the emulator, {args.samples} unlocks each")
    print(f"{'scenario':40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'polls':>6}")
    for r in results:
        print(
            f"{r['scenario']!s:40} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}"
            f" {r['polls_during_run']:>6}"
        )
    idle = results[0]
    figures = [Figure(f"{SCENARIOS[0].name} p99", float(idle["p99_ms"]), "ms")]  # type: ignore[arg-type]
    for scenario, r in zip(SCENARIOS[1:], results[1:], strict=True):
        figures.append(
            Figure(
                f"{scenario.name} p99",
                float(r["p99_ms"]),  # type: ignore[arg-type]
                "ms",
                f"{SCENARIOS[0].name} p99",
                "an unlock waits behind a poll no longer than one frame time",
            )
        )
    frame_ms = round(frame_time_s(9, 19200) * 1000, 3)  # a status reply at 19200 baud
    figures.append(Figure("status reply frame time at 19200 baud", frame_ms, "ms"))
    for scenario, r in zip(SCENARIOS[1:], results[1:], strict=True):
        extra = max(0.0, float(r["p99_ms"]) - float(idle["p99_ms"]))  # type: ignore[arg-type]
        figures.append(
            Figure(
                f"{scenario.name}: p99 wait behind polls",
                round(extra, 3),
                "ms",
                "status reply frame time at 19200 baud",
                "<= 1x one frame time",
            )
        )
    write_results(
        args.out,
        "KerongBus.unlock() call -> unlock frame fully received by the emulator (pty), "
        "on an idle bus (the baseline), at the default polling and on a saturated bus",
        results,
        figures=figures,
        note="pty has no baud rate; add ~2.6 ms for 5 bytes at 19200 baud",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
