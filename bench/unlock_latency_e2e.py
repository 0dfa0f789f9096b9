"""Unlock latency end to end: the ``#`` that submits a code on the keypad -> unlock frame on
the wire.

Runs the whole daemon in this process as ``lockerd`` assembles it (``tests.daemon_rig``): a
serial keypad on a real pty, the controller committing each grant to SQLite (WAL,
``synchronous=FULL``) before acting, the RS-485 driver, and the KR-CU16 emulator on another
pty recording when each frame's last byte arrived. Time runs from just before the ``#`` byte
is written to the keypad pty to that arrival, both on ``time.monotonic``.

Every unlock is a whole visit (assign, type the code, the door swings open, is shut, the step
completes; then the same for the pickup), so it meets the bus at a random phase of its polling
as a person's does. Scenarios: the simulator's fast polling (50 ms) and the configuration
default (200 ms). A pty has no baud rate: on a real 19200 baud line add about 2.6 ms for the
five bytes of the frame.

    python bench/unlock_latency_e2e.py [--parcels 30] [--out bench/results-unlock-latency-e2e.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results
from tests.daemon_rig import BoardCabinet, percentile, unlock_latencies

SCENARIOS = (("fast polling (50 ms)", 0.05), ("default polling (200 ms)", 0.2))


def measure(name: str, poll_interval_s: float, parcels: int) -> dict[str, object]:
    """Two unlocks (drop-off, pickup) per parcel; figures in milliseconds."""
    with tempfile.TemporaryDirectory() as tmp:
        cab = BoardCabinet(Path(tmp), poll_interval_s=poll_interval_s)
        try:
            ms = [s * 1000.0 for s in unlock_latencies(cab, parcels)]
            counters = cab.bus.counters()
        finally:
            cab.close()
    return {
        "scenario": name,
        "poll_interval_s": poll_interval_s,
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "polls_during_run": counters.polls,
        "bus_errors": counters.timeouts + counters.bad_checksums + counters.unexpected_frames,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parcels", type=int, default=30, help="two unlocks per parcel")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("results-unlock-latency-e2e.json")
    )
    args = parser.parse_args(argv)
    results = [measure(name, poll, args.parcels) for name, poll in SCENARIOS]
    print("'#' written to the keypad pty -> unlock frame received by the emulator (pty)")
    print(f"{'scenario':28} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for r in results:
        print(
            f"{r['scenario']!s:28} {r['samples']:>4} {r['p50_ms']:>8} {r['p95_ms']:>8}"
            f" {r['max_ms']:>8} {r['mean_ms']:>8}"
        )
    write_results(
        args.out,
        "code submitted ('#' written to the keypad pty) -> unlock frame fully received by the "
        "KR-CU16 emulator; whole in-process daemon, SQLite commit included",
        results,
        note="pty has no baud rate; add ~2.6 ms for 5 bytes at 19200 baud",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
