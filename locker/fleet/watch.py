"""Watching a fleet: what ``lockerctl watch`` and the simulator's server run (DESIGN 5).

- ``EventLog`` (:mod:`locker.fleet.eventlog`): an append-only, fsynced JSON-lines file per
  locker, so that an ack is a durable receipt as the contract requires.
- ``FleetView``: pure bookkeeping of what a fleet publishes: status and occupancy from the
  retained messages, and one ``ledger.Stream`` per ``(locker, epoch)``: events deduplicated
  by ``(locker, epoch, seq)``, gaps detected, only what is held contiguously acknowledged,
  a first contact that starts past its floor answered with a ``resync`` request, so is a gap
  in mid-stream that lasts ``GapRule.wait_s`` (2 s; at most one per ``interval_s``), and a new
  epoch (the locker's store was replaced or rolled back) reported. An event whose
  ``(epoch, seq)`` is valid but whose body breaks the contract (``ledger.event_problem``) is
  held as its ``invalid_event`` placeholder, so the stream goes on and is acked; one that
  cannot be placed is counted (``malformed``) and never acknowledged.
- ``Watcher``: a thread that feeds incoming messages to a ``FleetView``, writes the log,
  reports lines, sends the acks (after the fsync) and the resync requests. A message it fails
  on is reported and skipped: the thread goes on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from locker.contract.actions import Action
from locker.fleet import jsontop
from locker.fleet.client import CommandSigner, FleetClient, FleetError, Incoming, Reply
from locker.fleet.eventlog import EventLog, valid_seq
from locker.fleet.ledger import (
    INVALID_EVENT,
    Ack,
    GapRule,
    Stream,
    epoch_of,
    event_problem,
    gap_line,
    placeholder,
    short_epoch,
    state_floor,
)

__all__ = ["EventLog", "FleetView", "LockerView", "Watcher", "occupancy_line"]

_ACK_EVERY = 200  # events between acks during a burst; otherwise one ack per quiet moment


@dataclass
class LockerView:
    """What the server knows of one locker."""

    locker_id: str
    status: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    streams: dict[str, Stream] = field(default_factory=dict)  # by epoch
    epoch: str | None = None  # the locker's current stream (the newest one seen)
    events: list[dict[str, Any]] = field(default_factory=list)  # new events, contiguous order
    resync_due: bool = False  # a first contact began past its floor: ask for the backlog
    gap_reported: tuple[str, int] | None = None
    malformed: int = 0  # events that could not be placed (no valid seq or epoch): dropped
    invalid: int = 0  # events held as invalid_event placeholders

    @property
    def online(self) -> bool | None:
        return None if self.status is None else bool(self.status.get("online"))

    @property
    def stream(self) -> Stream | None:
        return None if self.epoch is None else self.streams.get(self.epoch)

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.streams.values())


def _event_line(locker_id: str, ev: Mapping[str, Any]) -> str:
    where = " ".join(str(ev[k]) for k in ("compartment", "parcel") if ev.get(k))
    data: dict[str, Any] = ev["data"] if isinstance(ev.get("data"), dict) else {}
    details = " ".join(f"{k}={v}" for k, v in sorted(data.items()) if v is not None)
    parts = [
        str(ev.get("ts", "?")),
        locker_id,
        f"#{ev.get('seq')}",
        str(ev.get("type")),
        where,
        details,
    ]
    return " ".join(p for p in parts if p)


def occupancy_line(locker_id: str, state: Mapping[str, Any]) -> str:
    comps: list[Any] = state["compartments"] if isinstance(state.get("compartments"), list) else []
    cells = []
    for c in comps:
        if isinstance(c, dict):
            mark = f"{c.get('id')}:{c.get('state')}"
            if c.get("parcel"):
                mark += f"({c['parcel']})"
            if c.get("door") != "closed":
                mark += f"[door {c.get('door')}]"
            if c.get("in_service") is False:
                mark += "[out of service]"
            cells.append(mark)
    flags = [f for f in ("lockdown", "keypad_locked") if state.get(f)]
    head = f"{locker_id} state rev {state.get('rev')} outbox {state.get('outbox_depth')}"
    return " ".join([head, *(f"[{f}]" for f in flags), *cells])


class FleetView:
    """Pure bookkeeping of a fleet's messages; ``handle`` returns lines for a human.

    Acknowledgement rule (``ledger``): per ``(locker, epoch)``, only what is held
    contiguously from the stream's floor; only the locker's current epoch is acknowledged.
    ``baselines`` (locker -> seq) sets the floor of the first stream seen of a locker.
    ``gap_rule`` says when a mid-stream gap earns a ``resync`` (``gap_resyncs``), timed with
    ``clock`` (seconds, monotonic by default).
    """

    def __init__(
        self,
        prefix: str = "lockers",
        log: EventLog | None = None,
        baselines: Mapping[str, int] | None = None,
        *,
        gap_rule: GapRule | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.gap_rule = gap_rule or GapRule()
        self.clock = clock
        self.lockers: dict[str, LockerView] = {}
        self._log = log
        self._baselines = dict(baselines or {})
        if log is not None:
            for locker_id, streams in log.load().items():
                view = self._view(locker_id)
                view.streams = {s.epoch: s for s in streams}
                view.epoch = streams[-1].epoch if streams else None

    def _view(self, locker_id: str) -> LockerView:
        view = self.lockers.get(locker_id)
        if view is None:
            view = self.lockers[locker_id] = LockerView(locker_id)
        return view

    def handle(self, msg: Incoming) -> list[str]:
        head = self.prefix + "/"
        levels = msg.topic[len(head) :].split("/") if msg.topic.startswith(head) else []
        if len(levels) < 2:
            return [f"ignored message on unexpected topic {msg.topic}"]
        locker_id, channel = levels[0], levels[1]
        if channel in ("ack", "cmd"):
            return []
        if channel == "evt" and msg.retain:
            # A locker never retains an event; a retained one is a forgery or a mistake,
            # and replaying it on every subscribe must not count as news (issue 11, 23).
            return [f"{locker_id}: retained message on {msg.topic} ignored"]
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        except RecursionError:  # nested too deep: an event's top level still places it
            doc = jsontop.top_level(msg.payload) if channel == "evt" else None
        lines = self._dispatch(locker_id, channel, doc, msg.payload)
        if lines is None:
            if channel == "evt":
                self._view(locker_id).malformed += 1
            return [f"{locker_id}: malformed message on {msg.topic} (not acknowledged)"]
        return lines

    def _dispatch(self, locker_id: str, channel: str, doc: Any, payload: bytes) -> list[str] | None:
        if channel == "status" and (isinstance(doc, dict) or not payload):
            return self._status(locker_id, doc)
        if not isinstance(doc, dict):
            return None
        if channel == "state":
            return self._state(locker_id, doc)
        if channel == "evt" and valid_seq(doc.get("seq")) and epoch_of(doc) is not None:
            return self._event(locker_id, doc)
        if channel == "res":
            return self._reply(locker_id, payload)
        return None

    @staticmethod
    def _reply(locker_id: str, payload: bytes) -> list[str] | None:
        try:
            reply = Reply.parse(payload)
        except FleetError:
            return None
        return [f"{locker_id} reply {reply.cmd_id}: {reply.describe()}"]

    def _status(self, locker_id: str, doc: dict[str, Any] | None) -> list[str]:
        view = self._view(locker_id)
        view.status = doc
        if doc is None:
            return [f"{locker_id} status cleared"]
        if doc.get("online"):
            synced = "" if doc.get("clock_synced") else " (clock not synced)"
            version, boot = doc.get("version"), doc.get("boot_id")
            return [f"{locker_id} online, version {version}, boot {boot}{synced}"]
        return [f"{locker_id} OFFLINE (boot {doc.get('boot_id')})"]

    def _state(self, locker_id: str, doc: dict[str, Any]) -> list[str] | None:
        epoch = epoch_of(doc)
        if epoch is None:
            return None
        view = self._view(locker_id)
        view.state = doc
        lines = [occupancy_line(locker_id, doc)]
        stream, news = self._stream(view, epoch, lines)
        floor = state_floor(doc)
        if floor is not None and floor > stream.contiguous:
            held = stream.contiguous
            missing = stream.raise_floor(floor)
            self._log_baseline(locker_id, stream, floor)
            if missing and not news:
                lines.append(
                    f"{locker_id}: seq {_span(held + 1, floor)} of epoch {short_epoch(epoch)} "
                    "were removed from the locker before this server held them"
                )
            stream.note_gap(self.clock())
            lines += self._collect(view, stream)
        return lines

    def _stream(self, view: LockerView, epoch: str, lines: list[str]) -> tuple[Stream, bool]:
        """The stream of ``epoch``, created (and reported) on first contact."""
        stream = view.streams.get(epoch)
        if stream is not None:
            return stream, False
        stream = view.streams[epoch] = Stream(view.locker_id, epoch)
        previous = view.stream
        if previous is None:
            lines.append(f"{view.locker_id}: first contact, epoch {short_epoch(epoch)}")
            baseline = self._baselines.get(view.locker_id)
            if baseline is not None:
                stream.raise_floor(baseline)
                self._log_baseline(view.locker_id, stream, baseline)
        else:
            lines.append(
                f"{view.locker_id}: NEW EVENT STREAM, epoch {short_epoch(epoch)} replaces "
                f"{short_epoch(previous.epoch)} (held up to seq {previous.contiguous}): the "
                "locker's store was replaced, reset or rolled back"
            )
        view.epoch = epoch
        return stream, True

    def _log_baseline(self, locker_id: str, stream: Stream, floor: int) -> None:
        if self._log is not None:
            self._log.append(locker_id, {"baseline": floor, "epoch": stream.epoch})

    def _event(self, locker_id: str, ev: dict[str, Any]) -> list[str]:
        view = self._view(locker_id)
        epoch = epoch_of(ev)
        assert epoch is not None
        lines: list[str] = []
        stream, new = self._stream(view, epoch, lines)
        seq: int = ev["seq"]
        problem = event_problem(ev)
        if problem is not None:
            # held all the same, or nothing after it could ever be acknowledged
            ev = placeholder(ev, problem)
        if not stream.receive(seq, ev):
            return lines
        if self._log is not None:
            self._log.append(locker_id, ev)
        if problem is not None:
            view.invalid += 1
            lines.append(
                f"{locker_id}: event seq {seq} of epoch {short_epoch(epoch)} is invalid "
                f"({problem}); held as {INVALID_EVENT} so its stream goes on"
            )
        else:
            lines.append(_event_line(locker_id, ev))
        now = self.clock()
        stream.note_gap(now)
        if new and stream.gap() is not None:
            # The first event seen is past the floor (a live event while a backlog is
            # queued): ask for the backlog rather than wait for an ack time-out.
            view.resync_due = True
            stream.resync_at = now
        return lines + self._collect(view, stream)

    def _collect(self, view: LockerView, stream: Stream) -> list[str]:
        view.events += stream.take_released()
        gap = stream.gap()
        if gap is not None:
            key = (stream.epoch, stream.contiguous)
            if view.gap_reported != key:
                view.gap_reported = key
                return [
                    f"{view.locker_id}: gap, missing seq {_span(*gap)} "
                    f"(have up to {max(stream.ahead)}); resync if it lasts "
                    f"{self.gap_rule.wait_s:g} s"
                ]
        elif view.gap_reported is not None and view.gap_reported[0] == stream.epoch:
            view.gap_reported = None
            return [f"{view.locker_id}: gap filled, complete up to seq {stream.contiguous}"]
        return []

    def acks_due(self) -> dict[str, Ack]:
        """locker -> the ack to (re)send, for each locker's current stream."""
        due = {}
        for view in self.lockers.values():
            stream = view.stream
            ack = None if stream is None else stream.ack_due()
            if ack is not None:
                due[view.locker_id] = ack
        return due

    def mark_acked(self, locker_id: str, ack: Ack) -> None:
        self.lockers[locker_id].streams[ack.epoch].mark_acked(ack.upto_seq)

    def resyncs_due(self) -> list[str]:
        """Lockers whose backlog must be asked for (``resync``); ``mark_resync_sent`` after."""
        return [v.locker_id for v in self.lockers.values() if v.resync_due]

    def mark_resync_sent(self, locker_id: str) -> None:
        self.lockers[locker_id].resync_due = False

    def gap_resyncs(self) -> list[tuple[str, str]]:
        """``(locker, line)`` for each current stream whose mid-stream gap has lasted
        ``gap_rule.wait_s`` with no ``resync`` in ``gap_rule.interval_s`` (the fleet
        service's rule); each is counted as sent. The line: ``gap 34-37 for 2.0 s: ...``."""
        now = self.clock()
        due = []
        for view in self.lockers.values():
            stream = view.stream
            if stream is None or stream.gap_since is None:
                continue
            since = stream.gap_since
            gap = stream.gap()
            if gap is not None and stream.gap_resync_due(self.gap_rule, now):
                due.append((view.locker_id, gap_line(gap[0], gap[1], now - since)))
        return due


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


