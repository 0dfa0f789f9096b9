"""``make bench``: run every benchmark to completion, several times, and write ``BENCHMARKS.md``.

Each benchmark is a script in this folder that reports :class:`bench.common.Figure` s (through
``bench.common.write_results``). The runner runs it ``repeats`` times, each in a fresh
process, and gives every figure as its median with the spread (min-max) over the repeats;
a figure that names a baseline (measured by the same script in the same run) is also given
as the ratio to it, median and spread of the per-run ratios. A benchmark that fails is
reported as failed and the others still run; the exit status is 1 if any failed.

To add a benchmark, append it to :data:`BENCHMARKS`.

    python bench/run.py [--repeats N] [--quick] [--only NAME ...] [--out BENCHMARKS.md]

``--quick`` runs each benchmark once with small sizes (a smoke test, not figures to quote).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.common import OUT_ENV, machine_info  # noqa: E402


@dataclass(frozen=True)
class Bench:
    """One benchmark script: ``args`` for a full run, ``quick_args`` for ``--quick``."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    repeats: int = 3
    timeout_s: float = 900.0


BENCHMARKS: list[Bench] = [
    Bench(
        "unlock latency, end to end (GPIO and board)",
        "unlock_latency_e2e.py",
        quick_args=("--parcels", "5"),
    ),
    Bench("unlock latency, bus driver alone", "unlock_latency.py", quick_args=("--samples", "20")),
    Bench("RS-485 bus schedule (13 boards)", "bus_capacity.py", quick_args=("--seconds", "2")),
    Bench("idle CPU of lockerd", "idle_cpu.py", quick_args=("--seconds", "3")),
    Bench("backlog drain through the link", "link_drain.py", quick_args=("--events", "500")),
    Bench(
        "backlog drain through the daemon",
        "daemon_drain.py",
        quick_args=("--events", "500", "--plain-only"),
    ),
    Bench(
        "fleet service ingest and fleet page",
        "fleet_ingest.py",
        quick_args=("--events", "2000", "--page-lockers", "20", "--no-postgres"),
    ),
    Bench(
        "backlog drain through the daemon after a 90 s outage",
        "daemon_drain.py",
        args=("--outage-s", "90"),
        quick_args=("--events", "500", "--plain-only", "--outage-s", "5"),
    ),
    Bench("events live through the daemon", "event_pipeline.py", quick_args=("--events", "300")),
    Bench(
        "lockerd against history (credentials, outbox)",
        "history.py",
        quick_args=(
            "--credentials",
            "20000",
            "--outbox",
            "20000",
            "--rounds",
            "2",
            "--idle-seconds",
            "3",
        ),
    ),
    Bench(
        "per-input work against history (controller alone)",
        "per_input.py",
        quick_args=("--large", "20000"),
    ),
]


@dataclass
class Outcome:
    bench: Bench
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_one(bench: Bench, repeats: int, quick: bool, workdir: Path) -> Outcome:
    out = Outcome(bench)
    started = time.monotonic()
    for r in range(repeats):
        target = workdir / f"{Path(bench.script).stem}-{r}.json"
        argv = [
            sys.executable,
            str(HERE / bench.script),
            *(bench.quick_args if quick else bench.args),
        ]
        print(f"-- {bench.name} [{r + 1}/{repeats}]: {' '.join(argv[1:])}", flush=True)
        try:
            rc = subprocess.call(
                argv, cwd=ROOT, env={**os.environ, OUT_ENV: str(target)}, timeout=bench.timeout_s
            )
        except subprocess.TimeoutExpired:
            out.errors.append(f"run {r + 1}: no result after {bench.timeout_s:.0f} s")
            continue
        if rc != 0 or not target.exists():
            out.errors.append(f"run {r + 1}: exit status {rc}")
            continue
        out.runs.append(json.loads(target.read_text()))
    out.seconds = time.monotonic() - started
    return out


