"""``make soak``: a bounded chaos soak of one simulated cabinet (issue 10).

``python -m locker.sim.soak [--seconds N] [--seed S] [--workdir DIR]`` (``SOAK_SECONDS`` sets
the default duration: 600 s; ``make soak SOAK_SECONDS=60`` or ``make soak-ci`` runs 60 s).
One ``SimCabinet`` (the real ``lockerd`` on mock pins, ptys and the KR-CU16 emulator) talks
through a ``TcpProxy`` to a real TLS Mosquitto (``locker.sim.broker``); the reference server
is ``lockerctl watch``'s own bookkeeping (``locker.fleet.watch``: ``FleetView`` + ``Watcher``
+ an fsynced ``EventLog``, deduplicating and acknowledging by (locker, epoch, seq)).

While a traffic thread issues parcels (signed ``assign``), deposits and collects them (codes
on the keypad, QR tokens on the scanner), types wrong codes, forces board doors open, scans
garbage and re-sends commands, the main thread injects one fault at a time, in shuffled
rounds (the first always completes, so even a short run has every kind): the broker
SIGKILLed and restarted, the link cut, the link blackholed, lockerd SIGKILLed and restarted,
the state directory's disk full (a small tmpfs mounted there; needs root, otherwise skipped
with the reason printed), and lockerd's wall clock stepped 44 years ahead and 2 hours back
(``locker.sim.clockstep``: libfaketime preloaded into lockerd alone; skipped with the reason
when it is not installed). After each fault, a ``resync`` probe must be answered before the
outage is over; commands sent outside outages are timed. At the end the invariants of
``locker.sim.soak_checks`` are checked; the process prints what it did and each invariant,
and exits 1 if any failed (2 if the soak could not run).

One module above the ~500-line guide on purpose: the reference server's recorder, the traffic
and the fault schedule share the outage bookkeeping and are read together; the checks
themselves are in ``locker.sim.soak_checks``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locker.contract.credentials import TokenAction
from locker.errors import LinkTimeoutError
from locker.fleet.client import CommandSigner, FleetError, Incoming, Reply
from locker.fleet.watch import EventLog, FleetView, Watcher
from locker.sim import clockstep
from locker.sim import soak_checks as checks
from locker.sim.broker import Broker, Pki, server_client
from locker.sim.cabinet import BOARD_LAYOUT, COMMAND_KID, SimCabinet, SimError
from locker.sim.proxy import TcpProxy

DEFAULT_SECONDS = 600
KEEPALIVE_S = 5  # the cabinet's MQTT keepalive, the config's minimum
BLACKHOLE_S = 8.0  # past 1.5x the keepalive: both ends notice the dead link
DISK_FULL_S = 3.0
BROKER_DOWN_S = 1.0
RECOVERY_S = 60.0  # a probe must be answered this soon after a fault ends
DRAIN_S = 90.0
QUIET_S = (2.0, 5.0)  # measured traffic between two faults
LIVE_PARCELS = 3  # at most; fits the four S compartments
TMPFS_SIZE = "32m"
# The wall-clock steps (libfaketime offsets) and how long each lasts: a bad NTP answer 44
# years ahead for a second (a Pi has come up in 2069), and a clock set two hours back.
# Both far below clock.CONFIRM_S (30 s), after which a synchronised jump would be believed.
CLOCK_STEPS = {"clock step +44 y": ("+44y", 1.0), "clock step -2 h": ("-2h", 3.0)}
# Guessing must not lock the keypad: every wrong code is one more event to carry.
SECURITY = {
    "failures_before_backoff": 1_000_000,
    "hard_lockout_failures": 1_000_000,
    "max_failures_per_hour": 1_000_000,
}
BOARD_CHANNEL = {cid: ch for cid, _, ch in BOARD_LAYOUT}


class SoakError(LinkTimeoutError):
    """The soak could not set up or recover (not an invariant violation: exit status 2)."""


# --- the reference server -------------------------------------------------------------------


class Server:
    """``lockerctl watch``'s bookkeeping on a persistent session, plus a record of every
    reply and of every (epoch, seq) copy received, for the checks."""

    def __init__(self, broker: Broker, cab: SimCabinet, journal_dir: Path) -> None:
        self.client = server_client(broker, keepalive_s=5)
        self.locker_id = cab.locker_id
        self.log = EventLog(journal_dir)
        self.view = FleetView(log=self.log)
        self.lines: list[str] = []
        self.watcher = Watcher(
            self.client,
            self.view,
            self.lines.append,
            locker_id=cab.locker_id,
            log=self.log,
            signer=CommandSigner(cab.command_key, COMMAND_KID),
        )
        self.replies: list[dict[str, Any]] = []
        self.copies: dict[tuple[str, int], bytes] = {}
        self.conflicts: list[tuple[str, int, str]] = []
        self.redelivered = 0
        self._lock = threading.Lock()
        self.client.add_listener(self._record)

    def start(self) -> None:
        self.client.connect()
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.client.close()
        self.log.close()
        with (self.log.dir / "replies.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in self.replies)

    def _record(self, msg: Incoming) -> None:
        channel = msg.topic.rsplit("/", 1)[-1] if msg.topic.endswith("/res") else ""
        with self._lock:
            if channel == "res":
                with contextlib.suppress(FleetError):
                    self.replies.append(Reply.parse(msg.payload).raw)
                return
            if "/evt" not in msg.topic or msg.retain:
                return
            with contextlib.suppress(ValueError, TypeError, KeyError):
                doc = json.loads(msg.payload)
                key = (str(doc["epoch"]), int(doc["seq"]))
                body = json.dumps(doc, sort_keys=True).encode()
                first = self.copies.setdefault(key, body)
                if first is not body:
                    self.redelivered += 1
                    if first != body:  # kept with both types, for the summary
                        was = json.loads(first).get("type")
                        self.conflicts.append((*key, f"{was} then {doc.get('type')}"))

    def send(self, token: bytes, timeout: float) -> Reply:
        """A signed command and its reply, recorded (``FleetClient`` hands an awaited reply
        to its caller only, never to the listeners)."""
        reply = self.client.send_signed(self.locker_id, token, timeout=timeout)
        with self._lock:
            self.replies.append(reply.raw)
        return reply

    def events(self) -> list[dict[str, Any]]:
        """The events released in order so far (all epochs)."""
        view = self.view.lockers.get(self.locker_id)
        return list(view.events) if view is not None else []

    def state(self) -> dict[str, Any]:
        view = self.view.lockers.get(self.locker_id)
        return dict(view.state or {}) if view is not None else {}

    def holds(self, truth: checks.StoreTruth) -> bool:
        view = self.view.lockers.get(self.locker_id)
        stream = None if view is None else view.streams.get(str(truth.epoch))
        return stream is not None and stream.contiguous >= truth.last_seq


# --- traffic --------------------------------------------------------------------------------


@dataclass
class Parcel:
    drop_code: str
    pickup_code: str
    token: str
    status: str = "reserved"
    tried: float = 0.0


@dataclass
class Traffic:
    """The people and the server's commands, on their own thread until ``stop``."""

    cab: SimCabinet
    server: Server
    rng: random.Random
    # (faults under way, faults begun so far): a command is timed only when no fault was
    # under way at its send nor at its reply, and none began in between
    outage: Callable[[], tuple[int, int]]
    counts: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    timed_out: int = 0
    parcels: dict[str, Parcel] = field(default_factory=dict)
    _seen: int = 0
    _sent: list[bytes] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        try:
            while not self._stop.wait(self.rng.uniform(0.2, 0.6)):
                self._follow()
                self._act()
        except Exception as err:  # reported and fails the soak; the thread must not vanish
            self.errors.append(f"traffic: {err!r}")

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        events = self.server.events()
        for ev in events[self._seen :]:
            p = self.parcels.get(str(ev.get("parcel")))
            if p is not None and ev["type"] in ("parcel_deposited", "parcel_collected"):
                p.status = ev["type"].removeprefix("parcel_")
        self._seen = len(events)

    def _act(self) -> None:
        if not self.cab.running():
            return
        now = time.monotonic()
        live = [p for p in self.parcels.values() if p.status in ("reserved", "deposited")]
        waiting = [p for p in live if now - p.tried > 6.0]
        roll = self.rng.random()
        if roll < 0.2 and len(live) < LIVE_PARCELS:
            self._issue()
        elif roll < 0.55 and waiting:
            self._visit(self.rng.choice(waiting))
        elif roll < 0.7:
            self.cab.press(f"*9{self.rng.randrange(10**7):07d}#")
            self.counts["wrong codes"] += 1
        elif roll < 0.8:
            self.cab.scan(f"NOT-A-PARCEL-{self.rng.randrange(10**6)}")
            self.counts["garbage scans"] += 1
        elif roll < 0.87:
            self._force_door()
        elif roll < 0.95 and self._sent:
            self._command(self.rng.choice(self._sent), "commands re-sent")
        else:
            self._command(self.cab.sign("resync", {}), "resync commands")

    def _issue(self) -> None:
        pid = f"S{len(self.parcels) + 1:05d}"
        drop, drop_tag = self.cab.new_code()
        pick, pick_tag = self.cab.new_code()
        args = {"parcel": pid, "kind": "delivery", "size": "S"}
        token = self.cab.sign(
            "assign", args | {"dropoff_tag": drop_tag, "pickup_tag": pick_tag}, ttl_s=600
        )
        self.parcels[pid] = Parcel(drop, pick, self.cab.token(pid, TokenAction.PICKUP))
        self._sent.append(token)
        reply = self._command(token, "parcels issued")
        if reply is not None and not reply.ok:  # no room: the parcel never existed
            self.parcels[pid].status = "refused"

    def _visit(self, p: Parcel) -> None:
        p.tried = time.monotonic()
        if p.status == "reserved":
            self.cab.press(f"*{p.drop_code}#")
            self.counts["drop-off visits"] += 1
        elif self.rng.random() < 0.5:
            self.cab.scan(p.token)
            self.counts["pickup visits (QR)"] += 1
        else:
            self.cab.press(f"*{p.pickup_code}#")
            self.counts["pickup visits (code)"] += 1

    def _force_door(self) -> None:
        emulator = self.cab.emulator
        comps = self.server.state().get("compartments") or []
        free = [
            c["id"]
            for c in comps
            if isinstance(c, dict)
            and c.get("id") in BOARD_CHANNEL
            and c.get("state") == "free"
            and c.get("door") == "closed"
            and c.get("in_service") is not False
        ]
        if emulator is None or not free:
            return
        channel = BOARD_CHANNEL[self.rng.choice(free)]
        emulator.force_open(0, channel)
        self._stop.wait(0.5)
        emulator.close_door(0, channel)
        self.counts["doors forced"] += 1

    def _command(self, token: bytes, what: str) -> Reply | None:
        """Send and wait; times the reply unless a fault was under way meanwhile."""
        before = self.outage()
        sent = time.monotonic()
        self.counts[what] += 1
        try:
            reply = self.server.send(token, timeout=15.0)
        except FleetError:
            if self._quiet(before):
                self.timed_out += 1
            else:
                self.counts["commands unanswered in an outage"] += 1
            return None
        if self._quiet(before):
            self.latencies.append(time.monotonic() - sent)
        return reply

    def _quiet(self, before: tuple[int, int]) -> bool:
        """No fault under way at the send (``before``) nor now, and none begun in between (a
        fault that began and ended while the reply was awaited is an outage too: a 600 s run
        timed a command across a broker restart at 3.1 s)."""
        under_way, begun = before
        return under_way == 0 and self.outage() == (0, begun)


