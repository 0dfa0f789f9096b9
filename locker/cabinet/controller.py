"""The controller: the one thread that owns the locker's state (DESIGN section 3).

Adapters put events on ``queue``; the controller takes them one at a time, runs the pure state
machine, commits the new state and its events in one transaction, and only then acts: pulse a
lock, show feedback, reply to a command, wake the MQTT sender. Timers are not threads: the
machine derives its next deadline from the state, and the controller waits on the queue until
then. Tests drive it synchronously with ``step_once`` and a fake clock.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from locker.cabinet.clock import DomainClock
from locker.cabinet.domain import machine
from locker.cabinet.domain.draft import (
    IndicateAction,
    ReplyAction,
    ResyncAction,
    Transition,
    UnlockAction,
)
from locker.cabinet.domain.inputs import ClockSuspect
from locker.cabinet.domain.model import VOLATILE_FIELDS, KeypadEntry, LockerState, Out
from locker.cabinet.inbox import DEFAULT_INPUT_LIMIT, PEOPLE, Inbox
from locker.cabinet.sender import check_ack
from locker.cabinet.store import StorageFault, Store
from locker.contract.actions import Command, CommandRejected
from locker.contract.replies import reply_payload, rfc3339
from locker.ports import (
    CommandMessage,
    DoorChanged,
    DoorState,
    EventsDelivered,
    Feedback,
    HardwareFault,
    HardwareRecovered,
    HardwareUnavailable,
    Indicator,
    InputRejected,
    ItemChanged,
    KeyPressed,
    LineScanned,
    LinkChanged,
    LockBank,
    NullIndicator,
    NullUplink,
    PublishRefused,
    RetainedState,
    ServerAck,
    UnlockResult,
    Uplink,
)

logger = logging.getLogger(__name__)

HWM_PERSIST_S = 600.0  # how often an idle controller records the time high-water mark
BATCH_MAX = 256  # inputs committed in one transaction at most (group commit)
STATE_COUNTERS_EVERY_S = 1.0  # a state whose only change is the outbox counters waits this long
ACK_INVALID_EVERY_S = 60.0  # at most one ack_invalid event per this much time (a flood of
# bad acks from a confused server must not flood the outbox); the event counts the rest

Verifier = Callable[[CommandMessage, float], Command]
Observer = Callable[[Transition, float], None]
"""Told every committed transition, on the controller thread, after its actions ran: the front
panel's projection (DESIGN section 12). It must be quick and never block; what it raises is
logged and swallowed, so a broken view never stops the locker."""

# Inputs that only feed the state machine: several queued ones may share one commit.
_BATCHABLE = (
    DoorChanged,
    ItemChanged,
    KeyPressed,
    LineScanned,
    InputRejected,
    HardwareFault,
    HardwareRecovered,
    UnlockResult,
)


@dataclasses.dataclass
class _Batch:
    """Transitions run but not yet committed (group commit, issue 10)."""

    base: LockerState  # the committed state the batch started from
    events: list[Out] = dataclasses.field(default_factory=list)
    actions: list[object] = dataclasses.field(default_factory=list)
    transitions: list[Transition] = dataclasses.field(default_factory=list)  # for observers
    inputs: list[object] = dataclasses.field(default_factory=list)  # to refuse if not stored
    # keys written per table by the staged transitions; None: unknown, compare whole tables
    touched: dict[str, set[str]] | None = dataclasses.field(default_factory=dict)
    flush_now: bool = False  # an unlock is staged: commit and pulse without waiting


# Kept here too: tests and tools import the clock from the controller.
__all__ = ["Controller", "DomainClock"]

STORAGE_PROBE_S = 5.0  # how often a controller in storage fault tries the database again
MAX_DEFERRED = 10_000  # sensor reports kept for replay while the database cannot be written
FEEDBACK_REPEAT_S = 0.05  # the same feedback is not restarted faster than a person can type
SHED_LOG_S = 60.0  # shed input is logged at most this often, with the count

# Events that need a person (logged at WARNING; DESIGN section 5 lists them as alarms).
ALARMS = frozenset(
    {
        "door_forced",
        "door_jammed",
        "door_left_open",
        "unlock_outcome_unknown",
        "keypad_locked_out",
        "hardware_fault",
        "remote_open_limited",
        "clock_suspect",
        "storage_fault",
        "command_rejected",
        "item_left_behind",
        "deposit_empty",
    }
)
# Sensor and device reports that must not be lost while storage is down: replayed after.
_REPLAYED = (
    DoorChanged,
    ItemChanged,
    UnlockResult,
    HardwareFault,
    HardwareRecovered,
    machine.Boot,
    ClockSuspect,
)


class Controller:
    def __init__(
        self,
        *,
        rules: machine.Rules,
        store: Store,
        compartment_sizes: Mapping[str, str],
        banks: Sequence[LockBank],
        version: str,
        indicator: Indicator | None = None,
        uplink: Uplink | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        clock_synced: Callable[[], bool] = lambda: True,
        verify: Verifier | None = None,
        watchdog: Callable[[], object] = lambda: None,
        observers: Sequence[Observer] = (),
        input_limit: int = DEFAULT_INPUT_LIMIT,
    ) -> None:
        self.rules = rules
        self.observers = list(observers)
        self.store = store
        self.banks = list(banks)
        self.version = version
        self.indicator = indicator or NullIndicator()
        self.uplink = uplink or NullUplink()
        self.clock = DomainClock(float(store.meta("hwm", 0.0)), wall, mono, clock_synced)
        self.clock_synced = clock_synced
        self._mono = mono
        self.verify = verify
        self.watchdog = watchdog
        self.queue = Inbox(input_limit)
        self._deferred: Any = None  # taken off the queue while coalescing acks
        self._tick_floor = 0.0  # no tick before this (guard against a stuck deadline)
        self._bank_for = {cid: bank for bank in self.banks for cid in bank.compartments}
        self.state: LockerState = store.load(compartment_sizes)
        self._hwm_saved = 0.0
        self._snapshot_key: Any = None
        self.rev = int(store.meta("rev", 0))
        self.stopped = threading.Event()
        self._invalid_acks = 0  # refused acks not yet reported
        self._batch: _Batch | None = None
        self._shape: tuple[object, ...] | None = None  # what the last full snapshot showed
        self._counters_due: float | None = None  # when a counters-only state may go out
        self._state_sent_at = float("-inf")
        self._invalid_reported_at = float("-inf")
        self.storage_fault: str | None = None  # what is wrong with the database, if anything
        self._fault_since = 0.0
        self._next_probe = 0.0
        self._replay: deque[Any] = deque()
        self._last_feedback: tuple[Feedback, float] | None = None
        self._shed_logged: dict[str, tuple[float, int]] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def submit(self, event: object) -> None:
        """The sink every adapter is given: thread-safe, never blocks, never raises."""
        self.queue.put(event)

    def start(self) -> None:
        """Start the hardware (which reports every door), reconcile, then open for business.
        Nothing is ever pulsed here."""
        doors: dict[str, DoorState] = {}
        items: dict[str, bool | None] = {}
        for bank in self.banks:
            bank.start(self.submit)
            doors.update(bank.doors())
            items.update(bank.items())
        self.uplink.start(self.submit)
        self._run_machine(machine.Boot(doors, items, self.version))

    def step_once(self, timeout: float | None = 0.0) -> bool:
        """Handle one queued event, or a tick if a deadline is due. Returns False when the
        wait ended with nothing to do."""
        wait = self._wait_time(timeout)
        try:
            if self._deferred is not None:
                event, self._deferred = self._deferred, None
            elif wait is None or wait > 0:
                event = self.queue.get(timeout=wait)
            else:
                event = self.queue.get_nowait()
        except queue.Empty:
            if self.storage_fault is not None:
                self._probe_storage()
                return False
            due = machine.next_deadline(self.state, self.rules)
            now = self.clock.now()
            if due is not None and due <= now and now >= self._tick_floor:
                self._run_machine(machine.Tick())
                if (again := machine.next_deadline(self.state, self.rules)) is not None and (
                    again <= now
                ):
                    # A deadline the machine could not act on: never spin on it (a bug, but
                    # a hot loop in a cabinet at 3 a.m. would be worse). Look again in 1 s.
                    logger.error("deadline %.3f still due after a tick; backing off", again)
                    self._tick_floor = now + 1.0
                return True
            self._persist_hwm(now)
            self._publish_counters(now)
            return False
        self._report_shed()
        if isinstance(event, _BATCHABLE):
            self._handle_batch(event)
        else:
            self.handle(event)
        return True

    def _handle_batch(self, first: object) -> None:
        """Group commit (issue 10): run ``first`` and the machine-only inputs already queued
        behind it, then commit their state and events in ONE transaction, and only then
        act. Commit-before-act holds for every action of the batch; a staged unlock ends
        the batch at once, so its pulse waits for its own commit only."""
        self._batch = _Batch(self.state)
        try:
            self.handle(first)
            for _ in range(BATCH_MAX - 1):
                if self._batch is None or self._batch.flush_now or self._deferred is not None:
                    break
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _BATCHABLE):
                    self._deferred = nxt  # handled next, in order, outside the batch
                    break
                self.handle(nxt)
        finally:
            self._flush(self.clock.now())

    def _wait_time(self, timeout: float | None) -> float | None:
        if self.storage_fault is not None:
            # Deadlines wait for the database (nothing can be committed); probe it again soon.
            until_probe = max(0.0, self._next_probe - self._mono())
            return until_probe if timeout is None else min(timeout, until_probe)
        due = machine.next_deadline(self.state, self.rules)
        if self._counters_due is not None:
            due = self._counters_due if due is None else min(due, self._counters_due)
        if due is None:
            return timeout
        until_due = max(0.0, max(due, self._tick_floor) - self.clock.now())
        return until_due if timeout is None else min(timeout, until_due)

    def run(self, stop: threading.Event, watchdog_every: float = 1.0) -> None:
        """The controller thread's loop; the watchdog is fed only from here, so a hung loop
        gets the process restarted by systemd."""
        while not stop.is_set():
            self.step_once(timeout=watchdog_every)
            self.watchdog()
        self.shutdown()

    def shutdown(self, reason: str = "signal") -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        try:
            self._run_machine(machine.Stop(reason))
            self._publish_state(force=True)  # the last word: counters included, not rate-bound
        finally:
            for bank in self.banks:
                bank.close()
            self.indicator.close()
            self.uplink.close(clean=True)

    # --- one event -------------------------------------------------------------------------

    def handle(self, event: object) -> None:
        try:
            self._handle(event)
        except StorageFault as fault:
            # a write outside a state commit (acks, epoch bookkeeping): the rows stay
            self._enter_storage_fault(fault, self.clock.now())

    def _handle(self, event: object) -> None:
        if isinstance(event, ServerAck):
            self._server_acks(self._coalesce_acks(event))
        elif isinstance(event, RetainedState):
            self._compare_published(event)
        elif isinstance(event, EventsDelivered):
            self._freed(self.store.delivered(event.seqs))
        elif isinstance(event, PublishRefused):
            logger.error(
                "broker refused event seq %d: %s; kept for resend", event.seq, event.reason
            )
            self._run_machine(
                HardwareFault("mqtt", f"PUBACK refused seq {event.seq}: {event.reason}")
            )
        elif isinstance(event, LinkChanged):
            logger.info("link %s %s", "up" if event.connected else "down", event.detail)
            if event.connected:
                self._publish_state(force=True)
        elif isinstance(event, CommandMessage):
            self._run_machine(self._verified(event))
            self.uplink.command_done(event.receipt)
        else:
            self._run_machine(event)  # type: ignore[arg-type]

    def _coalesce_acks(self, first: ServerAck) -> list[ServerAck]:
        """Acks commute with everything else: take every ack already queued behind this one
        and free the outbox once (one transaction, one snapshot) instead of once per ack."""
        acks = [first]
        while self._deferred is None:
            try:
                nxt = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(nxt, ServerAck):
                acks.append(nxt)
            else:
                self._deferred = nxt  # handled next, in order
        return acks

    def _server_acks(self, acks: list[ServerAck]) -> None:
        """Delete what valid acks cover; an ack of another epoch or above last_seq deletes
        nothing and is reported (DESIGN 5, issue 11 items 7 and 20)."""
        stream = (self.store.epoch, self.store.last_seq())
        upto = 0
        for ack in acks:
            verdict = check_ack(ack.epoch, ack.upto_seq, stream)
            if verdict == "ok":
                upto = max(upto, ack.upto_seq)
            else:
                self._ack_invalid(ack, verdict)
        if upto:
            self._freed(self.store.acknowledge(upto))

    def _ack_invalid(self, ack: ServerAck, reason: str) -> None:
        self._invalid_acks += 1
        now = self.clock.now()
        logger.warning(
            "server ack refused (%s): upto_seq %d of epoch %s; this stream is %s up to seq %d",
            reason,
            ack.upto_seq,
            ack.epoch or "(none)",
            self.store.epoch,
            self.store.last_seq(),
        )
        if now - self._invalid_reported_at < ACK_INVALID_EVERY_S:
            return
        data = {
            "reason": reason,
            "upto_seq": ack.upto_seq,
            "ack_epoch": ack.epoch,
            "last_seq": self.store.last_seq(),
            "count": self._invalid_acks,
        }
        self._invalid_acks, self._invalid_reported_at = 0, now
        self._apply(Transition(self.state, (Out("ack_invalid", data=data),)), now)

    def _compare_published(self, seen: RetainedState) -> None:
        """Compare the store with the state this locker last published (issue 11 item 21):
        a store behind its own published ``last_seq`` was rolled back (WAL lost after a
        crash); a store that had been seen in step before but finds another epoch published
        is an older copy (restored backup). Both start a new epoch now, so no seq the server
        holds is reused. A new store that finds an older epoch published says so. In all
        three cases no command issued before now runs (the link holds commands until this
        comparison is made)."""
        store = self.store
        reason = None
        if seen.epoch is None or seen.epoch in store.meta("abandoned_epochs", []):
            # Nothing published yet (or from before epochs), or this store's own state from
            # before it began its current epoch (a crash before the new state went out).
            pass
        elif seen.epoch == store.epoch:
            if seen.last_seq is not None and seen.last_seq > store.last_seq():
                reason = "rolled_back"
        elif store.meta("published_seen"):
            reason = "restored"
        else:
            reason = "store_replaced"
        now = self.clock.now()
        data: dict[str, object] = {
            "reason": reason,
            "previous_epoch": seen.epoch,
            "previous_last_seq": seen.last_seq,
        }
        if reason in ("rolled_back", "restored"):
            data["abandoned_epoch"], data["abandoned_last_seq"] = store.epoch, store.last_seq()
            logger.error(
                "event store went backwards (%s): published epoch %s up to seq %s, store has "
                "epoch %s up to seq %d; starting a new epoch",
                reason,
                seen.epoch,
                seen.last_seq,
                store.epoch,
                store.last_seq(),
            )
            store.begin_epoch(now)
            self.uplink.stream_reset()
        elif reason == "store_replaced":
            logger.warning(
                "new event store: the broker holds epoch %s up to seq %s from a previous one",
                seen.epoch,
                seen.last_seq,
            )
            store.set_meta("epoch_began", now)
        if not store.meta("published_seen"):
            store.set_meta("published_seen", True)
        if reason is not None:
            self._apply(Transition(self.state, (Out("epoch_started", data=data),)), now)

    def _verified(self, msg: CommandMessage) -> machine.CommandArrived:
        now = self.clock.now()
        if self.verify is None:
            rej = CommandRejected("unknown_kid", "no command keys configured")
            return machine.CommandArrived(None, rej, msg.correlation_data)
        try:
            try:
                command = self.verify(msg, now)
            except CommandRejected as rej:
                if rej.iat is not None and self._reanchor(rej.iat):
                    return self._verified(msg)  # judged again on the server's time, once
                raise
            self._reanchor(command.iat)
            began = self.store.meta("epoch_began")
            if began is not None and command.iat <= began:
                # Set when this store found it replaced or rolled back an older one: it cannot
                # know whether that one ran the command, so it never runs it (issue 11 item
                # 21). iat is whole seconds: the second of the discovery counts as before.
                raise CommandRejected(
                    "expired",
                    "issued before this locker's event store began; issue it again",
                    command.cmd_id,
                )
            return machine.CommandArrived(command, None, msg.correlation_data)
        except CommandRejected as rej:
            logger.warning("command rejected: %s (%s)", rej.code, rej.message)
            return machine.CommandArrived(None, rej, msg.correlation_data)

    def _reanchor(self, iat: int) -> bool:
        """A validly signed command's ``iat`` may move a suspect clock forward (DESIGN 6)."""
        if not self.clock.reanchor(float(iat)):
            return False
        logger.warning("clock re-anchored on a signed command's iat (%s)", rfc3339(iat))
        return True

    def _run_machine(self, event: machine.Input) -> None:
        now = self.clock.now()
        suspect = self.clock.take_suspect()
        if suspect is not None and self.storage_fault is None:
            report = ClockSuspect(suspect.reading, suspect.trusted, suspect.synced)
            self._apply(machine.step(self.state, report, self.rules, now), now, report)
        if self.storage_fault is not None and not self._try_resume():
            self._refuse_unstored(event, now)
            return
        tr = machine.step(self.state, event, self.rules, now)
        self._apply(tr, now, event)

    def _apply(self, tr: Transition, now: float, source: object = None) -> None:
        """Stage ``tr`` (in the open batch, or alone) and commit it unless a batch is open.
        ``source``: the input that made it, refused if the commit fails."""
        alone = self._batch is None
        batch = self._batch = self._batch or _Batch(self.state)
        batch.events += tr.events
        batch.actions += tr.actions
        batch.transitions.append(tr)
        batch.inputs.append(source)
        if tr.touched is None or batch.touched is None:
            if tr.state is not self.state:
                batch.touched = None
        else:
            for name, keys in tr.touched.items():
                batch.touched.setdefault(name, set()).update(keys)
        batch.flush_now |= any(isinstance(a, UnlockAction) for a in tr.actions)
        self.state = tr.state
        for ev in tr.events:
            _log_event(ev)
        if alone or batch.flush_now:
            self._flush(now)

    def _flush(self, now: float) -> None:
        """Commit the staged batch, then (committed: only now may anything move) act."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        rows = []
        if batch.events or _persistent_change(batch.base, self.state):
            try:
                rows = self.store.commit(
                    batch.base,
                    self.state,
                    batch.events,
                    now,
                    self.clock_synced(),
                    {"hwm": now, "rev": self.rev + 1},
                    batch.touched,
                )
            except StorageFault as fault:
                # Nothing was committed, so nothing is done: back to the committed state.
                self.state = batch.base
                self._enter_storage_fault(fault, now)
                for source in batch.inputs:
                    self._refuse_unstored(source, now)
                return
            self._hwm_saved = now
        for action in batch.actions:
            self._execute(action)
        if rows:
            self.uplink.outbox_changed()
        self._publish_state()
        for tr in batch.transitions:
            for observe in self.observers:
                try:
                    observe(tr, now)
                except Exception:
                    logger.exception("a view observer failed; the locker carries on")

    def _execute(self, action: object) -> None:
        if isinstance(action, UnlockAction):
            bank = self._bank_for.get(action.compartment)
            try:
                if bank is None:
                    raise HardwareUnavailable("no lock driver for this compartment")
                bank.unlock(action.compartment)
            except (HardwareUnavailable, KeyError) as err:
                self.submit(UnlockResult(action.compartment, sent=False, detail=str(err)))
        elif isinstance(action, IndicateAction):
            self._show(action.feedback)
        elif isinstance(action, ReplyAction):
            self.uplink.publish_reply(action.reply, action.correlation_data)
        elif isinstance(action, ResyncAction):
            self.uplink.resync()
            self._publish_state(force=True)

    def _freed(self, n: int) -> None:
        if n:
            self.uplink.outbox_changed()
            self._publish_state()

    def _publish_counters(self, now: float) -> None:
        if self._counters_due is not None and now >= self._counters_due:
            self._publish_state()

    def _persist_hwm(self, now: float) -> None:
        if now - self._hwm_saved >= HWM_PERSIST_S:
            self._storing(lambda: self.store.set_meta("hwm", now), None)
            self._hwm_saved = now

    def _show(self, feedback: Feedback) -> None:
        """Feedback, but the same pattern is not restarted faster than a person types: a
        flood of keys must not start thousands of blink threads."""
        t = self._mono()
        last = self._last_feedback
        if last is not None and last[0] is feedback and t - last[1] < FEEDBACK_REPEAT_S:
            return
        self._last_feedback = (feedback, t)
        self.indicator.show(feedback)

    def _report_shed(self) -> None:
        """People's input shed by the inbox (the machine hears of it in band, as an
        ``InputRejected``): one log line per source and ``SHED_LOG_S`` with how many."""
        for source, n in self.queue.take_shed().items():
            t = self._mono()
            since, count = self._shed_logged.get(source, (-SHED_LOG_S, 0))
            if t - since >= SHED_LOG_S:
                logger.warning(
                    "input flood on the %s: %d inputs shed before the controller", source, count + n
                )
                self._shed_logged[source] = (t, 0)
            else:
                self._shed_logged[source] = (since, count + n)

    # --- storage faults ------------------------------------------------------------------------

    def _storing(self, write: Callable[[], Any], failed: Any) -> Any:
        """A write outside a state commit (acks, the idle high-water mark)."""
        try:
            return write()
        except StorageFault as fault:
            self._enter_storage_fault(fault, self.clock.now())
            return failed

    def _enter_storage_fault(self, fault: StorageFault, now: float) -> None:
        """The database cannot be written: say so once (log, and ``storage_fault`` from
        memory over MQTT), and refuse what needs a commit until a probe write succeeds."""
        self._next_probe = self._mono() + STORAGE_PROBE_S
        if self.storage_fault is not None:
            return
        self.storage_fault = fault.detail
        self._fault_since = now
        logger.error(
            "state database cannot be written: %s; nothing opens until it can (retrying every "
            "%.0f s)",
            fault,
            STORAGE_PROBE_S,
        )
        ev = Out("storage_fault", data={"detail": fault.detail[:200], "path": str(self.store.path)})
        row = self.store.unstored_event(ev, now, self.clock_synced())
        # The retained state goes out first, not rate-bound: it carries the seq this event
        # takes, so a locker stopped or killed before the database takes writes again finds
        # its published last_seq ahead of its store at the next start and begins a new epoch
        # rather than reusing that seq (a server would drop the new event as a duplicate).
        self._publish_state(force=True)
        self.uplink.publish_unstored(row)

    def _probe_storage(self) -> None:
        if self._mono() >= self._next_probe:
            self._try_resume()

    def _try_resume(self) -> bool:
        """Probe the database; when it takes writes again, record the outage and replay the
        sensor reports that arrived meanwhile. True when storage works again."""
        if self._mono() < self._next_probe:
            return False
        try:
            self.store.probe()
        except StorageFault:
            self._next_probe = self._mono() + STORAGE_PROBE_S
            return False
        now = self.clock.now()
        logger.warning(
            "state database writable again after %.0f s (%s)",
            now - self._fault_since,
            self.storage_fault,
        )
        self.storage_fault = None
        self._step(HardwareRecovered("storage"), now)
        while self._replay and self.storage_fault is None:
            self._step(self._replay.popleft(), self.clock.now())
        return self.storage_fault is None

    def _step(self, event: machine.Input, now: float) -> None:
        self._apply(machine.step(self.state, event, self.rules, now), now, event)

    def _refuse_unstored(self, event: object, now: float) -> None:
        """What could not be committed: refuse a person at once, answer a command ``failed``,
        keep sensor reports for replay. Nothing acts without a commit."""
        if isinstance(event, PEOPLE):
            if not (isinstance(event, KeyPressed) and event.key != "#"):
                self._show(Feedback.OUT_OF_SERVICE)
                # the entry is over: the next person starts from an empty keypad
                self.state = dataclasses.replace(self.state, keypad=KeypadEntry())
        elif isinstance(event, machine.CommandArrived):
            cmd_id = event.command.cmd_id if event.command else None
            error = ("storage_fault", f"the locker cannot store anything: {self.storage_fault}")
            reply = reply_payload(cmd_id, "failed", (error[0], error[1][:500]), None, ts=now)
            self.uplink.publish_reply(reply, event.correlation_data)
        elif isinstance(event, _REPLAYED):
            if len(self._replay) >= MAX_DEFERRED:
                logger.error("storage fault: too many sensor reports kept; dropping the oldest")
                self._replay.popleft()
            self._replay.append(event)

    # --- the retained state snapshot ----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.state
        return {
            "v": 1,
            "epoch": self.store.epoch,
            "rev": self.rev,
            "ts": rfc3339(self.clock.now()),
            "lockdown": s.lockdown,
            "keypad_locked": s.throttle.locked_out,
            "outbox_depth": self.store.outbox_depth(),
            "last_seq": self.store.last_seq(),
            "compartments": [
                {
                    "id": c.id,
                    "size": c.size,
                    "state": str(s.occupancy(c)),
                    "door": str(c.door),
                    "in_service": c.in_service,
                    "parcel": c.parcel,
                }
                for c in s.compartments.values()
            ],
        }

    def _publish_state(self, force: bool = False) -> None:
        """The retained snapshot, coalesced (issue 10): a change of what the state shows goes
        out at once; a change of the outbox counters alone (every event, every ack) at most
        once per ``STATE_COUNTERS_EVERY_S``, always the latest values."""
        s = self.state
        shape = (s.compartments, s.parcels, s.lockdown, s.throttle.locked_out, self.store.epoch)
        now = self.clock.now()
        if (
            not force
            and self._shape is not None
            and all(a is b for a, b in zip(shape, self._shape, strict=True))
        ):
            if self._counters_due is None:
                self._counters_due = self._state_sent_at + STATE_COUNTERS_EVERY_S
            if now < self._counters_due:
                return
        self._shape = shape
        self._counters_due = None
        snap = self.snapshot()
        key = {k: v for k, v in snap.items() if k not in ("rev", "ts")}
        if key != self._snapshot_key:
            self._snapshot_key = key
            # Milliseconds of domain time (which never runs back), at least one more than the
            # last value committed: strictly increasing within a run and across restarts.
            self.rev = max(self.rev + 1, int(self.clock.now() * 1000))
            snap["rev"] = self.rev
        elif not force:
            return
        self._state_sent_at = now
        self.uplink.publish_state(snap)


def _persistent_change(old: LockerState, new: LockerState) -> bool:
    """Whether anything but the volatile fields changed (a key press or a counted refusal
    alone is not worth an fsync)."""
    return any(
        getattr(old, f.name) is not getattr(new, f.name)
        for f in dataclasses.fields(LockerState)
        if f.name not in VOLATILE_FIELDS
    )


def _log_event(ev: Out) -> None:
    """One line per event: alarms at WARNING, refusals with their reason (never a code)."""
    level = logging.WARNING if ev.type in ALARMS else logging.INFO
    if not logger.isEnabledFor(level):
        return
    details = "".join(
        f" {k}={ev.data[k]}"
        for k in ("reason", "source", "count", "device", "detail")
        if k in ev.data and ev.type in ("access_denied", "hardware_fault", "storage_fault")
    )
    logger.log(
        level,
        "event %s%s%s%s",
        ev.type,
        f" compartment={ev.compartment}" if ev.compartment else "",
        f" parcel={ev.parcel}" if ev.parcel else "",
        details,
    )
