"""The controller's storage-fault handling (issue 8): what it does while the state database
cannot be written, and how it resumes.

A mixin of ``Controller`` (locker.cabinet.controller), kept apart so the controller module
stays small; it works on the controller's own attributes, declared below for the type checker
only. Nothing here runs on another thread: every method is called on the controller thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from locker.cabinet.domain import machine
from locker.cabinet.domain.draft import ReplyAction, Transition
from locker.cabinet.domain.inputs import ClockSuspect
from locker.cabinet.domain.model import KeypadEntry, LockerState, Out, persistent_change
from locker.cabinet.inbox import PEOPLE
from locker.cabinet.store import StorageFault, Store
from locker.contract.replies import reply_payload
from locker.ports import (
    DoorChanged,
    Feedback,
    HardwareFault,
    HardwareRecovered,
    ItemChanged,
    KeyPressed,
    RetainedState,
    UnlockResult,
    Uplink,
)

if TYPE_CHECKING:
    from locker.cabinet.clock import DomainClock

# The controller's logger: operators filter and tests capture these lines under that name.
logger = logging.getLogger("locker.cabinet.controller")

__all__ = [
    "MAX_DEFERRED",
    "STORAGE_PROBE_ON_INPUT_S",
    "STORAGE_PROBE_S",
    "KeptEvents",
    "StorageOutage",
]

STORAGE_PROBE_S = 5.0  # how often a controller in storage fault tries the database again
# ... and how soon again when a person or a command is waiting for it: a disk given back is
# found by the next input, not up to STORAGE_PROBE_S later (one write attempt per second at
# most, however many inputs arrive).
STORAGE_PROBE_ON_INPUT_S = 1.0
MAX_DEFERRED = 10_000  # sensor reports kept for replay while the database cannot be written


@dataclasses.dataclass(frozen=True, slots=True)
class KeptEvents:
    """Events of the controller's own making (no input caused them: ``ack_invalid``,
    ``epoch_started``) whose commit failed: kept, and committed once the database takes
    writes again. An input's events need no such keeping: the input itself is replayed
    or refused."""

    events: tuple[Out, ...]


# Sensor and device reports, and the controller's own events, that must not be lost while
# storage is down: replayed after.
_REPLAYED = (
    DoorChanged,
    ItemChanged,
    UnlockResult,
    HardwareFault,
    HardwareRecovered,
    machine.Boot,
    ClockSuspect,
    KeptEvents,
)


class StorageOutage:
    """Storage-fault handling for ``Controller``: enter the fault, refuse or keep what cannot
    be committed, probe the database and replay once it takes writes again."""

    if TYPE_CHECKING:
        # Set by Controller.__init__; declared here for the type checker.
        rules: machine.Rules
        store: Store
        state: LockerState
        clock: DomainClock
        clock_synced: Callable[[], bool]
        uplink: Uplink
        storage_fault: str | None
        _mono: Callable[[], float]
        _fault_since: float
        _next_probe: float
        _last_probe: float
        _replay: deque[Any]

        def _apply(self, tr: Transition, now: float, source: object = None) -> None: ...
        def _publish_state(self, force: bool = False) -> None: ...
        def _show(self, feedback: Feedback) -> None: ...
        def _compare_published(self, seen: RetainedState) -> None: ...

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
        if self.storage_fault is not None:
            # Already known (an ack or a write of the meantime failing too): the next probe
            # keeps its time, or a steady trickle of acks would put it off for ever.
            return
        self._last_probe = self._mono()  # the write that failed was a probe
        self._next_probe = self._last_probe + STORAGE_PROBE_S
        self.storage_fault = fault.detail
        self._fault_since = now
        logger.error(
            "state database cannot be written: %s; nothing opens until it can (retrying every "
            "%.0f s, and at the next input)",
            fault,
            STORAGE_PROBE_S,
        )
        ev = Out("storage_fault", data={"detail": fault.detail[:200], "path": str(self.store.path)})
        row = self.store.unstored_event(ev, now, self.clock_synced())
        # The retained state goes out first, not rate-bound: its last_seq and outbox_depth
        # both count the event's seq (so the floor a server derives from them stays below
        # every unacknowledged event), and the link sends the event only once the broker
        # holds that state. A locker killed before the database takes writes again then
        # finds its published last_seq ahead of its store at the next start and begins a
        # new epoch instead of reusing the seq for another event.
        self._publish_state(force=True)
        self.uplink.publish_unstored(row)

    def _probe_storage(self) -> None:
        if self._mono() >= self._next_probe:
            self._try_resume()

    def _try_resume(self, *, on_input: bool = False) -> bool:
        """Probe the database; when it takes writes again, record the outage and replay the
        sensor reports that arrived meanwhile. True when storage works again. ``on_input``:
        an input is waiting for it, so probe if the last probe is ``STORAGE_PROBE_ON_INPUT_S``
        old, not only when the periodic probe is due."""
        t = self._mono()
        due = self._next_probe
        if on_input:
            due = min(due, self._last_probe + STORAGE_PROBE_ON_INPUT_S)
        if t < due:
            return False
        self._last_probe = t
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

    def _step(self, event: machine.Input | RetainedState | KeptEvents, now: float) -> None:
        if isinstance(event, RetainedState):
            self._compare_published(event)  # kept when storage failed during it
            return
        if isinstance(event, KeptEvents):
            self._apply(Transition(self.state, event.events), now, event)
            return
        self._apply(machine.step(self.state, event, self.rules, now), now, event)

    def _answered_from_store(self, event: machine.CommandArrived, now: float) -> bool:
        """A command the machine answers from what is committed already (one it ran before:
        ``duplicate`` with the stored outcome) needs no write, so it gets its true answer
        even while nothing can be written; a ``failed`` would tell the operator that a
        command which did run, did not. True when answered."""
        tr = machine.step(self.state, event, self.rules, now)
        if tr.events or persistent_change(self.state, tr.state):
            return False
        replies = [a for a in tr.actions if isinstance(a, ReplyAction)]
        if not replies or len(replies) != len(tr.actions):
            return False
        for reply in replies:
            self.uplink.publish_reply(reply.reply, reply.correlation_data)
        return True

    def _refuse_unstored(self, event: object, now: float) -> None:
        """What could not be committed: refuse a person at once, answer a command ``failed``,
        keep sensor reports and the controller's own events for replay. Nothing acts without a
        commit."""
        if isinstance(event, PEOPLE):
            if not (isinstance(event, KeyPressed) and event.key != "#"):
                self._show(Feedback.OUT_OF_SERVICE)
                # the entry is over: the next person starts from an empty keypad
                self.state = dataclasses.replace(self.state, keypad=KeypadEntry())
        elif isinstance(event, machine.CommandArrived):
            if self._answered_from_store(event, now):
                return
            cmd_id = event.command.cmd_id if event.command else None
            error = ("storage_fault", f"the locker cannot store anything: {self.storage_fault}")
            reply = reply_payload(cmd_id, "failed", (error[0], error[1][:500]), None, ts=now)
            self.uplink.publish_reply(reply, event.correlation_data)
        elif isinstance(event, _REPLAYED):
            if len(self._replay) >= MAX_DEFERRED:
                logger.error("storage fault: too many sensor reports kept; dropping the oldest")
                self._replay.popleft()
            self._replay.append(event)
