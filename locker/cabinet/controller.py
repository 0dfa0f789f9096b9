"""The controller: the one thread that owns the locker's state (DESIGN section 3).

Adapters put events on ``queue``; the controller takes them one at a time, runs the pure state
machine, commits the new state and its events in one transaction, and only then acts: pulse a
lock, show feedback, reply to a command, wake the MQTT sender. Timers are not threads: the
machine derives its next deadline from the state, and the controller waits on the queue until
then. Tests drive it synchronously with ``step_once`` and a fake clock.

Parts of the controller live in sibling modules, as mixins of ``Controller``: the storage-fault
handling (outage), the ack and published-state checks (streamcheck), the retained snapshot
(snapshot); the event log lines are in eventlog.
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
from locker.cabinet.domain.model import LockerState, Out, persistent_change
from locker.cabinet.eventlog import ALARMS, EventLog
from locker.cabinet.inbox import DEFAULT_INPUT_LIMIT, Inbox
from locker.cabinet.outage import (
    MAX_DEFERRED,
    STORAGE_PROBE_ON_INPUT_S,
    STORAGE_PROBE_S,
    KeptEvents,
    StorageOutage,
)
from locker.cabinet.snapshot import STATE_COUNTERS_EVERY_S, StatePublisher
from locker.cabinet.store import StorageFault, Store
from locker.cabinet.streamcheck import StreamCheck
from locker.contract.actions import Command, CommandRejected
from locker.contract.replies import rfc3339
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
    PublishAccepted,
    PublishRefused,
    RetainedState,
    ServerAck,
    UnlockResult,
    Uplink,
)

logger = logging.getLogger(__name__)

HWM_PERSIST_S = 600.0  # how often an idle controller records the time high-water mark
BATCH_MAX = 256  # inputs committed in one transaction at most (group commit)

Verifier = Callable[[CommandMessage, float], Command]
Observer = Callable[[Transition, float], None]
"""Told the committed transitions, on the controller thread, after their actions ran: the front
panel's projection (DESIGN section 12). Every transition with an event or an action beyond
feedback, and the last of each batch (``_observed``). It must be quick and never block; what
it raises is logged and swallowed, so a broken view never stops the locker."""

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


def _observed(transitions: list[Transition]) -> list[Transition]:
    """The batch's transitions the views are told about. One with no event and no action
    but feedback (a key typed into the entry, its click) is left out when a later one of
    the same batch follows, whose state includes that entry: a burst of keys is projected
    once per event, not once per key (issue 10). A view never misses an event, nor an
    action other than the feedback the controller itself shows."""
    last = len(transitions) - 1
    return [
        tr
        for i, tr in enumerate(transitions)
        if i == last or tr.events or any(not isinstance(a, IndicateAction) for a in tr.actions)
    ]


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


# Kept here too: tests and tools import the clock and these constants from the controller.
__all__ = [
    "ALARMS",
    "MAX_DEFERRED",
    "STATE_COUNTERS_EVERY_S",
    "STORAGE_PROBE_ON_INPUT_S",
    "STORAGE_PROBE_S",
    "Controller",
    "DomainClock",
]

FEEDBACK_REPEAT_S = 0.05  # the same feedback is not restarted faster than a person can type
SHED_LOG_S = 60.0  # shed input is logged at most this often, with the count


class Controller(StatePublisher, StreamCheck, StorageOutage):
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
        self._publish_refused = False  # the broker refuses our publishes (one fault)
        self._batch: _Batch | None = None
        self._shape: tuple[object, ...] | None = None  # what the last full snapshot showed
        self._counters_due: float | None = None  # when a counters-only state may go out
        self._state_sent_at = float("-inf")
        self._invalid_reported_at = float("-inf")
        self.storage_fault: str | None = None  # what is wrong with the database, if anything
        self._fault_since = 0.0
        self._next_probe = 0.0
        self._last_probe = 0.0
        self._replay: deque[Any] = deque()
        self._last_feedback: tuple[Feedback, float] | None = None
        self._shed_logged: dict[str, tuple[float, int]] = {}
        self._event_log = EventLog()

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
            self._event_log.flush(self._mono())
            return False
        self._report_shed()
        if isinstance(event, _BATCHABLE):
            self._handle_batch(event)
        else:
            self.handle(event)
        self._checkpoint()
        return True

    def _checkpoint(self) -> None:
        """The WAL checkpoint, after the actions and only when nothing waits (else bounded
        by ``CHECKPOINT_FORCED``): never inside an unlock's commit (issue 10)."""
        idle = self._deferred is None and self.queue.qsize() == 0
        if self.storage_fault is None and self.store.checkpoint_due(idle=idle):
            self.store.checkpoint()

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
            if self.storage_fault is not None:
                # One last probe whatever its timer: if the database takes writes again, the
                # events published from memory are stored and ``stopping`` is committed (a
                # stop during the fault would otherwise cost a new epoch at the next start).
                self._next_probe = float("-inf")
            self._run_machine(machine.Stop(reason))
            self._publish_state(force=True)  # the last word: counters included, not rate-bound
            self._event_log.flush(self._mono(), force=True)
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
        elif isinstance(event, PublishRefused | PublishAccepted):
            self._publish_refusal(event)
        elif isinstance(event, LinkChanged):
            logger.info("link %s %s", "up" if event.connected else "down", event.detail)
            if event.connected:
                self._publish_state(force=True)
        elif isinstance(event, CommandMessage):
            self._run_machine(self._verified(event))
            self.uplink.command_done(event.receipt)
        else:
            self._run_machine(event)  # type: ignore[arg-type]

    def _publish_refusal(self, event: PublishRefused | PublishAccepted) -> None:
        """The broker refuses (or accepts again) this locker's publishes: one
        ``hardware_fault`` (device ``mqtt``) per outage and its ``hardware_recovered``,
        never one per refused PUBACK (the link reports the outage once, and so does this;
        the refused events stay in the outbox). The link has logged it."""
        refusing = isinstance(event, PublishRefused)
        if refusing == self._publish_refused:
            return
        self._publish_refused = refusing
        if isinstance(event, PublishRefused):
            detail = f"broker refuses publishes on {event.topic}: {event.reason}"
            self._run_machine(HardwareFault("mqtt", detail))
        else:
            self._run_machine(HardwareRecovered("mqtt"))

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
        if suspect is not None:
            report = ClockSuspect(suspect.reading, suspect.trusted, suspect.synced)
            if self.storage_fault is None or self._try_resume(on_input=True):
                self._apply(machine.step(self.state, report, self.rules, now), now, report)
            else:
                self._refuse_unstored(report, now)  # kept, and reported once storage works
        if self.storage_fault is not None and not self._try_resume(on_input=True):
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
        if alone or batch.flush_now:
            self._flush(now)

    def _flush(self, now: float) -> None:
        """Commit the staged batch, then (committed: only now may anything move) act."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        rows = []
        if batch.events or persistent_change(batch.base, self.state):
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
                for source, tr in zip(batch.inputs, batch.transitions, strict=True):
                    # The controller's own events (no input to replay) are kept instead.
                    own = source is None and tr.events
                    self._refuse_unstored(KeptEvents(tr.events) if own else source, now)
                return
            self._hwm_saved = now
        # The door first: a person waits for it, while a beep or a blink starting a little
        # later is unnoticed (gpiozero stops and starts blink threads). Otherwise in order.
        for action in sorted(batch.actions, key=lambda a: not isinstance(a, UnlockAction)):
            self._execute(action)
        mono = self._mono()
        for ev in batch.events:  # committed: only now are they logged as events
            self._event_log.log(ev, mono)
        if rows:
            self.uplink.outbox_changed()
        self._publish_state()
        for tr in _observed(batch.transitions):
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
