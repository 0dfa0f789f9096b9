"""The server's receipt rule for one locker's event stream (DESIGN section 5), pure.

An ack ``{"v":1,"epoch","upto_seq":N}`` lets the locker delete every event with seq <= N of
that epoch, so a server may send one only for what it holds: every seq of the epoch from 1
(or from the stream's floor, below) up to N, with no gap. ``Stream`` is that bookkeeping for
one ``(locker_id, epoch)``; ``lockerctl watch``, the simulator's server (``FleetView``) and
the fleet service share it, so they cannot drift.

The floor: events that no longer exist on the locker can never arrive, so waiting for them
would stop the stream for good. A stream's floor is the highest seq known to be gone from
the locker: what this server acknowledged and stored before (its own journal), or what the
locker's retained ``state`` of the same epoch says (``last_seq - outbox_depth``: the outbox
is the contiguous run of unacknowledged seqs, acknowledged by another server, or delivered
by PUBACK alone with ``mqtt.require_server_ack = false``). A new stream with neither starts
at 0, the start of the epoch. The rule that follows: an ack never passes a gap, and a first
contact that begins past its floor (a live event while a backlog is queued) acknowledges
nothing until the backlog has come in; the caller asks for it with ``resync``.

A gap in the middle of a stream (events held past a missing seq) is normal for a moment: N
workers sharing a subscription store events out of order. One that lasts ``GapRule.wait_s``
(default 2 s) is not reordering but loss (a broker that dropped what it held for an offline
session): the caller sends ``resync`` then, at most once per ``GapRule.interval_s`` per
stream, rather than wait for the locker's ack time-out (``mqtt.ack_timeout_s``, 30 s by
default, minutes on some sites).

An event whose ``(epoch, seq)`` can be placed but whose body breaks the contract (a type or
compartment too long, a control character, NaN, a lone surrogate) must still hold its seq, or
nothing after it could ever be acknowledged and the locker would resend it for ever:
``event_problem`` says why, ``placeholder`` is what is held instead (type ``invalid_event``).
One that cannot be placed (no valid seq or epoch) can only be dropped.

No I/O, no clock: callers persist, send and print, and pass the time in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from locker.contract import numbers

LEGACY_EPOCH = ""  # events and states of lockers from before epochs (DESIGN 5, v1 without it)
INVALID_EVENT = "invalid_event"  # the type of a placeholder (never a locker's, DESIGN 5 list)
# The longest text each event field may carry: the contract's limits (schemas/common.json),
# which the fleet database's columns hold on PostgreSQL as well.
EVENT_TEXT = {"type": 64, "compartment": 64, "parcel": 128, "ts": 40}
RAW_KEPT = 4096  # characters of a bad event's payload kept in its placeholder (ASCII-escaped)
GAP_RESYNC_S = 2.0  # how long a mid-stream gap may last before ``resync`` (fleet.toml default)
# fleet.toml's bounds of it: below 0.1 s, workers reordering events would each cost a resync;
# an hour is the most that still beats any sensible ack time-out
GAP_RESYNC_MIN_S, GAP_RESYNC_MAX_S = 0.1, 3600.0
RESYNC_INTERVAL_S = 60.0  # at most one ``resync`` per stream in this many seconds


class Ack(NamedTuple):
    """One ack to publish on ``{p}/ack``; ``epoch`` is omitted only for a legacy stream."""

    epoch: str
    upto_seq: int

    def payload(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": 1, "upto_seq": self.upto_seq}
        if self.epoch != LEGACY_EPOCH:
            doc["epoch"] = self.epoch
        return doc


def short_epoch(epoch: str) -> str:
    """An epoch for a log line: its first 8 characters, ``(none)`` for the legacy one."""
    return epoch[:8] if epoch != LEGACY_EPOCH else "(none)"


def epoch_of(doc: Mapping[str, Any]) -> str | None:
    """The ``epoch`` of an event or state payload; LEGACY_EPOCH when absent; None when
    present but not a non-empty string of at most 64 characters (a malformed message)."""
    epoch = doc.get("epoch", LEGACY_EPOCH)
    if epoch == LEGACY_EPOCH and "epoch" not in doc:
        return LEGACY_EPOCH
    if isinstance(epoch, str) and 0 < len(epoch) <= 64:
        return epoch
    return None


def state_floor(state: Mapping[str, Any]) -> int | None:
    """``last_seq - outbox_depth`` of a retained state (every seq at or below it is gone from
    the locker), or None when the state does not carry both as integers of the contract's
    range (0 to ``numbers.MAX_COUNT``: a larger one could never have been stored)."""
    last, depth = numbers.count(state.get("last_seq")), numbers.count(state.get("outbox_depth"))
    if last is None or depth is None:
        return None
    return max(0, last - depth)


def placed(doc: Any) -> tuple[str, int] | None:
    """``(epoch, seq)`` of an event payload when both are valid (a JSON object, seq an integer
    in ``[1, 2**63-1]``, epoch as ``epoch_of``), else None: an event that cannot be placed."""
    if not isinstance(doc, dict):
        return None
    seq, epoch = numbers.count(doc.get("seq"), minimum=1), epoch_of(doc)
    if seq is None or epoch is None:
        return None
    return epoch, seq


def printable(value: Any, longest: int) -> bool:
    """A string a text column holds: at most ``longest`` characters, printable (PostgreSQL's
    text refuses NUL; a control character has no business in an id or a timestamp)."""
    return isinstance(value, str) and len(value) <= longest and value.isprintable()


def event_problem(doc: Mapping[str, Any]) -> str | None:
    """Why the body of a placed event breaks the contract, or None: ``type`` not a printable
    string of 1-64 characters, ``compartment``/``parcel``/``ts`` present and not printable text
    within ``EVENT_TEXT``, or a document that is not strict UTF-8 JSON (NaN, Infinity, a lone
    surrogate: no database or log file can hold it)."""
    if not printable(doc.get("type"), EVENT_TEXT["type"]) or not doc["type"]:
        return "type is not a printable string of 1-64 characters"
    for key in ("compartment", "parcel", "ts"):
        if doc.get(key) is not None and not printable(doc[key], EVENT_TEXT[key]):
            return f"{key} is not a printable string of at most {EVENT_TEXT[key]} characters"
    try:
        json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValueError:  # UnicodeEncodeError is one
        return "not strict UTF-8 JSON (NaN, Infinity or a lone surrogate)"
    except RecursionError:
        return "nested too deep"
    return None


def placeholder(doc: Mapping[str, Any], problem: str) -> dict[str, Any]:
    """What a server holds instead of a placed event whose body is bad (``event_problem``):
    ``{"v":1,"epoch"?,"seq","type":"invalid_event","ts"?,"data":{"problem","raw"}}``, where
    ``raw`` is the received document as ASCII-escaped JSON cut to ``RAW_KEPT`` characters (it
    can hold nothing a column or log refuses). ``epoch`` is left out for a legacy stream."""
    where = placed(doc)
    if where is None:
        raise ValueError("an event that cannot be placed has no placeholder")
    try:
        raw = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    except RecursionError:
        raw = "(not kept: nested too deep)"
    if len(raw) > RAW_KEPT:
        raw = raw[: RAW_KEPT - 3] + "..."
    out: dict[str, Any] = {"v": 1, "seq": where[1], "type": INVALID_EVENT}
    if where[0] != LEGACY_EPOCH:
        out["epoch"] = where[0]
    if printable(doc.get("ts"), EVENT_TEXT["ts"]):
        out["ts"] = doc["ts"]
    out["data"] = {"problem": problem, "raw": raw}
    return out


@dataclass(frozen=True)
class GapRule:
    """When a mid-stream gap earns a ``resync``: once it has lasted ``wait_s`` (younger ones
    are reordering between workers), and no ``resync`` went to the stream in the last
    ``interval_s`` (one that is not answered is repeated that often, no faster). Seconds."""

    wait_s: float = GAP_RESYNC_S
    interval_s: float = RESYNC_INTERVAL_S

    def due(self, gap_since: float | None, resync_at: float | None, now: float) -> bool:
        """Whether a stream whose gap opened at ``gap_since`` (None: no gap) and which was
        last sent ``resync`` at ``resync_at`` (None: never) is due one at ``now``."""
        if gap_since is None or now - gap_since < self.wait_s:
            return False
        return resync_at is None or now - resync_at >= self.interval_s


def gap_line(first: int, last: int | None, age_s: float) -> str:
    """The log line of a gap resync: ``gap 34-37 for 2.0 s: resync sent`` (``last`` None: the
    end of the run is not known to the caller)."""
    span = str(first) if last == first else f"{first}-{last if last is not None else '?'}"
    return f"gap {span} for {age_s:.1f} s: resync sent"


@dataclass
class Stream:
    """What a server holds of one ``(locker_id, epoch)`` event stream.

    ``contiguous``: every seq up to it is held or below the floor. ``ahead``: events held
    past a gap, by seq. ``released``: events that became contiguous since the caller last
    took them (``take_released``), in seq order.
    """

    locker_id: str
    epoch: str
    contiguous: int = 0
    ahead: dict[int, dict[str, Any]] = field(default_factory=dict)
    released: list[dict[str, Any]] = field(default_factory=list)
    acked: int = 0  # last upto_seq sent for this stream
    reack: bool = False  # a duplicate came in: the locker may have missed our last ack
    duplicates: int = 0
    gap_since: float | None = None  # when the current gap opened (``note_gap``), caller's clock
    gap_at: int | None = None  # ``contiguous`` when it opened: a gap further on is a new one
    resync_at: float | None = None  # when ``resync`` was last sent for this stream

    def receive(self, seq: int, event: dict[str, Any]) -> bool:
        """Record one event (seq >= 1); False if it was a duplicate (already held or below
        the floor), which also asks for the last ack to be sent again."""
        if seq <= self.contiguous or seq in self.ahead:
            self.duplicates += 1
            self.reack = True
            return False
        self.ahead[seq] = event
        self._advance()
        return True

    def raise_floor(self, floor: int) -> int:
        """Everything up to ``floor`` is gone from the locker; returns how many seqs that
        skips which this server never held (0 when nothing was missing)."""
        if floor <= self.contiguous:
            return 0
        below = sorted(s for s in self.ahead if s <= floor)
        missing = floor - self.contiguous - len(below)  # by count: the range may be 2**63 long
        for s in below:
            self.released.append(self.ahead.pop(s))
        self.contiguous = floor
        self._advance()
        return missing

    def _advance(self) -> None:
        while self.contiguous + 1 in self.ahead:
            self.contiguous += 1
            self.released.append(self.ahead.pop(self.contiguous))

    def take_released(self) -> list[dict[str, Any]]:
        out, self.released = self.released, []
        return out

    def gap(self) -> tuple[int, int] | None:
        """The first missing run ``(first, last)`` while events are held past it."""
        if not self.ahead:
            return None
        return self.contiguous + 1, min(self.ahead) - 1

    def note_gap(self, now: float) -> None:
        """Record when the current gap opened (call after ``receive``/``raise_floor``): a gap
        that moved further on is a new one, a closed gap is forgotten."""
        if self.gap() is None:
            self.gap_since = self.gap_at = None
        elif self.gap_at != self.contiguous:
            self.gap_since, self.gap_at = now, self.contiguous

    def gap_resync_due(self, rule: GapRule, now: float) -> bool:
        """Whether ``rule`` asks for a ``resync`` of this stream at ``now``; if so, it is
        counted as sent (``resync_at``)."""
        if not rule.due(self.gap_since, self.resync_at, now):
            return False
        self.resync_at = now
        return True

    def ack_due(self) -> Ack | None:
        """The ack to (re)send now, or None: never past a gap, never for nothing held."""
        if self.contiguous > 0 and (self.contiguous > self.acked or self.reack):
            return Ack(self.epoch, self.contiguous)
        return None

    def mark_acked(self, upto_seq: int) -> None:
        self.acked = max(self.acked, upto_seq)
        self.reack = False