class Watcher:
    """Feeds a ``FleetView`` from a connected ``FleetClient`` on its own thread.

    Every message is handled on this thread (paho's only enqueues). After each burst the log
    is fsynced and then, only then, the acks go out. With a ``signer``, a first contact that
    starts past its floor is answered with a signed ``resync``. ``on_note`` receives the
    connection's story for people (``FleetClient.add_note_listener``: lost, back after N s,
    another client on this identity), on paho's thread: ``lockerctl watch`` prints it on
    stderr.
    """

    def __init__(
        self,
        client: FleetClient,
        view: FleetView,
        on_line: Callable[[str], None] = print,
        *,
        locker_id: str | None = None,
        ack: bool = True,
        log: EventLog | None = None,
        signer: CommandSigner | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.client, self.view, self.on_line, self.ack, self.log = client, view, on_line, ack, log
        self.locker_id = locker_id
        self.signer = signer
        self._queue: queue.Queue[Incoming] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        client.add_listener(self._queue.put)
        if on_note is not None:  # the broker dropped us, we are back, or a takeover
            client.add_note_listener(on_note)

    def topics(self) -> list[str]:
        who = self.locker_id or "+"
        p = self.client.prefix
        return [f"{p}/{who}/status", f"{p}/{who}/state", f"{p}/{who}/evt/#", f"{p}/{who}/res"]

    def start(self) -> None:
        self.client.subscribe(self.topics())
        self._thread = threading.Thread(target=self.run, name="fleet-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        handled = 0
        while not self._stop.is_set():
            try:
                msg = self._queue.get(timeout=0.1)
            except queue.Empty:
                self._guarded(self._flush, "acks and resyncs")
                handled = 0
                continue
            self._guarded(functools.partial(self._handle, msg), f"message on {msg.topic[:200]}")
            handled += 1
            if handled >= _ACK_EVERY or self._queue.empty():
                self._guarded(self._flush, "acks and resyncs")
                handled = 0
        self._flush()

    def _handle(self, msg: Incoming) -> None:
        for line in self.view.handle(msg):
            self.on_line(line)

    def _guarded(self, step: Callable[[], None], what: str) -> None:
        """Run ``step``; a fault of it (a bug, a line the caller cannot print) is recorded in
        ``errors`` and reported, and the watch goes on: it must not stall every locker."""
        try:
            step()
        except Exception as err:
            self.errors.append(f"{what} failed: {err!r}"[:500])
            with contextlib.suppress(Exception):
                self.on_line(f"{what} failed ({type(err).__name__}); carrying on")

    def _flush(self) -> None:
        self._resync()
        due = self.view.acks_due()
        if not due:
            return
        if self.log is not None:
            self.log.sync()
        if not self.ack:
            return
        for locker_id, ack in due.items():
            try:
                self.client.ack(locker_id, ack.upto_seq, epoch=ack.epoch, timeout=5.0)
            except FleetError as err:
                self.errors.append(f"ack to {locker_id} failed: {err}")
                self.on_line(f"{locker_id}: ack failed ({err}); will retry")
                continue
            self.view.mark_acked(locker_id, ack)

    def _resync(self) -> None:
        can_ask = self.signer is not None and self.ack
        for locker_id in self.view.resyncs_due():
            self.view.mark_resync_sent(locker_id)
            if not can_ask:
                self.on_line(f"{locker_id}: backlog not held; waiting for the locker to resend")
                continue
            self.on_line(f"{locker_id}: asking for the backlog (resync)")
            self._start_resync(locker_id)
        for locker_id, line in self.view.gap_resyncs():
            if not can_ask:
                waiting = line.replace("resync sent", "waiting for the locker to resend")
                self.on_line(f"{locker_id}: {waiting} (no command key to send resync)")
                continue
            self.on_line(f"{locker_id}: {line}")
            self._start_resync(locker_id)

    def _start_resync(self, locker_id: str) -> None:
        # On a thread: the reply arrives through this watcher's own queue, which must keep
        # draining while send_command waits for it.
        threading.Thread(
            target=self._send_resync, args=(locker_id,), name="fleet-resync", daemon=True
        ).start()

    def _send_resync(self, locker_id: str) -> None:
        assert self.signer is not None
        try:
            self.client.send_command(locker_id, Action.RESYNC, {}, signer=self.signer)
        except FleetError as err:
            self.errors.append(f"resync of {locker_id} failed: {err}")
            self.on_line(f"{locker_id}: resync failed ({err}); the locker resends on time-out")