@dataclass
class Row:
    bench: str
    figure: str
    unit: str
    values: list[float]
    ratios: list[float]
    baseline: str | None
    goal: str


def rows_of(outcome: Outcome) -> list[Row]:
    rows: dict[str, Row] = {}
    for run in outcome.runs:
        figures = {f["name"]: f for f in run.get("figures", [])}
        for f in figures.values():
            row = rows.setdefault(
                f["name"],
                Row(outcome.bench.name, f["name"], f["unit"], [], [], f.get("baseline"), f["goal"]),
            )
            row.values.append(float(f["value"]))
            base = figures.get(f["baseline"]) if f.get("baseline") else None
            if base is not None and float(base["value"]) > 0:
                row.ratios.append(float(f["value"]) / float(base["value"]))
    return list(rows.values())


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def _spread(values: list[float]) -> str:
    return f"{_num(min(values))}-{_num(max(values))}" if len(values) > 1 else "-"


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| benchmark | figure | median | spread | unit | vs baseline (median, spread) | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = ""
        if r.ratios:
            ratio = f"{statistics.median(r.ratios):.2f}x of {r.baseline}"
            if len(r.ratios) > 1:
                ratio += f" ({min(r.ratios):.2f}-{max(r.ratios):.2f}x)"
        lines.append(
            f"| {r.bench} | {r.figure} | {_num(statistics.median(r.values))} | "
            f"{_spread(r.values)} | {r.unit} | {ratio} | {r.goal} |"
        )
    return lines


def machine_lines(info: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    return [
        f"- CPU: {info['cpu']}, {info['cpus']} cores; memory {info['memory_gib']} GiB",
        f"- OS: {info['os']}, kernel {info['kernel']}",
        f"- Python {info['python']}, SQLite {info['sqlite']}; {packages}",
        f"- broker: {info['mosquitto']}",
        f"- load average (1 min) when the run ended: {info['load_average_1min_at_end']}",
    ]


def write_markdown(
    path: Path, outcomes: list[Outcome], rows: list[Row], repeats: int, quick: bool
) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`bench/run.py`) on {now}"
        + (" in `--quick` mode (smoke sizes: not figures to quote)." if quick else "."),
        f"Each benchmark ran {repeats} time(s), each in a fresh process; a figure is the median",
        "over the runs with the spread (min-max) beside it. A comparison is the ratio to a",
        "baseline measured by the same script in the same run (median and spread of the per-run",
        "ratios). Percentiles are nearest-rank; tails are p99.",
        "",
        "## Machine",
        "",
        *machine_lines(machine_info()),
        "",
        "## Figures",
        "",
        *table(rows),
        "",
        "## What each benchmark measures",
        "",
    ]
    for o in outcomes:
        what = o.runs[0]["what"] if o.runs else "(no successful run)"
        status = f"{len(o.runs)}/{len(o.runs) + len(o.errors)} runs, {o.seconds:.0f} s"
        lines.append(f"- **{o.bench.name}** (`bench/{o.bench.script}`, {status}): {what}")
        for err in o.errors:
            lines.append(f"  - FAILED {err}")
        for note in {str(r["note"]) for r in o.runs if r.get("note")}:
            lines.append(f"  - note: {note}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=None, help="runs of each (default 3)")
    parser.add_argument("--quick", action="store_true", help="one small run of each")
    parser.add_argument("--only", nargs="*", default=None, help="script names to run")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.script in args.only]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for bench in chosen:
            repeats = args.repeats or (1 if args.quick else bench.repeats)
            outcomes.append(run_one(bench, repeats, args.quick, Path(tmp)))
    rows = [row for o in outcomes for row in rows_of(o)]
    print()
    print("\n".join(table(rows)))
    failed = [o.bench.name for o in outcomes if o.errors or not o.runs]
    repeats_shown = args.repeats or (1 if args.quick else 3)
    write_markdown(args.out, outcomes, rows, repeats_shown, args.quick)
    print(f"\nwrote {args.out}")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
