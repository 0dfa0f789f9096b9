"""The invariants ``make soak`` checks after its chaos run (issue 10), as pure functions.

Each check takes what was recorded (the server's journal, every reply seen on ``{p}/res``, the
daemon's SQLite file, the board bus) and returns a ``Check``: a name, whether it held, and a
one-line detail for the summary. Ground truth for "what the locker created" is the daemon's
own store: its ``epoch`` and ``last_seq`` in ``meta`` (DESIGN 6: seqs are 1, 2, ... per epoch).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hardware.boards.kerong import CMD_UNLOCK
from hardware.emulators.kerong import KerongEmulator
from hardware.gpio.pulse import MAX_PULSE_S

# Events after which a spent credential is armed again (test_crash's list): a grant beyond
# the first per (parcel, step) is legitimate only after one of these. After
# unlock_outcome_unknown (lockerd killed between a grant and the door) the parcel's other
# credential (its QR token after its code) still opens: the grant may not have opened.
REARM_EVENTS = frozenset(
    {"door_jammed", "deposit_empty", "item_left_behind", "hardware_fault", "unlock_outcome_unknown"}
)
REPLY_DEADLINE_S = 2.0
# Every soak credential and parcel outlives the soak many times over (the default windows are
# days), so any of these means a deadline was judged on a wrong clock.
EXPIRY_REASONS = frozenset({"expired", "not_yet_valid", "dropoff_expired", "pickup_expired"})
TS_SLACK_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class StoreTruth:
    """What the daemon's store says it created: the current epoch and its last seq, and the
    epochs it abandoned (a store found behind its published state starts a new epoch and
    renumbers its unacknowledged events into it: DESIGN 5, issue 11 item 21)."""

    epoch: str | None
    last_seq: int
    outbox_depth: int
    abandoned: tuple[str, ...] = ()


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def store_truth(db: Path) -> StoreTruth:
    with contextlib.closing(_ro(db)) as con:
        meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
        (top,) = con.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
        (depth,) = con.execute("SELECT COUNT(*) FROM outbox").fetchone()
    epoch = meta.get("epoch")
    last = max(int(top), int(meta.get("last_seq") or 0))
    abandoned = tuple(str(e) for e in meta.get("abandoned_epochs") or ())
    return StoreTruth(epoch if isinstance(epoch, str) else None, last, int(depth), abandoned)


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check``'s answer ("ok" when the file is sound)."""
    with contextlib.closing(_ro(db)) as con:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(r[0]) for r in rows)


def journal(path: Path) -> list[dict[str, Any]]:
    """The event rows of a ``locker.fleet.watch.EventLog`` file (baselines left out)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if isinstance(r, dict) and "seq" in r]


def distinct(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each event once: an event renumbered into a new epoch keeps its ``event_id``, and the
    server may hold it under both (epoch, seq)."""
    seen: set[object] = set()
    out = []
    for e in events:
        key = e.get("event_id")
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def check_journal(rows: Sequence[Mapping[str, Any]], truth: StoreTruth) -> Check:
    """The journal holds exactly seq 1..last_seq of the store's epoch, once each, and no
    other epoch but those the store abandoned (each seq of them at most once: their
    unacknowledged tail went on in the new epoch)."""
    by_epoch: dict[str, Counter[int]] = {}
    ids_by_epoch: dict[str, list[object]] = {}
    for r in rows:
        epoch = str(r.get("epoch"))
        by_epoch.setdefault(epoch, Counter())[int(r["seq"])] += 1
        ids_by_epoch.setdefault(epoch, []).append(r.get("event_id"))
    held = by_epoch.pop(str(truth.epoch), Counter())
    want = set(range(1, truth.last_seq + 1))
    missing = sorted(want - held.keys())
    extra = sorted(held.keys() - want)
    twice = sorted(s for s, n in held.items() if n > 1)
    for epoch in truth.abandoned:
        twice += sorted(s for s, n in by_epoch.pop(epoch, Counter()).items() if n > 1)
    problems = []
    if missing:
        problems.append(f"missing seq {missing[:10]} ({len(missing)})")
    if extra:
        problems.append(f"seq past the store's last {extra[:10]}")
    if twice:
        problems.append(f"seq stored twice {twice[:10]}")
    if by_epoch:
        problems.append(f"events of other epochs {sorted(by_epoch)}")
    if any(len(set(ids)) != len(ids) for ids in ids_by_epoch.values()):
        problems.append("an event_id under two seqs")
    detail = "; ".join(problems) or f"seq 1..{truth.last_seq} of one epoch, each once"
    if truth.abandoned and not problems:
        detail += f" (after {len(truth.abandoned)} abandoned epoch(s))"
    return Check("journal equals what the locker created", not problems, detail)


