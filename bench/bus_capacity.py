"""RS-485 bus schedule: 13 KR-CU16 boards polled at the default 200 ms on one bus.

The driver runs against the emulator on a real pty for ``--seconds``; the emulator notes when
each query reached it. Figures: polls per second achieved against the configured rate (13
boards x 5/s = 65/s), and the longest gap between two polls of one board against its interval
(a gap over the interval is a door seen late). The driver's own estimate of the share of a
19200 baud line the schedule needs (``KerongBus.schedule_load``) is recorded too. A pty has no
baud rate: a real line adds 7.3 ms of frame time per poll, within that estimate.

    python bench/bus_capacity.py [--seconds 10] [--boards 13]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figure, write_results
from hardware.boards.kerong import CMD_QUERY
from hardware.boards.rs485_bus import BoardSpec, BusTiming, KerongBus
from hardware.emulators.kerong import KerongEmulator
from locker.ports import HardwareEvent

RESULTS = Path(__file__).with_name("results-bus-capacity.json")
POLL_S = 0.2


def _ignore(event: HardwareEvent) -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--boards", type=int, default=13)
    args = parser.parse_args(argv)
    boards = list(range(args.boards))
    with (
        tempfile.TemporaryDirectory() as tmp,
        KerongEmulator(boards, link=Path(tmp) / "tty") as emu,
    ):
        specs = [BoardSpec(f"b{a}", a, 1, POLL_S, item_sensors=False) for a in boards]
        timing = BusTiming(pulse_s=0.5, rest_s=0.1)  # the configuration defaults
        bus = KerongBus("cap", emu.path, specs, {"C0": ("b0", 1)}, baudrate=19200, timing=timing)
        try:
            bus.start(_ignore)
            began = time.monotonic()
            time.sleep(args.seconds)  # the measured run: the bus polls on its own meanwhile
            ended = time.monotonic()
            counters = bus.counters()
            load = bus.schedule_load()
        finally:
            bus.close()
        queries = [(t, f.board) for t, f in emu.frames(cmd=CMD_QUERY) if began <= t <= ended]
    per_board = {a: [t for t, b in queries if b == a] for a in boards}
    gaps = [b - a for ts in per_board.values() for a, b in itertools.pairwise(ts)]
    configured = args.boards / POLL_S
    achieved = len(queries) / (ended - began)
    worst_gap_ms = max(gaps) * 1000 if gaps else float("inf")
    print(
        f"{args.boards} boards at {POLL_S * 1000:.0f} ms: {achieved:.1f} polls/s of "
        f"{configured:.0f} configured; longest gap between polls of one board "
        f"{worst_gap_ms:.0f} ms; estimated load at 19200 baud {load:.0%}"
    )
    results = {
        "boards": args.boards,
        "poll_interval_s": POLL_S,
        "seconds": round(ended - began, 3),
        "polls_per_s": round(achieved, 2),
        "configured_polls_per_s": configured,
        "longest_gap_ms": round(worst_gap_ms, 1),
        "estimated_load_19200_baud": round(load, 3),
        "late_polls": counters.late_polls,
        "timeouts": counters.timeouts,
    }
    figures = [
        Figure("configured polls/s", configured, "polls/s"),
        Figure(
            "polls/s achieved", achieved, "polls/s", "configured polls/s", "every board on time"
        ),
        Figure("poll interval", POLL_S * 1000, "ms"),
        Figure(
            "longest gap between polls of a board",
            worst_gap_ms,
            "ms",
            "poll interval",
            "< 1.5x interval",
        ),
        Figure("estimated bus load at 19200 baud", load * 100, "%", goal="<= 80 %"),
    ]
    write_results(
        RESULTS,
        f"{args.boards} emulated KR-CU16 boards on one bus, polled every {POLL_S * 1000:.0f} ms "
        "by the driver for a fixed time: polls reaching the emulator per second, and the "
        "longest gap between two polls of one board",
        results,
        figures=figures,
        note="pty has no baud rate; the estimated load covers the frame times of a real line",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
