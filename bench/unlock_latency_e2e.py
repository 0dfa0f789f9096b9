"""Unlock latency end to end: the ``#`` that submits a code on the keypad -> the lock acts,
against a bare SQLite commit and a bare pipeline measured in the same run.

Runs the whole daemon in this process as ``lockerd`` assembles it (``tests.daemon_rig``): a
serial keypad on a real pty, the controller committing each grant to SQLite (WAL,
``synchronous=FULL``, on disk) before acting, and the MQTT link up: every event is published
to a real Mosquitto on loopback and acknowledged by a server client in another process's
place (``tests.broker.ServerClient``), as in a cabinet. Time runs from just before the ``#`` byte is
written to the keypad pty to:

- GPIO compartment: the lock pin going high (a gpiozero MockFactory pin that notes the time of
  each change);
- board compartment: the unlock frame's last byte read by the KR-CU16 emulator on another pty
  (the bus polled at the configuration default, 200 ms).

Every unlock is a whole visit (assign, type the code, a person's pause, ``#``, the door opens,
is shut, the step completes; then the same for the pickup), so it meets the bus at a random
phase of its polling as a person's does. Baselines, all on the same disk and in this process:

- bare commit: one small ``synchronous=FULL`` WAL commit, back to back
  (``bench.common.bare_commit_ms``);
- bare commit after idle: the same commit, one after each visit, so that like an unlock's own
  commit it follows a quiet spell (a commit after ~0.1 s of idle costs about twice one made
  back to back on this machine: the disk's and the CPU's idle states);
- bare pipeline: the floor of the unlock path in CPython with nothing of the locker in it:
  ``#`` on a pty -> a pySerial reader thread -> a condition-variable hand-off -> a worker
  thread that commits (as above) -> a mock pin high, paced like the visits.

Percentiles are nearest-rank over at least 500 samples of each kind by default (p99 is then
the 5th slowest). A pty has no baud rate: on a real 19200 baud line add about 2.6 ms for the
five bytes of the board's frame.

    python bench/unlock_latency_e2e.py [--parcels 250]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serial
from gpiozero.pins.mock import MockFactory, MockPin

from bench.common import Figure, bare_commit_ms, percentile, write_results
from locker.sim.broker import Broker
from tests.broker import ServerClient
from tests.daemon_rig import (
    GPIO_LAYOUT,
    KEY_GAP_S,
    LOCKER_ID,
    REST_S,
    BoardCabinet,
    DaemonRig,
    unlock_latencies,
)
from tests.ptys import PtyPort

RESULTS = Path(__file__).with_name("results-unlock-latency-e2e.json")
BOARD_POLL_S = 0.2  # the configuration default
PIPELINE_GAP_S = 0.1  # quiet spell before each bare-pipeline sample, like a visit's


class TimedPin(MockPin):  # type: ignore[misc]
    """A mock pin that notes, on one clock, when it went high."""

    rises: list[float]
    cond: threading.Condition

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed and value:
            with _RISES:
                if not hasattr(self, "rises"):
                    self.rises = []
                self.rises.append(time.monotonic())
                _RISES.notify_all()
        return changed

    def wait_rise(self, n: int, timeout: float = 5.0) -> float:
        """The time of this pin's ``n``-th rise, waiting for it without polling (a polling
        waiter would compete with the daemon's threads for the GIL while it is measured)."""
        with _RISES:
            if not _RISES.wait_for(lambda: len(getattr(self, "rises", ())) >= n, timeout):
                raise TimeoutError("the lock pin never went high")
            return self.rises[n - 1]


_RISES = threading.Condition()


class Server:
    """A running broker and a server client that acknowledges every event; the events it
    received, deduplicated by seq, are what the rig waits on (the outbox empties)."""

    def __init__(self, workdir: Path) -> None:
        self.broker = Broker(workdir / "broker")
        self.broker.start()
        self.client = ServerClient(self.broker)
        self.client.start()
        self._seen: dict[int, dict[str, Any]] = {}
        self._read = 0

    def mqtt_table(self) -> dict[str, Any]:
        return {"mqtt": {"host": self.broker.host, "port": self.broker.port, "tls": False}}

    def events(self) -> list[dict[str, Any]]:
        new = self.client.messages(lambda r: r.topic.startswith(f"lockers/{LOCKER_ID}/evt/"))
        for r in new[self._read :]:
            doc = r.json()
            self._seen.setdefault(int(doc["seq"]), doc)
        self._read = len(new)
        return [self._seen[k] for k in sorted(self._seen)]

    def close(self) -> None:
        self.client.stop()
        self.broker.stop()