def check_redeliveries(conflicts: Sequence[tuple[str, int, str]], redelivered: int) -> Check:
    """Every copy of an (epoch, seq) that arrived more than once was the very same event."""
    detail = f"{redelivered} redelivered copies dropped by (epoch, seq)"
    if conflicts:
        detail = f"different content under the same (epoch, seq): {list(conflicts)[:5]}"
    return Check("no duplicate after dedup", not conflicts, detail)


def check_credentials(events: Iterable[Mapping[str, Any]]) -> Check:
    """No credential opened twice: grants per (parcel, step) <= 1 + re-arms of that parcel."""
    events = distinct(events)
    grants = Counter(
        (e.get("parcel"), (e.get("data") or {}).get("step"))
        for e in events
        if e["type"] == "access_granted"
    )
    rearms = Counter(e.get("parcel") for e in events if e["type"] in REARM_EVENTS)
    bad = [f"{p} {s}: {n}" for (p, s), n in grants.items() if n > 1 + rearms[p]]
    detail = f"{sum(grants.values())} grants, {sum(rearms.values())} re-arms"
    return Check("no credential opened twice", not bad, "; ".join(bad) or detail)


def check_commands(
    replies: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]], resent: int
) -> Check:
    """Each command id answered ``done`` at most once; each parcel reserved at most once. A
    reply re-published after a reconnect (the link keeps it until PUBACKed) is the same
    answer, same ``ts``: only a second, distinct ``done`` is a second execution."""
    answers = {(r.get("cmd_id"), r.get("ts")) for r in replies if r.get("status") == "done"}
    done = Counter(cmd_id for cmd_id, _ts in answers)
    reserved = Counter(e.get("parcel") for e in distinct(events) if e["type"] == "parcel_reserved")
    bad = [f"cmd {c} done {n}x" for c, n in done.items() if n > 1]
    bad += [f"parcel {p} reserved {n}x" for p, n in reserved.items() if n > 1]
    detail = f"{len(done)} commands done, {resent} sent twice on purpose"
    return Check("no command executed twice", not bad, "; ".join(bad) or detail)


def check_integrity(answers: Sequence[str]) -> Check:
    bad = [a for a in answers if a != "ok"]
    detail = f"{len(answers)} checks (after each SIGKILL and at the end)"
    return Check("PRAGMA integrity_check ok", not bad, "; ".join(bad[:3]) or detail)


def check_pulses(
    emulator: KerongEmulator | None,
    channels: Mapping[str, int],
    events: Iterable[Mapping[str, Any]],
    gpio_pulse_s: float,
    spacing_s: float,
) -> Check:
    """No pulse over the cap: the GPIO pulse configured within ``MAX_PULSE_S`` (the mock pins
    are inside lockerd), every coil pulse on the board bus within it, no unlock frame on the
    bus without a committed grant for that compartment, and one coil at a time: no two
    unlock frames closer than ``spacing_s`` (the configured pulse plus rest, less 10 ms)."""
    problems = []
    if not 0 < gpio_pulse_s <= MAX_PULSE_S:
        problems.append(f"GPIO pulse {gpio_pulse_s} s")
    frames = pulses = 0
    if emulator is not None:
        long = [p for p in emulator.pulses() if p.off is not None and p.off - p.on > MAX_PULSE_S]
        pulses = len(emulator.pulses())
        if long:
            problems.append(f"{len(long)} coil pulses longer than {MAX_PULSE_S} s")
        unlocks = emulator.frames(cmd=CMD_UNLOCK)
        sent = Counter(f.lock_index + 1 for _, f in unlocks)
        times = sorted(t for t, _ in unlocks)
        close = [b - a for a, b in itertools.pairwise(times) if b - a < spacing_s - 0.01]
        if close:
            problems.append(f"{len(close)} unlock frames within {spacing_s} s of the last")
        frames = sum(sent.values())
        granted = Counter(
            channels[e["compartment"]]
            for e in distinct(events)
            if e["type"] == "access_granted" and e.get("compartment") in channels
        )
        problems += [
            f"channel {c}: {n} frames, {granted[c]} grants"
            for c, n in sent.items()
            if n > granted[c]
        ]
    detail = (
        f"{frames} unlock frames, {pulses} coil pulses, all <= {MAX_PULSE_S} s, granted and "
        "one coil at a time"
    )
    return Check("no pulse over the cap", not problems, "; ".join(problems) or detail)


