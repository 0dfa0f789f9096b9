"""The outbox sender (DESIGN section 5, "Events"): which event to publish next, and what
each PUBACK and server ack means. Pure: no broker, no clock reads, no threads, no SQLite.
The MQTT link owns one, feeds it what happened (rows read, PUBACKs, acks, time as a
number) and does what it says (read more rows, publish this row); tests drive it with a
fake clock (tests/test_sender.py).

Rules:
- Events go out in ``seq`` order, at most ``max_inflight`` without PUBACK (paho's window).
- With ``require_ack`` (the default) a row is confirmed only by a server ack ``{p}/ack``
  covering it; at most ``ack_window`` seqs are sent past the last ack, so a slow server
  cannot make the broker drop messages past its ``max_queued_messages``. Everything above
  the last ack is sent again after a reconnect (``connected``) and when no ack progress came
  for ``ack_timeout_s`` (go-back-N from the last ack).
- Without it, a successful PUBACK is delivery (``take_delivered``).
- A PUBACK with a failure reason code refuses that seq: it stays in the outbox, and the
  sender is ``refusing``: no event goes out until the link asks for a ``probe`` (one event,
  the lowest unconfirmed, on a back-off timer) or a ``resync``. The first successful event
  PUBACK ends it: the refused rows go again from the last confirmation. So a broker that
  refuses every publish (a wrong ``locker.id`` or ``mqtt.topic_prefix`` against its ACL)
  costs one PUBLISH per probe, not a window of them per event.
- An ack is checked before it counts (issue 11 items 7 and 20): one of another epoch, or
  above the outbox's own ``last_seq``, confirms nothing and leaves the stream running; an
  ack without epoch (a server from before epochs) counts when not above ``last_seq``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from locker.ports import OutboxRow

READ_BATCH = 200  # rows read from the outbox at a time

AckVerdict = Literal["ok", "stale", "other_epoch", "above_last_seq"]


@dataclass
class LinkCounters:
    """Totals since start, for logs and benchmarks (read from any thread; ints only)."""

    published: int = 0  # event PUBLISHes handed to the socket, re-sends included
    resent: int = 0  # of which re-sends of a seq already published once
    acked: int = 0  # events confirmed: by {p}/ack, or by PUBACK without require_server_ack
    pubacked: int = 0  # event PUBACKs with a success reason code
    refused: int = 0  # event PUBACKs with a failure reason code
    server_acks: int = 0  # valid {p}/ack messages
    invalid_acks: int = 0  # acks of another epoch or above last_seq (nothing confirmed)
    connects: int = 0  # successful CONNACKs
    connect_failures: int = 0  # connects that failed before a CONNACK (counted at the next)
    rebuilds: int = 0  # clients dropped by the watchdog after an internal error
    acked_upto: int = 0  # highest valid upto_seq seen on {p}/ack


def check_ack(epoch: str | None, upto: int, stream: tuple[str, int]) -> AckVerdict:
    """Whether an ack ``(epoch, upto)`` may confirm anything of ``stream`` = (this outbox's
    epoch, its last_seq): "ok", or why not. ``epoch`` None: a server from before epochs."""
    ours, last_seq = stream
    if epoch is not None and epoch != ours:
        return "other_epoch"
    if upto > last_seq:
        return "above_last_seq"
    return "ok"


class OutboxSender:
    """Go-back-N over the durable outbox, driven by the link thread."""

    def __init__(
        self,
        *,
        # mqtt.require_server_ack, max_inflight, ack_timeout_s: no defaults here, the config
        # model's are the only ones (through the link and the assembly).
        require_ack: bool,
        ack_window: int = 500,
        max_inflight: int,
        ack_timeout_s: float,
        counters: LinkCounters | None = None,
    ) -> None:
        if max_inflight < 1 or ack_window < 1:
            raise ValueError("max_inflight and ack_window must be at least 1")
        self.require_ack = require_ack
        self.ack_window = ack_window
        self.max_inflight = max_inflight
        self.ack_timeout_s = ack_timeout_s
        self.counters = counters or LinkCounters()
        self.floor = 0  # every seq <= floor is confirmed; a go-back restarts after it
        self.cursor = 0  # last seq handed out in this pass
        self._buffer: deque[OutboxRow] = deque()  # rows read after the cursor
        self._read_upto = 0
        self._want_read = True
        self.inflight: dict[int, int] = {}  # mid -> seq, awaiting PUBACK
        self.refused: set[int] = set()
        self.refusing = False  # the broker refused an event and none was accepted since
        self._probes = 0  # events that may go out while refusing
        self._max_sent = 0
        self._first_sends: deque[int] = deque()  # seqs published once, not yet confirmed
        self._outstanding_since: float | None = None
        self._delivered: list[int] = []

    # --- what to do next ------------------------------------------------------------------

    def room(self) -> int:
        room = self.max_inflight - len(self.inflight)
        if self.refusing:
            room = min(room, self._probes)
        if self.require_ack:
            room = min(room, self.floor + self.ack_window - self.cursor)
        return room

    def read_request(self) -> tuple[int, int] | None:
        """``(after_seq, limit)`` to read from the outbox and hand to ``fill``, or None."""
        if self._buffer or not self._want_read or self.room() <= 0:
            return None
        self._want_read = False  # cleared before reading: a later notice is not lost
        return self._read_upto, max(READ_BATCH, self.max_inflight)

    def fill(self, rows: list[OutboxRow], limit: int) -> None:
        """Rows read for the last ``read_request`` (in seq order, at most ``limit``)."""
        if rows:
            self._buffer.extend(rows)
            self._read_upto = rows[-1].seq
            self._want_read = len(rows) == limit

    def has_work(self) -> bool:
        return bool(self._want_read or self._buffer) and self.room() > 0

    def next_row(self) -> OutboxRow | None:
        """The next row to publish now (call ``sent`` once it is handed to the socket), or
        None: no room, or nothing buffered (see ``read_request``)."""
        while self.room() > 0 and self._buffer:
            row = self._buffer.popleft()
            self.cursor = row.seq
            if row.seq <= self.floor or row.seq in self.refused:
                continue
            if row.seq in self.inflight.values():
                continue  # still waiting for its PUBACK from before a go-back
            return row
        return None

    def sent(self, seq: int, mid: int, now: float) -> None:
        self.inflight[mid] = seq
        if self.refusing:
            self._probes = max(0, self._probes - 1)
        self.counters.published += 1
        if seq > self._max_sent:
            self._max_sent = seq
            self._first_sends.append(seq)
        else:
            self.counters.resent += 1
        if self._outstanding_since is None:
            self._outstanding_since = now

    def refuse(self, seq: int) -> None:
        """Never send ``seq`` again until ``resync`` (broker refused it, or unsendable)."""
        self.refused.add(seq)
        self.counters.refused += 1

    # --- what happened -----------------------------------------------------------------------

    def outbox_changed(self) -> None:
        self._want_read = True

    def connected(self) -> None:
        """A new connection: everything unconfirmed goes again."""
        self._go_back()

    def lost(self) -> None:
        """The connection died: PUBACKs in flight will never come."""
        if not self.require_ack:
            # Without server acks, PUBACK is delivery: what was still in flight goes again.
            pending = sorted(self.inflight.values())
            self.floor = max(self.floor, (pending[0] - 1) if pending else self.cursor)
        self.inflight.clear()
        self._go_back()

    def probe(self) -> None:
        """While ``refusing``: try the lowest unconfirmed event once more (the refused
        rows are not skipped by this pass). No effect otherwise."""
        if self.refusing:
            self.refused.clear()
            self._probes = 1
            self._go_back()

    def resync(self) -> None:
        """The server asked for everything unacknowledged (refused rows included); while
        ``refusing``, that is one probe."""
        self.refused.clear()
        if self.refusing:
            self._probes = 1
        if not self.require_ack:
            self.floor = 0  # the outbox holds only undelivered rows: send them all
        self._go_back()

    def reset_stream(self) -> None:
        """The outbox was renumbered into a new epoch: nothing of it is confirmed."""
        self.floor = self._max_sent = 0
        self._first_sends.clear()
        self.refused.clear()
        self.inflight.clear()
        self._go_back()

    def puback(self, mid: int, failed: bool) -> int | None:
        """A PUBACK; returns the event's seq (None: not an event). A failed one refuses it
        and makes the sender ``refusing``; a successful one ends that, and the refused rows
        go again."""
        seq = self.inflight.pop(mid, None)
        if seq is None:
            return None
        if failed:
            self.refuse(seq)
            self.refusing, self._probes = True, 0
            return seq
        self.counters.pubacked += 1
        if not self.require_ack:
            self._delivered.append(seq)
            self.counters.acked += 1
            pending = min(self.inflight.values(), default=self.cursor + 1)
            self.floor = max(self.floor, pending - 1)
            self._confirm_upto(self.floor)
        if self.refusing:  # accepted again: what was refused goes again
            self.refusing, self._probes = False, 0
            if not self.require_ack and self.refused:
                # without server acks the floor moves on PUBACKs: not past a refused row
                self.floor = min(self.floor, min(self.refused) - 1)
            self.refused.clear()
            self._go_back()
        return seq

    def server_ack(
        self, epoch: str | None, upto: int, stream: tuple[str, int], now: float
    ) -> AckVerdict:
        """``{p}/ack``; ``stream`` = (this outbox's epoch, its last_seq). Only an "ok" ack
        moves anything; "stale" is a valid ack that confirms nothing new."""
        verdict = check_ack(epoch, upto, stream)
        if verdict != "ok":
            self.counters.invalid_acks += 1
            return verdict
        self.counters.server_acks += 1
        self.counters.acked_upto = max(self.counters.acked_upto, upto)
        if upto <= self.floor:
            return "stale"
        self.floor = upto
        self._confirm_upto(upto)
        # Still outstanding: sent past the ack, or in flight from before a go-back (skipped
        # by the pass until its PUBACK, which may then confirm nothing).
        self._outstanding_since = now if self._pending() else None
        self._want_read = True  # the window moved
        if self.cursor < upto:  # acked beyond what this pass sent: skip ahead
            self.cursor = self._read_upto = upto
            self._buffer.clear()
        return "ok"

    def check_timeout(self, now: float) -> bool:
        """Go back to the last ack when none came for ``ack_timeout_s``; True if it did."""
        if not self.require_ack or self._outstanding_since is None:
            return False
        if not self._pending():
            self._outstanding_since = None
        elif now - self._outstanding_since >= self.ack_timeout_s:
            self._go_back()
            if self.inflight:
                # This pass skips the rows still waiting for their PUBACK; if that PUBACK then
                # confirms nothing (the broker lost the message after it), only a running
                # timer sends them again: found by TestSenderMachine (hypothesis).
                self._outstanding_since = now
            return True
        return False

    def next_timeout(self, now: float) -> float | None:
        """Seconds until ``check_timeout`` may act (None: no deadline)."""
        if self._outstanding_since is None or not self.require_ack:
            return None
        return max(0.0, self._outstanding_since + self.ack_timeout_s - now)

    def take_delivered(self) -> tuple[int, ...]:
        """Seqs delivered by PUBACK alone (``require_ack`` False) since the last call."""
        out, self._delivered = tuple(self._delivered), []
        return out

    def _pending(self) -> bool:
        """Anything unconfirmed is out: sent past the floor in this pass, or in flight from
        before a go-back (the pass skips it until its PUBACK, which may confirm nothing)."""
        return self.cursor > self.floor or any(seq > self.floor for seq in self.inflight.values())

    def _go_back(self) -> None:
        """Restart the event pass just after the last confirmed seq."""
        self.cursor = self._read_upto = self.floor
        self._buffer.clear()
        self._want_read = True
        self._outstanding_since = None

    def _confirm_upto(self, upto: int) -> None:
        while self._first_sends and self._first_sends[0] <= upto:
            self._first_sends.popleft()
            if self.require_ack:
                self.counters.acked += 1
