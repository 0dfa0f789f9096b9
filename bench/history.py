"""The real ``lockerd`` against history (issue 10): start-up, memory, the credential check and
idle CPU with 100 vs 100,000 live credentials, and with an empty outbox vs 100,000 events.

Three cabinets (``locker.sim.cabinet.SimCabinet``: six GPIO compartments on mock pins, serial
keypad on a pty, the front panel's web page on loopback, no broker), each with a database
seeded through ``locker.cabinet.store.Store`` before ``lockerd`` starts:

- baseline: 100 live credentials, empty outbox;
- 100,000 live credentials (retrieval codes on three expired parcels), empty outbox;
- 100 live credentials and 100,000 unacknowledged events in the outbox.

Each cabinet is started ``--rounds`` times, each a fresh ``lockerd`` child process:

- start-up: from spawning the process to ``READY=1`` on its notify socket (interpreter,
  imports, configuration, loading the state, hardware, every input open);
- RSS: the child's resident memory (``VmRSS`` of ``/proc/<pid>/status``) at READY;
- credential check: three people each type a wrong 8-digit code, then their own pickup code,
  on the keypad pty; timed from the ``#`` byte written to the verdict on the front panel's
  event stream (``GET /events``: ``denied`` or ``granted``), so it includes the keypad reader,
  the controller, the commit (SQLite WAL, ``synchronous=FULL``), the pulse and the panel.
  Doors are simulated (``--simulate-doors``): each opens and closes, the parcel is collected;
  between rounds three new parcels and codes are stored;

then once more without simulated doors for the idle CPU: the child's CPU time (user + system,
``/proc/<pid>/stat``) over ``--idle-seconds`` after READY (+2 s settling), as a share of one
core. Every figure of a loaded cabinet is compared with the baseline's, measured in the same
run (goals: checks < 1.5x, start-up < 1.5 s, idle < 1 % of a core).

    python bench/history.py [--credentials 100000] [--outbox 100000] [--rounds 5]
                            [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figure, write_results
from locker.cabinet.domain.model import (
    Credential,
    Credentials,
    LockerState,
    Out,
    Parcel,
    ParcelStatus,
    Step,
    Throttle,
)
from locker.cabinet.store import Store
from locker.contract.credentials import code_tag
from locker.ports import DoorState
from locker.sim.cabinet import GPIO_LAYOUT, SimCabinet

RESULTS = Path(__file__).with_name("results-history.json")
MEASURED = ("A1", "A2", "A3")  # a parcel and its pickup code per round in each
BALLAST = ("A4", "A5", "A6")  # expired parcels holding the many retrieval codes
FAR = 4_000_000_000.0
MASK = "\u25cf"  # the panel's dot per typed digit (locker.cabinet.panel.web.MASK_CHAR)
TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Case:
    label: str
    credentials: int
    outbox: int


def seed(cab: SimCabinet, case: Case) -> None:
    """The case's history: ``credentials`` live codes in all (most of them retrieval codes on
    the ballast parcels) and ``outbox`` unacknowledged events."""
    store = Store(cab.state_dir / "locker.db", boot_id="bench-seed")
    try:
        base = store.load({cid: size for cid, size, _, _ in GPIO_LAYOUT})
        comps, parcels, creds = dict(base.compartments), {}, {}
        for cid in BALLAST:
            pid = f"ballast-{cid}"
            parcels[pid] = Parcel(
                pid, "delivery", comps[cid].size, cid, ParcelStatus.EXPIRED, FAR, 72
            )
            comps[cid] = dataclasses.replace(comps[cid], parcel=pid, door=DoorState.CLOSED)
        for i in range(max(0, case.credentials - len(MEASURED))):
            tag = code_tag(cab.device_key, f"{10_000_000 + i}")
            pid = f"ballast-{BALLAST[i % len(BALLAST)]}"
            creds[tag] = Credential(tag, pid, Step.RETRIEVE, 0.0, FAR, True)
        new = dataclasses.replace(
            base,
            compartments=MappingProxyType(comps),
            parcels=MappingProxyType(parcels),
            credentials=Credentials(creds),
        )
        filler = [Out("door_closed", BALLAST[0], None) for _ in range(case.outbox)]
        store.commit(base, new, filler, time.time(), True)
    finally:
        store.close()


def top_up(cab: SimCabinet, round_: int) -> list[tuple[str, str]]:
    """A parcel deposited in each measured compartment with its pickup code (what the last
    round left there is cleared); the keypad throttle reset. Returns (compartment, code)."""
    store = Store(cab.state_dir / "locker.db", boot_id="bench-seed")
    try:
        base = store.load({cid: size for cid, size, _, _ in GPIO_LAYOUT})
        comps, parcels = dict(base.compartments), dict(base.parcels)
        gone = {comps[cid].parcel for cid in MEASURED}
        creds = {t: c for t, c in base.credentials.items() if c.parcel not in gone}
        out = []
        for n, cid in enumerate(MEASURED):
            parcels.pop(comps[cid].parcel or "", None)
            pid, code = f"r{round_}-{cid}", f"{90_000_000 + round_ * 10 + n}"
            tag = code_tag(cab.device_key, code)
            now = time.time()
            parcels[pid] = Parcel(
                pid, "delivery", comps[cid].size, cid, ParcelStatus.DEPOSITED, now, 72, FAR, now
            )
            creds[tag] = Credential(tag, pid, Step.PICKUP, now - 60, FAR, True)
            comps[cid] = dataclasses.replace(
                comps[cid], parcel=pid, door=DoorState.CLOSED, pending=None, session=None
            )
            out.append((cid, code))
        new: LockerState = dataclasses.replace(
            base,
            compartments=MappingProxyType(comps),
            parcels=MappingProxyType(parcels),
            credentials=Credentials(creds),
            throttle=Throttle(),
        )
        store.commit(base, new, (), time.time(), True)
        return out
    finally:
        store.close()


class PanelStream:
    """The front panel's server-sent events, read on a thread: (arrival time, payload)."""

    def __init__(self, port: int) -> None:
        self._con = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        self._con.request("GET", "/events")
        self._resp = self._con.getresponse()
        self._cond = threading.Condition()
        self.seen: list[tuple[float, dict[str, Any]]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for raw in self._resp:
                if raw.startswith(b"data: "):
                    t = time.monotonic()
                    with self._cond:
                        self.seen.append((t, json.loads(raw[6:])))
                        self._cond.notify_all()
        except (OSError, ValueError, http.client.HTTPException):
            return  # the stream closed (we or lockerd stopped): nothing more to read

    def wait(self, after: int, pred: Callable[[dict[str, Any]], bool]) -> tuple[int, float]:
        """The index and arrival time of the first payload past ``after`` that ``pred``
        accepts."""
        deadline = time.monotonic() + TIMEOUT_S
        with self._cond:
            while True:
                for i in range(after, len(self.seen)):
                    if pred(self.seen[i][1]):
                        return i + 1, self.seen[i][0]
                after = len(self.seen)
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise TimeoutError("no such update on the panel's event stream")

    def close(self) -> None:
        self._con.close()


def check(cab: SimCabinet, panel: PanelStream, code: str, verdict: str) -> float:
    """Type ``code``; once the panel shows every digit, ``#``: ms to the ``verdict`` state."""
    mark = len(panel.seen)
    cab.press(code)
    mark, _ = panel.wait(mark, lambda p: p["state"] == "entry" and MASK * len(code) in p["text"])
    t0 = time.monotonic()
    cab.press("#")
    _, t1 = panel.wait(mark, lambda p: p["state"] == verdict)
    return (t1 - t0) * 1000.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(case: Case, rounds: int, idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        cab = SimCabinet(Path(tmp), with_board=False, log_level="WARNING", door_close_after_s=0.6)
        try:
            t = time.monotonic()
            seed(cab, case)
            seed_s = time.monotonic() - t
            startup, rss, wrong, right = [], [], [], []
            for r in range(rounds):
                people = top_up(cab, r)
                t0 = time.perf_counter()
                cab.start(timeout=60)
                startup.append(time.perf_counter() - t0)
                assert cab.proc is not None and cab.panel_port is not None
                rss.append(rss_mb(cab.proc.pid))
                panel = PanelStream(cab.panel_port)
                try:
                    for n, (_cid, code) in enumerate(people):
                        wrong.append(check(cab, panel, f"{80_000_000 + r * 10 + n}", "denied"))
                        right.append(check(cab, panel, code, "granted"))
                finally:
                    panel.close()
                cab.stop()
            cab.simulate_doors = False  # its pin poller would count as lockerd's own CPU
            cab.start(timeout=60)
            assert cab.proc is not None
            time.sleep(2.0)  # start-up work settles before the idle window
            c0, w0 = cpu_s(cab.proc.pid), time.monotonic()
            time.sleep(idle_s)  # the measured idle window
            idle = 100 * (cpu_s(cab.proc.pid) - c0) / (time.monotonic() - w0)
            cab.stop()
        finally:
            cab.close()
    return {
        "case": dataclasses.asdict(case),
        "seed_s": round(seed_s, 2),
        "startup_s": startup,
        "rss_mb": rss,
        "wrong_ms": wrong,
        "right_ms": right,
        "idle_pct": idle,
    }


def figures(results: list[dict[str, Any]]) -> list[Figure]:
    base = results[0]["case"]["label"]
    out = []
    for res in results:
        label = res["case"]["label"]
        ref = None if label == base else base
        for name, key, unit, goal, agg in (
            ("start-up to READY", "startup_s", "s", "< 1.5 s", statistics.median),
            ("RSS at READY", "rss_mb", "MB", "", statistics.median),
            ("wrong code, # to verdict, p50", "wrong_ms", "ms", "< 1.5x", statistics.median),
            ("right code, # to verdict, p50", "right_ms", "ms", "< 1.5x", statistics.median),
            ("right code, # to verdict, max", "right_ms", "ms", "", max),
            ("idle CPU", "idle_pct", "% of a core", "< 1 %", None),
        ):
            value = res[key] if agg is None else agg(res[key])
            out.append(
                Figure(
                    f"{name}, {label}",
                    float(value),
                    unit,
                    None if ref is None else f"{name}, {ref}",
                    goal,
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--credentials", type=int, default=100_000)
    p.add_argument("--outbox", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--idle-seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    cases = [
        Case("100 credentials, empty outbox", 100, 0),
        Case(f"{args.credentials:,} credentials", args.credentials, 0),
        Case(f"outbox {args.outbox:,} events", 100, args.outbox),
    ]
    results = []
    for case in cases:
        res = measure(case, args.rounds, args.idle_seconds)
        print(
            f"{case.label:32} start-up {statistics.median(res['startup_s']):.3f} s, "
            f"RSS {statistics.median(res['rss_mb']):.0f} MB, "
            f"wrong {statistics.median(res['wrong_ms']):.2f} ms, "
            f"right {statistics.median(res['right_ms']):.2f} ms "
            f"(max {max(res['right_ms']):.2f}), idle {res['idle_pct']:.2f} %",
            flush=True,
        )
        results.append(res)
    write_results(
        RESULTS,
        f"the real lockerd (a child process, GPIO cabinet, no broker) with 100 vs "
        f"{args.credentials:,} live credentials and an empty outbox vs {args.outbox:,} events: "
        f"start-up to READY and RSS ({args.rounds} starts each), '#' on the keypad pty to the "
        f"verdict on the front panel's event stream ({3 * args.rounds} wrong and "
        f"{3 * args.rounds} right codes), idle CPU over {args.idle_seconds:.0f} s",
        results,
        figures=figures(results),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
