"""What every benchmark shares: the figures it reports, where it writes them, and the machine
they came from.

A benchmark script measures one or more :class:`Figure` s and hands them to
:func:`write_results`. A figure that is compared with something names its baseline, measured
by the same script in the same run (never a number from elsewhere), so ``bench/run.py`` can
give every comparison as a ratio and its spread over repeats. Percentiles are nearest-rank
(:func:`percentile`); tails are p99.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from locker.sim.broker import SERVER_CN, Broker, ClientCert, Endpoint
from tests.broker import ServerClient

OUT_ENV = "BENCH_OUT"  # the runner sets it: where this repeat's JSON goes
PACKAGES = ("paho-mqtt", "pyserial", "gpiozero", "cryptography", "pydantic", "jsonschema")


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number.

    :param name: what it is, unique within its benchmark ("board unlock p99").
    :param value: the figure, in ``unit``.
    :param baseline: the name of the figure of the same run it is compared with, if any
        (the ratio ``value / baseline`` is reported).
    :param goal: the target it is judged against, as text ("<= 1.5x baseline").
    """

    name: str
    value: float
    unit: str
    baseline: str | None = None
    goal: str = ""


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def out_path(default: Path) -> Path:
    """Where to write: the runner's per-repeat file when it set one, else ``default``."""
    return Path(os.environ.get(OUT_ENV, str(default)))


def bare_commit_ms(workdir: Path, n: int = 300) -> list[float]:
    """The floor of any unlock: one small SQLite transaction in WAL mode with
    ``synchronous=FULL`` (the store's settings) on the same disk, in milliseconds."""
    con = sqlite3.connect(workdir / "bare.db", isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i % 16, "x" * 200))
            con.execute("COMMIT")
            out.append((time.perf_counter() - t0) * 1000.0)
        return out
    finally:
        con.close()


def _first_line(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = done.stdout or done.stderr
    return text.splitlines()[0].strip() if text else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def machine_info() -> dict[str, Any]:
    from locker.sim.broker import MOSQUITTO  # noqa: PLC0415 - only where a broker is used

    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": package_versions(),
        "mosquitto": _first_line([MOSQUITTO, "-h"]),
        # The figures are only as quiet as the machine: note what else was running.
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }


def write_results(
    path: Path, what: str, results: Any, *, figures: Sequence[Figure] = (), **extra: Any
) -> None:
    """Write ``results`` (the script's own detail) and ``figures`` (what the runner tabulates)
    as JSON to ``path`` (or to the runner's file, see :func:`out_path`)."""
    path = out_path(path)
    doc = {
        "what": what,
        **extra,
        "machine": machine_info(),
        "figures": [dataclasses.asdict(f) for f in figures],
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path.name}")


def spawn_server(script: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start ``script --serve <spec as JSON>`` (a fleet server in its own process, so it does
    not share the measured process's GIL) and wait for its "ready" line."""
    server = subprocess.Popen(
        [sys.executable, script, "--serve", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    if server.stdout.readline().strip() != "ready":
        server.kill()
        raise RuntimeError(f"{script}: the server process did not start")
    return server


def serve_spec(broker: Broker, **extra: Any) -> dict[str, Any]:
    """What a ``--serve`` process needs (JSON-able): the server identity's endpoint on
    ``broker`` (``SERVER_CN``) and ``extra``."""
    return {"endpoint": dataclasses.asdict(broker.endpoint(SERVER_CN))} | extra


def start_server(spec: dict[str, Any]) -> ServerClient:
    """In a ``--serve`` process: the acknowledging server client of ``serve_spec``, started,
    and "ready" printed for :func:`spawn_server`."""
    ep = spec["endpoint"]
    cert = ClientCert(**ep["cert"]) if ep["cert"] else None
    server = ServerClient(Endpoint(**ep | {"cert": cert}))
    server.start()
    print("ready", flush=True)
    return server


def arrival_order(seqs: Iterable[int]) -> tuple[set[int], bool]:
    """The distinct seqs received, and whether their first copies arrived in order."""
    seen: set[int] = set()
    first_seen: list[int] = []
    for seq in seqs:
        if seq not in seen:
            seen.add(seq)
            first_seen.append(seq)
    return seen, first_seen == sorted(first_seen)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads; proc(5):
    fields 14 and 15 of ``/proc/<pid>/stat``, in clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of the whole machine so far, over every core
    (proc(5): the ``cpu`` line of ``/proc/stat``; idle and iowait count as not busy)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(ticks[:8])  # guest time is already counted in user
    idle = ticks[3] + ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


class CpuMeter:
    """CPU time spent by named processes, and by the whole machine, between ``start`` and
    ``stop``: what a phase of a benchmark cost each process per item, and how busy the
    cores were (a throughput bound by the cores rather than by one process shows up as a
    machine near ``os.cpu_count()`` cores busy)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._began: dict[str, float] = {}
        self._machine = (0.0, 0.0)

    def start(self) -> None:
        self._began = {name: process_cpu_s(pid) for name, pid in self._pids.items()}
        self._machine = machine_busy_s()

    def stop(self, items: int) -> dict[str, Any]:
        """``{"us_per_item": {name: CPU us per item}, "cores_busy": mean busy cores}``."""
        used = {n: process_cpu_s(p) - self._began[n] for n, p in self._pids.items()}
        busy, total = machine_busy_s()
        cores = os.cpu_count() or 1
        wall = (total - self._machine[1]) / cores
        return {
            "us_per_item": {n: round(s * 1e6 / items, 1) for n, s in used.items()},
            "cores_busy": round((busy - self._machine[0]) / wall, 2) if wall > 0 else None,
        }