class PacedCommit:
    """The bare commit of ``bench.common.bare_commit_ms``, one at a time, on its own file."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
        self.i = 0
        self.samples: list[float] = []

    def commit(self) -> None:
        self.i += 1
        self.con.execute("BEGIN IMMEDIATE")
        self.con.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (self.i % 16, "x" * 200))
        self.con.execute("COMMIT")

    def measure(self) -> None:
        t0 = time.perf_counter()
        self.commit()
        self.samples.append((time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        self.con.close()


def gpio_latencies(workdir: Path, parcels: int, paced: PacedCommit, server: Server) -> list[float]:
    factory = MockFactory(pin_class=TimedPin)
    rig = DaemonRig(workdir, factory, tables=server.mqtt_table(), events_from=server.events)
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
                time.sleep(KEY_GAP_S)  # the person, not a wait for the daemon
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
                paced.measure()
    finally:
        rig.close()
    return samples


def board_latencies(
    workdir: Path, parcels: int, paced: PacedCommit, server: Server
) -> tuple[list[float], Any]:
    cab = BoardCabinet(
        workdir,
        poll_interval_s=BOARD_POLL_S,
        tables=server.mqtt_table(),
        events_from=server.events,
    )
    try:

        def between() -> None:
            time.sleep(REST_S + 0.02)
            paced.measure()

        samples = unlock_latencies(cab, parcels, between=between)
        return samples, cab.bus.counters()
    finally:
        cab.close()


def bare_pipeline_ms(workdir: Path, n: int) -> list[float]:
    """``#`` on a pty -> reader thread -> hand-off -> commit -> pin high, in milliseconds:
    what any Python implementation of this path costs here (see the module docstring)."""
    pty = PtyPort(workdir / "pipe")
    pty.plug()
    port = serial.serial_for_url(str(pty.link), timeout=0.1)
    commit = PacedCommit(workdir / "pipeline.db")
    pin = MockFactory(pin_class=TimedPin).pin(5)
    pin.output_with_state(False)
    cond = threading.Condition()
    inbox: deque[bytes] = deque()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = port.read(max(1, port.in_waiting))
            if data:
                with cond:
                    inbox.append(data)
                    cond.notify()

    def worker() -> None:
        while True:
            with cond:
                cond.wait_for(lambda: inbox or stop.is_set())
                if stop.is_set():
                    return
                inbox.popleft()
            commit.commit()
            pin.state = True

    threads = [threading.Thread(target=reader), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    out: list[float] = []
    try:
        for i in range(n):
            time.sleep(PIPELINE_GAP_S)
            pin.state = False
            submitted = time.monotonic()
            pty.write(b"#")
            out.append((pin.wait_rise(i + 1) - submitted) * 1000.0)
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        for t in threads:
            t.join(5)
        port.close()
        commit.close()
        pty.unplug()
    return out


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
    parser.add_argument(
        "--parcels", type=int, default=250, help="two unlocks per parcel, of each kind"
    )
    args = parser.parse_args(argv)
    n = 2 * args.parcels
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        base = Path(tmp)
        commit = bare_commit_ms(base, n=max(500, n))
        pipeline = bare_pipeline_ms(base, n)
        paced = PacedCommit(base / "paced.db")
        try:
            server = Server(base / "gpio-server")
            try:
                gpio_s = gpio_latencies(base / "gpio", args.parcels, paced, server)
            finally:
                server.close()
            server = Server(base / "board-server")
            try:
                board_s, counters = board_latencies(base / "board", args.parcels, paced, server)
            finally:
                server.close()
        finally:
            paced.close()
        gpio = [s * 1000 for s in gpio_s]
        board = [s * 1000 for s in board_s]
    results = {
        "bare_commit": summary(commit),
        "bare_commit_after_idle": summary(paced.samples),
        "bare_pipeline": summary(pipeline),
        "gpio": summary(gpio),
        "board": summary(board) | {"polls": counters.polls, "preempted": counters.preempted},
    }
    for name, r in results.items():
        print(f"{name:22} n={r['samples']:<5} p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms")
    goal = "p99 <= 1.5x bare commit and < 10 ms"
    figures = [
        Figure("bare commit p50", results["bare_commit"]["p50_ms"], "ms"),
        Figure("bare commit p99", results["bare_commit"]["p99_ms"], "ms"),
        Figure("bare commit after idle p50", results["bare_commit_after_idle"]["p50_ms"], "ms"),
        Figure("bare commit after idle p99", results["bare_commit_after_idle"]["p99_ms"], "ms"),
        Figure("bare pipeline p50", results["bare_pipeline"]["p50_ms"], "ms"),
        Figure("bare pipeline p99", results["bare_pipeline"]["p99_ms"], "ms"),
    ]
    for kind, label in (("gpio", "GPIO"), ("board", "board")):
        p50, p99 = results[kind]["p50_ms"], results[kind]["p99_ms"]
        figures += [
            Figure(f"{label} unlock p50", p50, "ms", "bare commit p50"),
            Figure(f"{label} unlock p99", p99, "ms", "bare commit p99", goal),
            Figure(
                f"{label} unlock p99 (vs commit after idle)",
                p99,
                "ms",
                "bare commit after idle p99",
                goal,
            ),
            Figure(f"{label} unlock p99 (vs bare pipeline)", p99, "ms", "bare pipeline p99"),
        ]
    write_results(
        RESULTS,
        "'#' written to the keypad pty -> GPIO lock pin high / KR-CU16 unlock frame received "
        f"(bus polled every {BOARD_POLL_S * 1000:.0f} ms), whole in-process daemon with its "
        "SQLite commit on disk and its MQTT link up, against a bare synchronous=FULL WAL "
        "commit on the same disk (back to back, and one after each visit's idle spell) and "
        "a bare pty -> thread -> commit -> pin pipeline",
        results,
        figures=figures,
        note="pty has no baud rate; add ~2.6 ms for 5 bytes at 19200 baud",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
