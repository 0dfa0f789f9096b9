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

No I/O, no clock: callers persist, send and print.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from locker.contract import numbers

LEGACY_EPOCH = ""  # events and states of lockers from before epochs (DESIGN 5, v1 without it)


class Ack(NamedTuple):
    """One ack to publish on ``{p}/ack``; ``epoch`` is omitted only for a legacy stream."""

    epoch: str
    upto_seq: int

    def payload(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": 1, "upto_seq": self.upto_seq}
        if self.epoch != LEGACY_EPOCH:
            doc["epoch"] = self.epoch
        return doc


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

    def ack_due(self) -> Ack | None:
        """The ack to (re)send now, or None: never past a gap, never for nothing held."""
        if self.contiguous > 0 and (self.contiguous > self.acked or self.reack):
            return Ack(self.epoch, self.contiguous)
        return None

    def mark_acked(self, upto_seq: int) -> None:
        self.acked = max(self.acked, upto_seq)
        self.reack = False
