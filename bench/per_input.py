"""Per-input work against history (issue 10): 100 vs 100,000 live credentials.

A real controller on a real SQLite file (no link, a lock bank that only records), with N live
retrieval credentials seeded on 6 parcels (plus N/10 consumed token ids, executed command ids
and spent code tags, which expiry, clean-up and the keypad also look at). Measured, per N:
start-up (open the store, load, start the controller), a wrong 8-digit code typed (9 keys,
one counted guess, one commit), a spent code typed again (a refusal with its reason, not
counted), and a right code (a grant: credential consumed, unlock committed). Every figure for
100,000 is reported as a ratio to the same figure for 100 (goal < 1.5x; start-up < 1.5 s).

Run: ``.venv/bin/python bench/per_input.py [--large N]`` (through ``flock /tmp/suite.lock``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, write_results
from locker.cabinet.controller import Controller
from locker.cabinet.domain.model import (
    CommandRecord,
    Commands,
    Credential,
    Credentials,
    LockerState,
    Parcel,
    ParcelStatus,
    Spent,
    SpentTag,
    Step,
    Tokens,
)
from locker.cabinet.store import Store
from locker.ports import DoorState, EventSink, KeyPressed, LockBank
from tests.domain import SIZES, Keys, rules

FAR = 4_000_000_000.0
RESULTS = Path(__file__).with_name("results-per-input.json")


class RecordingBank(LockBank):
    name = "bench"

    def __init__(self) -> None:
        self.unlocked: list[str] = []

    @property
    def compartments(self) -> tuple[str, ...]:
        return tuple(SIZES)

    def start(self, sink: EventSink) -> None:
        pass

    def unlock(self, compartment: str) -> None:
        self.unlocked.append(compartment)

    def doors(self) -> Mapping[str, DoorState]:
        return dict.fromkeys(SIZES, DoorState.CLOSED)

    def close(self) -> None:
        pass


def seed(db: Path, keys: Keys, n: int) -> tuple[list[str], list[str]]:
    """N retrieval codes on 6 expired parcels, and N/10 codes that stopped working (spent
    tags); returns both lists of codes."""
    store = Store(db, boot_id="seed")
    base = store.load(SIZES)
    comps = dict(base.compartments)
    parcels = {}
    for i, cid in enumerate(SIZES):
        pid = f"P{i}"
        parcels[pid] = Parcel(pid, "delivery", SIZES[cid], cid, ParcelStatus.EXPIRED, FAR, 72)
        comps[cid] = dataclasses.replace(comps[cid], parcel=pid, door=DoorState.CLOSED)
    codes = [f"{10_000_000 + i}" for i in range(n)]
    creds = {}
    for i, code in enumerate(codes):
        tag = keys.tag(code)
        creds[tag] = Credential(tag, f"P{i % len(SIZES)}", Step.RETRIEVE, 0.0, FAR, True)
    tokens = {f"{i:016x}": FAR for i in range(n // 10)}
    commands = {
        f"cmd-{i:08d}": CommandRecord(f"cmd-{i:08d}", FAR, "done", {}, None) for i in range(n // 10)
    }
    spent_codes = [f"{20_000_000 + i}" for i in range(max(4, n // 10))]
    spent = {keys.tag(c): SpentTag("already_used", FAR) for c in spent_codes}
    new = LockerState(
        compartments=MappingProxyType(comps),
        parcels=MappingProxyType(parcels),
        credentials=Credentials(creds),
        tokens=Tokens(tokens),
        commands=Commands(commands),
        spent=Spent(spent),
    )
    store.commit(base, new, (), time.time(), True)
    store.close()
    return codes, spent_codes


def measure(n: int) -> dict[str, float]:
    keys = Keys()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "locker.db"
        codes, spent_codes = seed(db, keys, n)
        t0 = time.perf_counter()
        store = Store(db, boot_id="bench")
        bank = RecordingBank()
        ctl = Controller(
            rules=rules(keys),
            store=store,
            compartment_sizes=SIZES,
            banks=[bank],
            version="bench",
        )
        ctl.start()
        while ctl.step_once(0):
            pass
        startup = time.perf_counter() - t0

        def typed(code: str) -> float:
            t = time.perf_counter()
            for k in code + "#":
                ctl.handle(KeyPressed(k))
            return time.perf_counter() - t

        wrong = [typed(f"9{i:07d}") for i in range(4)]  # under the back-off threshold
        # codes that stopped working, typed again: refused with their reason, never counted
        used = [typed(code) for code in spent_codes[:4]]
        assert ctl.state.throttle.consecutive == 4, ctl.state.throttle
        right = []
        for i, code in enumerate(codes[: len(SIZES)]):
            right.append(typed(code))
            cid = list(SIZES)[i % len(SIZES)]
            assert bank.unlocked and bank.unlocked[-1] == cid, (bank.unlocked, cid)
        store.close()
    return {
        "startup_s": startup,
        "wrong_code_ms": statistics.median(wrong) * 1000,
        "used_code_ms": statistics.median(used) * 1000,
        "right_code_ms": statistics.median(right) * 1000,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large", type=int, default=100_000)
    args = p.parse_args()
    small, large = measure(100), measure(args.large)
    print(f"{'figure':<16}{'100':>12}{args.large:>12}{'ratio':>9}")
    for k in small:
        print(f"{k:<16}{small[k]:>12.4f}{large[k]:>12.4f}{large[k] / small[k]:>8.1f}x")
    goals = {"startup_s": ("s", "< 1.5 s"), "wrong_code_ms": ("ms", "< 1.5x")}
    goals["right_code_ms"] = goals["used_code_ms"] = goals["wrong_code_ms"]
    figures = []
    for k, (unit, goal) in goals.items():
        base = f"{k}, 100 credentials"
        figures.append(Figure(base, small[k], unit))
        figures.append(Figure(f"{k}, {args.large:,} credentials", large[k], unit, base, goal))
    write_results(
        RESULTS,
        f"the controller alone (in-process, SQLite on disk, no link) with 100 vs {args.large:,} "
        "live credentials (and a tenth as many spent codes): start-up (open, load, boot), a "
        "wrong, a spent (already used) and a right 8-digit code typed (medians of 4, 4 and 6)",
        {"100": small, str(args.large): large},
        figures=figures,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
