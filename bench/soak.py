"""``make soak``: a bounded chaos soak of one simulated cabinet, then its safety invariants.

A real ``lockerd`` (``locker.sim.cabinet.SimCabinet``: GPIO compartments on mock pins whose
doors a simulated person opens and shuts, an emulated KR-CU16 board, keypad and scanner on
ptys) talks mutual TLS to a real Mosquitto through a TCP relay; a server client (the fleet
server's side of the contract) acknowledges events and sends signed commands. For
``--seconds`` the soak issues parcels, deposits and collects them (codes and QR tokens), types
wrong codes, scans garbage, forces board doors open and opens compartments remotely, while it
rotates through faults: the broker is SIGKILLed and restarted, the broker is frozen (SIGSTOP:
a blackhole) and thawed, the link is cut at the relay, and ``lockerd`` is SIGKILLed and
restarted. Then every fault is lifted and the soak waits for the server to hold everything.

Invariants checked (exit status 1 on any violation):
- the server's journal equals what the locker created: every seq from 1 to the last one held
  (or still queued in the locker's outbox, as the ``stopping`` committed at the end is), none
  missing, none extra, a repeated delivery identical to the first (dedup by seq);
- no credential opened twice: at most one ``access_granted`` per parcel and step, beyond the
  ones a jam or an unknown outcome gave back;
- no command executed twice: at most one ``done`` reply per command id;
- ``PRAGMA integrity_check`` of the locker's database is ``ok``;
- the board never had two unlock frames closer than its pulse plus rest (one coil at a time);
- every command sent while no fault was active (and none within the previous 5 s) was answered
  within 2 s.

Not exercised here (not simulated yet): a full disk and a stepped clock.

    python bench/soak.py [--seconds 600] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import random
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.boards.kerong import CMD_UNLOCK
from locker.contract.credentials import TokenAction
from locker.sim.broker import Broker, Pki
from locker.sim.cabinet import BOARD_LAYOUT, SimCabinet
from locker.sim.proxy import TcpProxy
from tests.broker import ServerClient
from tests.e2e import db_last_seq, db_outbox_depth, signed, start_online

ANSWER_S = 2.0
QUIET_BEFORE_S = 1.0  # and no sooner than this after the birth that followed the last fault
REARMING = ("door_jammed", "unlock_outcome_unknown", "deposit_empty", "item_left_behind")


@dataclass
class Parcel:
    id: str
    drop: str
    pick: str
    stage: str = "issued"  # issued -> dropping -> picking


@dataclass
class Soak:
    cab: SimCabinet
    srv: ServerClient
    broker: Broker
    proxy: TcpProxy
    rng: random.Random
    parcels: list[Parcel] = field(default_factory=list)
    sent: dict[str, tuple[float, bool]] = field(default_factory=dict)  # jti -> (at, counts)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    actions: collections.Counter[str] = field(default_factory=collections.Counter)
    quiet_since: float = 0.0
    births_before: int = 0  # status messages seen when the last fault ended
    n: int = 0

    def online_again(self, now: float) -> bool:
        """Outside an outage: the locker announced itself (birth) after the last fault ended,
        and that was a moment ago."""
        status = self.srv.messages(f"lockers/{self.cab.locker_id}/status")
        fresh = status[self.births_before :]
        return bool(
            fresh
            and fresh[-1].json().get("online")
            and now - fresh[-1].at >= QUIET_BEFORE_S
            and self.cab.running()
        )

    def fault_over(self) -> None:
        self.quiet_since = time.monotonic()
        self.births_before = len(self.srv.messages(f"lockers/{self.cab.locker_id}/status"))

    # -- traffic --------------------------------------------------------------------------

    def command(self, act: str, args: dict[str, Any]) -> None:
        token, jti = signed(self.cab, act, args)
        now = time.monotonic()
        try:
            self.srv.send_command(self.cab.locker_id, token, correlation_data=jti.encode())
        except RuntimeError:  # the server's own connection is down (the broker restarts)
            self.actions["command not sent: server offline"] += 1
            return
        self.sent[jti] = (now, self.online_again(now))

    def issue(self) -> None:
        self.n += 1
        drop, drop_tag = self.cab.new_code()
        pick, pick_tag = self.cab.new_code()
        parcel = Parcel(f"SOAK{self.n}", drop, pick)
        self.parcels.append(parcel)
        self.command(
            "assign",
            {
                "parcel": parcel.id,
                "kind": "delivery",
                "size": self.rng.choice(["S", "S", "M"]),
                "dropoff_tag": drop_tag,
                "pickup_tag": pick_tag,
            },
        )

    def visit(self) -> None:
        waiting = [p for p in self.parcels if p.stage != "done"]
        if not waiting:
            self.issue()
            return
        p = self.rng.choice(waiting)
        if p.stage == "issued":
            self.cab.press(p.drop + "#")
            p.stage = "dropping"
        elif self.rng.random() < 0.5:
            self.cab.press(p.pick + "#")
            p.stage = "done"
        else:
            self.cab.scan(self.cab.token(p.id, TokenAction.PICKUP))
            p.stage = "done"

    def wrong_code(self) -> None:
        self.cab.press(f"{self.rng.randrange(10**8):08d}#")

    def garbage_scan(self) -> None:
        self.cab.scan(f"NOT-A-TOKEN-{secrets.token_hex(4)}")

    def forced_door(self) -> None:
        emu = self.cab.emulator
        if emu is None:
            return
        channel = self.rng.choice(BOARD_LAYOUT)[2]
        emu.force_open(0, channel)
        time.sleep(0.3)  # the intruder holds it open across a poll or two
        emu.close_door(0, channel)

    def remote_open(self) -> None:
        cid = self.rng.choice(["A1", "A2", "B1", "B2"])
        self.command("open", {"compartment": cid, "reason": "soak"})

    # -- faults ---------------------------------------------------------------------------

    def broker_killed(self) -> None:
        self.broker.stop(signal.SIGKILL)
        time.sleep(self.rng.uniform(1.0, 4.0))
        self.broker.start()
        deadline = time.monotonic() + 15
        while not self.srv.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)  # the server reconnects on its own

    def blackhole(self) -> None:
        self.broker.pause()
        time.sleep(self.rng.uniform(1.0, 4.0))
        self.broker.resume()

    def link_cut(self) -> None:
        self.proxy.cut()

    def lockerd_killed(self) -> None:
        self.cab.kill()
        time.sleep(self.rng.uniform(0.2, 1.0))
        self.cab.start()


def run(seconds: float, seed: int, workdir: Path) -> int:
    rng = random.Random(seed)
    pki = Pki(workdir / "pki")
    broker = Broker(workdir / "broker", pki=pki)
    broker.start()
    proxy = TcpProxy(broker.port)
    srv = ServerClient(broker)
    srv.start()
    cab = SimCabinet(
        workdir / "cab",
        broker=broker,
        mqtt={"port": proxy.port},
        door_open_after_s=0.2,
        door_close_after_s=0.6,
        security={"max_remote_opens_per_hour": 1000},
        log_level="WARNING",
    )
    soak = Soak(cab, srv, broker, proxy, rng)
    try:
        start_online(srv, cab)
        traffic: list[tuple[float, Callable[[], None]]] = [
            (3, soak.issue),
            (6, soak.visit),
            (1, soak.wrong_code),
            (1, soak.garbage_scan),
            (0.5, soak.forced_door),
            (0.5, soak.remote_open),
        ]
        faults: list[Callable[[], None]] = [
            soak.broker_killed,
            soak.blackhole,
            soak.link_cut,
            soak.lockerd_killed,
        ]
        deadline = time.monotonic() + seconds
        next_fault = time.monotonic() + min(10.0, seconds / 6)
        soak.births_before = 0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_fault:
                fault = faults[sum(soak.faults.values()) % len(faults)]
                soak.faults[fault.__name__] += 1
                fault()
                soak.fault_over()
                next_fault = time.monotonic() + rng.uniform(5.0, 15.0) * max(1, seconds / 600)
                continue
            weights = [w for w, _ in traffic]
            action = rng.choices([a for _, a in traffic], weights)[0]
            soak.actions[action.__name__] += 1
            action()
            time.sleep(rng.uniform(0.05, 0.4))
        print("traffic over; waiting for the server to hold everything", flush=True)
        settle = time.monotonic() + 120
        while time.monotonic() < settle:
            if srv.has_all(cab.locker_id, db_last_seq(cab)) and db_outbox_depth(cab) == 0:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late replies
        cab.stop()
        return report(soak)
    finally:
        with contextlib.suppress(Exception):
            cab.close()
        srv.stop()
        proxy.close()
        broker.stop()


def journal(soak: Soak) -> tuple[bool, str, dict[int, dict[str, Any]]]:
    """The server's events against what the locker created (dedup by seq)."""
    events = soak.srv.events(soak.cab.locker_id)
    held: dict[int, dict[str, Any]] = {}
    differing = 0
    for ev in events:
        first = held.setdefault(ev["seq"], ev)
        differing += first != ev
    last = db_last_seq(soak.cab)
    # what the locker still holds (the `stopping` committed at the end) is queued, not lost
    with contextlib.closing(sqlite3.connect(soak.cab.state_dir / "locker.db")) as db:
        queued = {int(r[0]) for r in db.execute("SELECT seq FROM outbox")}
    missing = sorted(set(range(1, last + 1)) - held.keys() - queued)
    extra = sorted(held.keys() - set(range(1, last + 1)))
    detail = (
        f"{last} events, {len(queued)} still queued at the locker, "
        f"{len(events) - len(held)} repeated deliveries, missing {missing[:10]}, "
        f"unexpected {extra[:10]}, {differing} repeats that differ"
    )
    return not missing and not extra and differing == 0, detail, held