def check_latency(measured: Sequence[float], timed_out: int) -> Check:
    """Every command sent outside an outage answered within ``REPLY_DEADLINE_S``."""
    late = [t for t in measured if t > REPLY_DEADLINE_S]
    ok = not late and timed_out == 0
    if measured:
        ordered = sorted(measured)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        detail = (
            f"{len(measured)} commands, median {ordered[len(ordered) // 2] * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
        )
    else:
        detail = "no command measured"
    if late or timed_out:
        detail += f"; {len(late)} over {REPLY_DEADLINE_S} s, {timed_out} unanswered"
    return Check(
        f"every command answered within {REPLY_DEADLINE_S:.0f} s outside outages",
        ok and bool(measured),
        detail,
    )


@dataclass(frozen=True)
class ClockProbe:
    """A signed command sent with the real time in its ``iat`` around a clock step."""

    offset: str  # libfaketime's form: "+44y", "-2h"
    when: str  # "during" or "after" the step
    ok: bool  # answered ``done``
    detail: str


def check_clock(
    events: Iterable[Mapping[str, Any]], steps: int, probes: Sequence[ClockProbe]
) -> Check:
    """DESIGN 6: each wall-clock step is reported once as ``clock_suspect`` (one episode per
    step: the reading after the step is undone is plausible again), and commands signed with
    the real time are executed during the step and after it is undone."""
    suspects = sum(1 for e in events if e["type"] == "clock_suspect")
    refused = [f"{p.offset} {p.when}: {p.detail}" for p in probes if not p.ok]
    problems = list(refused)
    if suspects != steps:
        problems.append(f"{suspects} clock_suspect for {steps} steps")
    detail = (
        f"{steps} steps, {suspects} clock_suspect, {len(probes)} signed commands around them done"
        if steps
        else "no clock step made"
    )
    return Check(
        "clock steps reported once, commands accepted", not problems, "; ".join(problems) or detail
    )


def check_expiry(events: Iterable[Mapping[str, Any]]) -> Check:
    """Nothing expired on a bad clock reading: no expiry at all, since every deadline in the
    soak is days away (refusals ``expired``/``not_yet_valid``, ``pickup_expired``, a drop-off
    cancelled as expired)."""
    bad: Counter[str] = Counter()
    for e in events:
        reason = str((e.get("data") or {}).get("reason", ""))
        if e["type"] == "pickup_expired" or reason in EXPIRY_REASONS:
            bad[f"{e['type']} {reason}".strip()] += 1
    detail = ", ".join(f"{k}: {n}" for k, n in bad.items()) or "no expiry, no refusal as expired"
    return Check("nothing expired on a bad clock reading", not bad, detail)


def _epoch_s(ts: object) -> float | None:
    try:
        return datetime.fromisoformat(str(ts)).timestamp()
    except ValueError:
        return None


def check_timestamps(events: Iterable[Mapping[str, Any]], began: float, ended: float) -> Check:
    """Every event's ``ts`` lies within the soak's real run (``began``..``ended``, seconds
    since the epoch, +-``TS_SLACK_S``): the locker's trusted time never took a stepped
    reading."""
    events = list(events)
    stamps = [(e.get("seq"), _epoch_s(e.get("ts"))) for e in events]
    bad = [
        f"seq {seq}: {ts}"
        for seq, ts in stamps
        if ts is None or not began - TS_SLACK_S <= ts <= ended + TS_SLACK_S
    ]
    detail = f"{len(events)} events stamped within the run"
    return Check("event times within the real run", not bad, "; ".join(bad[:5]) or detail)
