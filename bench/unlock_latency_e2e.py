"""Unlock latency end to end: the ``#`` that submits a code on the keypad -> the lock acts,
against a bare SQLite commit measured in the same run.

Runs the whole daemon in this process as ``lockerd`` assembles it (``tests.daemon_rig``): a
serial keypad on a real pty, the controller committing each grant to SQLite (WAL,
``synchronous=FULL``, on disk) before acting. Time runs from just before the ``#`` byte is
written to the keypad pty to:

- GPIO compartment: the lock pin going high (a gpiozero MockFactory pin that notes the time of
  each change);
- board compartment: the unlock frame's last byte read by the KR-CU16 emulator on another pty
  (the bus polled at the configuration default, 200 ms).

Every unlock is a whole visit (assign, type the code, the door opens, is shut, the step
completes; then the same for the pickup), so it meets the bus at a random phase of its polling
as a person's does. The baseline is the floor of any unlock: one small ``synchronous=FULL``
WAL commit on the same disk (``bench.common.bare_commit_ms``). A pty has no baud rate: on a
real 19200 baud line add about 2.6 ms for the five bytes of the frame.

    python bench/unlock_latency_e2e.py [--parcels 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpiozero.pins.mock import MockFactory, MockPin

from bench.common import Figure, bare_commit_ms, percentile, write_results
from tests.daemon_rig import GPIO_LAYOUT, REST_S, BoardCabinet, DaemonRig, unlock_latencies

RESULTS = Path(__file__).with_name("results-unlock-latency-e2e.json")
BOARD_POLL_S = 0.2  # the configuration default


class TimedPin(MockPin):  # type: ignore[misc]
    """A mock pin that notes, on one clock, when it went high."""

    rises: list[float]
    cond: threading.Condition

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed and value:
            if not hasattr(self, "rises"):
                self.rises, self.cond = [], threading.Condition()
            with self.cond:
                self.rises.append(time.monotonic())
                self.cond.notify_all()
        return changed

    def wait_rise(self, n: int, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(getattr(self, "rises", ())) >= n:
                return self.rises[n - 1]
            time.sleep(0.0005)  # the lock pin is driven from another thread
        raise TimeoutError("the lock pin never went high")


def gpio_latencies(workdir: Path, parcels: int) -> list[float]:
    factory = MockFactory(pin_class=TimedPin)
    rig = DaemonRig(workdir, factory)
    rig.start()
    samples: list[float] = []
    try:
        cids = [cid for cid, size, _, _ in GPIO_LAYOUT if size == "S"]
        for i in range(parcels):
            cid = cids[i % len(cids)]
            pin = rig.lock_pin(cid)
            parcel = f"G{i}"
            _, drop, pick = rig.assign(parcel, "S", compartment=cid)
            for code, done, purpose in (
                (drop, "parcel_deposited", "dropoff"),
                (pick, "parcel_collected", "pickup"),
            ):
                rig.press(code)
                n = len(getattr(pin, "rises", ())) + 1
                submitted = time.monotonic()
                rig.press("#")
                samples.append(pin.wait_rise(n) - submitted)
                rig.set_door(cid, opened=True)
                rig.wait_event("door_opened", parcel=parcel, purpose=purpose)
                rig.set_door(cid, opened=False)
                rig.wait_event(done, parcel=parcel)
                # a person's next unlock comes long after this coil's pulse and rest
                while any(rig.lock_pin(c).state for c in cids):
                    time.sleep(0.005)
                time.sleep(REST_S + 0.02)
    finally:
        rig.close()
    return samples


def board_latencies(workdir: Path, parcels: int) -> tuple[list[float], Any]:
    cab = BoardCabinet(workdir, poll_interval_s=BOARD_POLL_S)
    try:
        samples = unlock_latencies(cab, parcels)
        return samples, cab.bus.counters()
    finally:
        cab.close()


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parcels", type=int, default=60, help="two unlocks per parcel")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        base = Path(tmp)
        commit = bare_commit_ms(base, n=max(300, 4 * args.parcels))
        gpio = [s * 1000 for s in gpio_latencies(base / "gpio", args.parcels)]
        board_s, counters = board_latencies(base / "board", args.parcels)
        board = [s * 1000 for s in board_s]
    results = {
        "bare_commit": summary(commit),
        "gpio": summary(gpio),
        "board": summary(board) | {"polls": counters.polls, "preempted": counters.preempted},
    }
    for name, r in results.items():
        print(f"{name:12} n={r['samples']:<5} p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms")
    c50, c99 = results["bare_commit"]["p50_ms"], results["bare_commit"]["p99_ms"]
    goal = "p99 <= 1.5x bare commit and < 10 ms"
    figures = [
        Figure("bare commit p50", c50, "ms"),
        Figure("bare commit p99", c99, "ms"),
        Figure("GPIO unlock p50", results["gpio"]["p50_ms"], "ms", "bare commit p50"),
        Figure("GPIO unlock p99", results["gpio"]["p99_ms"], "ms", "bare commit p99", goal),
        Figure("board unlock p50", results["board"]["p50_ms"], "ms", "bare commit p50"),
        Figure("board unlock p99", results["board"]["p99_ms"], "ms", "bare commit p99", goal),
    ]
    write_results(
        RESULTS,
        "'#' written to the keypad pty -> GPIO lock pin high / KR-CU16 unlock frame received "
        f"(bus polled every {BOARD_POLL_S * 1000:.0f} ms), whole in-process daemon with its "
        "SQLite commit on disk, against a bare synchronous=FULL WAL commit on the same disk",
        results,
        figures=figures,
        note="pty has no baud rate; add ~2.6 ms for 5 bytes at 19200 baud",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