def grants(held: dict[int, dict[str, Any]]) -> tuple[bool, str]:
    granted: collections.Counter[tuple[str, str]] = collections.Counter()
    given_back: collections.Counter[str] = collections.Counter()
    for seq in sorted(held):
        ev = held[seq]
        if ev["type"] == "access_granted":
            granted[(ev.get("parcel", ""), ev["data"].get("step", ""))] += 1
        elif ev["type"] in REARMING and ev.get("parcel"):
            given_back[ev["parcel"]] += 1
    twice = [k for k, n in granted.items() if n > 1 + given_back[k[0]]]
    return not twice, f"{sum(granted.values())} grants; {twice[:5]}"


def answers(soak: Soak) -> tuple[dict[str, float], bool, str]:
    done: collections.Counter[str] = collections.Counter()
    answered: dict[str, float] = {}
    for msg in soak.srv.messages(f"lockers/{soak.cab.locker_id}/res"):
        doc = msg.json()
        answered.setdefault(doc["cmd_id"], msg.at)
        done[doc["cmd_id"]] += doc["status"] == "done"
    ok = all(n <= 1 for n in done.values())
    return answered, ok, f"{len(soak.sent)} sent, {len(answered)} answered"


def timely(soak: Soak, answered: dict[str, float]) -> tuple[bool, str]:
    slow = []
    counted = 0
    for jti, (at, counts) in soak.sent.items():
        if not counts:
            continue
        counted += 1
        reply = answered.get(jti)
        if reply is None or reply - at > ANSWER_S:
            slow.append((jti[:8], None if reply is None else round(reply - at, 2)))
    return not slow, f"{counted} counted; late or unanswered: {slow[:5]}"


