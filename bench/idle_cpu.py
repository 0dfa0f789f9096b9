"""Idle CPU of the real ``lockerd``: a cabinet nobody uses, with and without board polling.

Starts ``lockerd`` as a child process (``locker.sim.cabinet.SimCabinet``: GPIO compartments on
mock pins, serial keypad and scanner on ptys, no broker) and reads its CPU time (user +
system, ``/proc/<pid>/stat``) over ``--seconds`` of idleness after READY, as a share of one
core. Two cabinets: GPIO only (the baseline), and the same with three KR-CU16 boards on one
emulated bus polled at the default 200 ms (the emulator runs in this process, so its own CPU
is not counted).

    python bench/idle_cpu.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tomli_w

from bench.common import Figure, write_results
from hardware.emulators.kerong import KerongEmulator
from locker.sim.cabinet import SimCabinet

RESULTS = Path(__file__).with_name("results-idle-cpu.json")
BOARDS = 3
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class PolledCabinet(SimCabinet):
    """A SimCabinet whose boards are ``BOARDS`` KR-CU16s on one bus at the default polling."""

    polled_boards: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.polled_boards:
            self.emulator = KerongEmulator(range(self.polled_boards))
            self.board_path = self.emulator.start()
            self.config_path.write_text(tomli_w.dumps(self.config()))

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if self.polled_boards and self.emulator is not None:
            cfg["boards"] = [
                {"name": f"b{a}", "port": self.board_path, "address": a, "item_sensors": False}
                for a in range(self.polled_boards)
            ]
            cfg["compartments"] = [c for c in cfg["compartments"] if "board" not in c] + [
                {"id": f"K{a}", "size": "M", "board": f"b{a}", "channel": 1}
                for a in range(self.polled_boards)
            ]
        return cfg


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def idle_share(boards: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cab = PolledCabinet(
            Path(tmp),
            with_board=False,
            log_level="WARNING",
            simulate_doors=False,  # its pin poller would be counted as lockerd's own CPU
            polled_boards=boards,
        )
        try:
            cab.start()
            assert cab.proc is not None
            time.sleep(3.0)  # let start-up work finish before the idle window
            c0, t0 = cpu_seconds(cab.proc.pid), time.monotonic()
            time.sleep(seconds)  # the measured idle window
            c1, t1 = cpu_seconds(cab.proc.pid), time.monotonic()
        finally:
            cab.close()
    return {
        "cpu_s": round(c1 - c0, 3),
        "wall_s": round(t1 - t0, 3),
        "share_pct": 100 * (c1 - c0) / (t1 - t0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    gpio = idle_share(0, args.seconds)
    polled = idle_share(BOARDS, args.seconds)
    for name, r in (("GPIO only", gpio), (f"{BOARDS} boards polled", polled)):
        print(f"{name:18} {r['share_pct']:.2f} % of a core ({r['cpu_s']} s CPU in {r['wall_s']} s)")
    figures = [
        Figure("idle CPU, GPIO only", gpio["share_pct"], "% of a core", goal="< 1 %"),
        Figure(
            f"idle CPU, {BOARDS} boards polled at 200 ms",
            polled["share_pct"],
            "% of a core",
            "idle CPU, GPIO only",
            "< 1 %",
        ),
    ]
    write_results(
        RESULTS,
        f"CPU time of an idle lockerd child process over {args.seconds:.0f} s after READY "
        f"(+3 s settling), GPIO cabinet alone and with {BOARDS} emulated boards polled",
        {"gpio_only": gpio, "boards_polled": polled},
        figures=figures,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
