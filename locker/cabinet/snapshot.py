"""The controller's retained state snapshot (DESIGN section 5) and its coalesced publishing
(issue 10).

A mixin of ``Controller`` (locker.cabinet.controller), kept apart so the controller module
stays small; it works on the controller's own attributes, declared below for the type checker
only. Every method is called on the controller thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from locker.cabinet.domain.model import LockerState
from locker.cabinet.store import Store
from locker.contract.replies import rfc3339
from locker.ports import Uplink

if TYPE_CHECKING:
    from locker.cabinet.clock import DomainClock

__all__ = ["STATE_COUNTERS_EVERY_S", "StatePublisher"]

STATE_COUNTERS_EVERY_S = 1.0  # a state whose only change is the outbox counters waits this long


class StatePublisher:
    """The retained snapshot of ``Controller``: build it, and publish it coalesced."""

    if TYPE_CHECKING:
        # Set by Controller.__init__; declared here for the type checker.
        store: Store
        state: LockerState
        clock: DomainClock
        uplink: Uplink
        rev: int
        _snapshot_key: Any
        _shape: tuple[object, ...] | None
        _counters_due: float | None
        _state_sent_at: float

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