# --- the soak -------------------------------------------------------------------------------


@dataclass
class Report:
    faults: Counter[str]
    skipped: dict[str, str]
    traffic: Counter[str]
    events: Counter[str]
    checks: list[checks.Check]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def render(self) -> str:
        lines = [f"soak: {self.seconds:.0f} s of chaos"]
        lines += ["faults injected:"] + [f"  {k}: {n}" for k, n in sorted(self.faults.items())]
        lines += [f"  {k}: skipped ({why})" for k, why in sorted(self.skipped.items())]
        lines += ["traffic:"] + [f"  {k}: {n}" for k, n in sorted(self.traffic.items())]
        top = ", ".join(f"{t} {n}" for t, n in self.events.most_common())
        lines += [f"events journaled: {sum(self.events.values())} ({top})", "invariants:"]
        lines += [f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines.append("soak: " + ("all invariants held" if self.ok else "VIOLATION"))
        return "\n".join(lines)


class Soak:
    def __init__(self, workdir: Path, seconds: float, seed: int, say: Callable[[str], None]):
        self.workdir, self.seconds, self.say = workdir, seconds, say
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.skipped: dict[str, str] = {}
        self.integrity: list[str] = []
        self.exits = 0
        self._outage = 0
        self._begun = 0  # faults begun so far (never reset)
        self.mounted = False
        self.broker = Broker(workdir / "broker", pki=Pki(workdir / "pki", ca_name="Soak CA"))
        self.proxy: TcpProxy | None = None
        self.cab: SimCabinet | None = None
        self.server: Server | None = None
        self.stepper: clockstep.ClockStepper | None = None
        self.clock_probes: list[checks.ClockProbe] = []
        self.began_wall = time.time()  # the soak's own clock is never stepped
        self.pids: list[int] = []  # every lockerd started

    # -- set-up and tear-down --

    def setup(self) -> tuple[SimCabinet, Server]:
        self.broker.start()
        self.proxy = TcpProxy(self.broker.port)
        library = clockstep.find_library()
        launch: dict[str, Any] = {}
        if library is None:
            self.skipped["clock step"] = "libfaketime not installed (Debian package faketime)"
        else:
            self.stepper = clockstep.ClockStepper(self.workdir / "faketime.rc", library)
            launch = {"module": clockstep.MODULE, "env": self.stepper.env()}
        cab = self.cab = SimCabinet(
            self.workdir / "cabinet",
            broker=self.broker,
            security=SECURITY,
            mqtt={"port": self.proxy.port, "keepalive_s": KEEPALIVE_S, "will_delay_s": 1},
            panel=False,
            log_level="INFO",
            **launch,
        )
        self._mount_tmpfs(cab.state_dir)
        self.server = Server(self.broker, cab, self.workdir / "journal")
        self.server.start()
        self._start()
        self.recover("start")
        return cab, self.server

    def _mount_tmpfs(self, where: Path) -> None:
        reason = "needs root to mount a small tmpfs on the state directory"
        if os.geteuid() == 0:
            done = subprocess.run(  # noqa: S603 - fixed arguments, our own directory
                [
                    "/bin/mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={TMPFS_SIZE},mode=0700",
                    "tmpfs",
                    str(where),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            self.mounted = done.returncode == 0
            reason = f"mount failed: {done.stderr.strip() or done.returncode}"
        if not self.mounted:
            self.skipped["disk full"] = reason

    def _start(self) -> None:
        assert self.cab is not None
        self.cab.start()
        if self.cab.proc is not None:
            self.pids.append(self.cab.proc.pid)

    def close(self) -> None:
        steps: list[Callable[[], None]] = [self.broker.stop]
        for part in (self.proxy, self.server, self.cab):
            if part is not None:
                steps.insert(0, part.stop if isinstance(part, Server) else part.close)
        for step in steps:
            with contextlib.suppress(Exception):
                step()
        if self.mounted and self.cab is not None:
            subprocess.run(["/bin/umount", str(self.cab.state_dir)], check=False)  # noqa: S603
        if self.stepper is not None:
            for pid in self.pids:
                self.stepper.forget(pid)

    # -- outages --

    def outage(self) -> tuple[int, int]:
        return self._outage, self._begun

    def recover(self, what: str) -> None:
        """The outage lasts until a ``resync`` probe is executed (the daemon is up, linked
        and executing commands again: a ``failed`` answer during a storage fault is not)."""
        assert self.cab is not None and self.server is not None
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline:
            if not self.cab.running():
                self.exits += 1
                status = self.cab.proc.returncode if self.cab.proc else None
                self.say(f"lockerd exited by itself (status {status}); restarting")
                self._start()
            tried = time.monotonic()
            with contextlib.suppress(FleetError):
                reply = self.server.send(self.cab.sign("resync", {}, ttl_s=10), timeout=5.0)
                if reply.ok:  # answered but not executed (storage fault): not over yet
                    self._outage = 0
                    return
            # A send refused at once (server offline) must not become a flood of probes
            # queued for later: at most one probe a second.
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tried)))
        raise SoakError(f"no answer within {RECOVERY_S} s after {what}")

    def fault(self, name: str, inject: Callable[[], None]) -> None:
        self._outage += 1
        self._begun += 1
        began = time.monotonic()
        inject()
        self.faults[name] += 1
        self.recover(name)
        self.say(f"{name}: recovered after {time.monotonic() - began:.1f} s")

    # -- the faults --

    def broker_kill(self) -> None:
        self.broker.kill()
        time.sleep(BROKER_DOWN_S)  # the fault's own length, not a wait for a condition
        self.broker.start()

    def link_cut(self) -> None:
        assert self.proxy is not None
        self.proxy.cut()

    def link_blackhole(self) -> None:
        assert self.proxy is not None
        self.proxy.blackhole()
        try:
            time.sleep(BLACKHOLE_S)
        finally:
            self.proxy.restore()
            self.proxy.cut()  # the half-dead connections: what a router's reset would do

    def lockerd_kill(self) -> None:
        assert self.cab is not None
        self.cab.kill()
        self.integrity.append(checks.integrity(self.cab.state_dir / "locker.db"))
        self._start()

    def disk_full(self) -> None:
        assert self.cab is not None
        ballast = self.cab.state_dir / "ballast"
        try:
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                # 1 MiB writes, then ever smaller ones down to a byte: not a byte left over
                # (a 1 MiB write that fails leaves up to 1 MiB for the locker to use).
                for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1 << 6, 1):
                    with contextlib.suppress(OSError):
                        while os.write(fd, b"\0" * size) == size:
                            pass
            finally:
                os.close(fd)
            time.sleep(DISK_FULL_S)
        finally:
            ballast.unlink(missing_ok=True)

    def clock_step(self, offset: str, hold_s: float) -> None:
        """lockerd's wall clock stepped by ``offset`` for ``hold_s``: a command signed with
        the real time is sent while it is wrong and another once it is undone; both must be
        executed (recorded for ``checks.check_clock``)."""
        assert self.stepper is not None
        began = time.monotonic()
        self.stepper.step(offset)
        try:
            self._clock_probe(offset, "during", hold_s)
            time.sleep(max(0.0, hold_s - (time.monotonic() - began)))  # the fault's length
        finally:
            self.stepper.undo()
        self._clock_probe(offset, "after", RECOVERY_S)

    def _clock_probe(self, offset: str, when: str, timeout: float) -> None:
        assert self.cab is not None and self.server is not None
        try:
            reply = self.server.send(self.cab.sign("resync", {}), timeout=max(timeout, 5.0))
        except FleetError as err:
            self.clock_probes.append(checks.ClockProbe(offset, when, False, str(err)))
            return
        detail = str(reply.raw.get("status")) + (
            f" {reply.raw.get('error')}" if not reply.ok else ""
        )
        self.clock_probes.append(checks.ClockProbe(offset, when, reply.ok, detail))

    def schedule(self) -> list[tuple[str, Callable[[], None]]]:
        faults = [
            ("broker SIGKILL + restart", self.broker_kill),
            ("link cut", self.link_cut),
            ("link blackholed", self.link_blackhole),
            ("lockerd SIGKILL + restart", self.lockerd_kill),
        ]
        if self.mounted:
            faults.append(("disk full", self.disk_full))
        if self.stepper is not None:
            faults += [
                (name, functools.partial(self.clock_step, offset, hold))
                for name, (offset, hold) in CLOCK_STEPS.items()
            ]
        return faults

    # -- the run --

    def run(self) -> Report:
        cab, server = self.setup()
        traffic = Traffic(cab, server, self.rng, self.outage)
        thread = threading.Thread(target=traffic.run, name="soak-traffic", daemon=True)
        began = time.monotonic()
        thread.start()
        faults = self.schedule()
        # The first round always completes (every kind happens once, even in a short run);
        # later ones stop when the time is up.
        round_ = self.rng.sample(faults, len(faults))
        first = True
        while round_ and (first or time.monotonic() - began < self.seconds):
            time.sleep(self.rng.uniform(*QUIET_S))  # measured traffic between faults
            self.fault(*round_.pop())
            if not round_:
                first = False
                round_ = self.rng.sample(faults, len(faults))
        traffic.stop()
        thread.join(30)
        chaos = time.monotonic() - began
        self._drain(cab, server)
        cab.stop()  # SIGTERM: commits ``stopping``; the file must be sound when closed
        self.integrity.append(checks.integrity(cab.state_dir / "locker.db"))
        self._start()  # whatever the stop did not deliver is resent now
        truth = self._drain(cab, server)
        return self._report(cab, server, traffic, truth, chaos)

    def _drain(self, cab: SimCabinet, server: Server) -> checks.StoreTruth:
        """Wait until the server holds everything and the daemon's outbox is empty."""
        db = cab.state_dir / "locker.db"
        deadline = time.monotonic() + DRAIN_S
        truth = checks.store_truth(db)
        while time.monotonic() < deadline:
            truth = checks.store_truth(db)
            if server.holds(truth) and truth.outbox_depth == 0:
                break
            time.sleep(0.1)
        return truth

    def _report(
        self,
        cab: SimCabinet,
        server: Server,
        traffic: Traffic,
        truth: checks.StoreTruth,
        chaos: float,
    ) -> Report:
        server.watcher.stop()
        server.log.sync()
        rows = checks.journal(server.log.path(cab.locker_id))
        timing = cab.config()["timing"]
        cfg_pulse = float(timing["unlock_pulse_s"])
        results = [
            checks.check_journal(rows, truth),
            checks.check_redeliveries(server.conflicts, server.redelivered),
            checks.check_credentials(rows),
            checks.check_commands(server.replies, rows, traffic.counts["commands re-sent"]),
            checks.check_integrity(self.integrity),
            checks.check_pulses(
                cab.emulator, BOARD_CHANNEL, rows, cfg_pulse, cfg_pulse + timing["unlock_rest_s"]
            ),
            checks.check_latency(traffic.latencies, traffic.timed_out),
            checks.check_clock(
                rows, sum(self.faults[name] for name in CLOCK_STEPS), self.clock_probes
            ),
            checks.check_expiry(rows),
            checks.check_timestamps(rows, self.began_wall, time.time()),
        ]
        log = cab.log()
        crashes = log.count("Traceback") + self.exits
        results.append(
            checks.Check(
                "lockerd never crashed by itself",
                crashes == 0 and not traffic.errors,
                f"{self.exits} exits, {log.count('Traceback')} tracebacks"
                + (f"; {traffic.errors}" if traffic.errors else ""),
            )
        )
        done = Counter(p.status for p in traffic.parcels.values())
        counts = traffic.counts + Counter({f"parcels {k}": n for k, n in done.items()})
        return Report(
            self.faults, self.skipped, counts, Counter(r["type"] for r in rows), results, chaos
        )


def run(workdir: Path, seconds: float, seed: int, say: Callable[[str], None] = print) -> Report:
    soak = Soak(workdir, seconds, seed, say)
    try:
        return soak.run()
    finally:
        soak.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locker.sim.soak", description=__doc__)
    default = float(os.environ.get("SOAK_SECONDS", DEFAULT_SECONDS))
    parser.add_argument("--seconds", type=float, default=default, help="chaos duration")
    parser.add_argument("--seed", type=int, default=secrets.randbelow(2**31))
    parser.add_argument("--workdir", type=Path, help="keep logs and journal here")
    args = parser.parse_args(argv)
    print(f"soak: {args.seconds:.0f} s, seed {args.seed}", flush=True)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        try:
            report = run(workdir, args.seconds, args.seed, lambda s: print(s, flush=True))
        except (SoakError, SimError) as err:
            print(f"soak could not run: {err}", file=sys.stderr)
            return 2
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