def one_coil(soak: Soak) -> tuple[bool, str]:
    emu = soak.cab.emulator
    if emu is None:
        return True, "no board"
    times = [t for t, _ in emu.frames(cmd=CMD_UNLOCK)]
    spacing = 0.2 + 0.1 - 0.01  # the simulator's unlock_pulse_s + unlock_rest_s
    close = [b - a for a, b in itertools.pairwise(times) if b - a < spacing]
    return not close, f"{len(times)} unlock frames"


def report(soak: Soak) -> int:
    print("actions:", dict(soak.actions))
    print("faults: ", dict(soak.faults))
    failures: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            failures.append(name)

    ok, detail, held = journal(soak)
    check("journal equals what the locker created", ok, detail)
    check("no credential opened twice", *grants(held))
    answered, ok, detail = answers(soak)
    check("no command executed twice", ok, detail)
    with contextlib.closing(sqlite3.connect(soak.cab.state_dir / "locker.db")) as db:
        (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
    check("database integrity", integrity == "ok", str(integrity))
    check("one coil at a time on the board", *one_coil(soak))
    check(f"commands answered within {ANSWER_S:.0f} s outside outages", *timely(soak, answered))
    print("soak:", "FAILED " + ", ".join(failures) if failures else "all invariants hold")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"soak: {args.seconds:.0f} s, seed {seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        return run(args.seconds, seed, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
