"""The controller's checks of its event stream against the server and the broker: server
acks (DESIGN 5, issue 11 items 7 and 20) and the retained state this locker last published
(issue 11 item 21).

A mixin of ``Controller`` (locker.cabinet.controller), kept apart so the controller module
stays small; it works on the controller's own attributes, declared below for the type checker
only. Every method is called on the controller thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from locker.cabinet.domain.draft import Transition
from locker.cabinet.domain.model import LockerState, Out
from locker.cabinet.sender import check_ack
from locker.cabinet.store import Store
from locker.ports import RetainedState, ServerAck, Uplink

if TYPE_CHECKING:
    from locker.cabinet.clock import DomainClock

# The controller's logger: operators filter and tests capture these lines under that name.
logger = logging.getLogger("locker.cabinet.controller")

__all__ = ["ACK_INVALID_EVERY_S", "StreamCheck"]

ACK_INVALID_EVERY_S = 60.0  # at most one ack_invalid event per this much time (a flood of
# bad acks from a confused server must not flood the outbox); the event counts the rest


class StreamCheck:
    """Ack and published-state checks for ``Controller``: free the outbox for valid acks,
    report invalid ones (rate-bound), start a new epoch when the store went backwards."""

    if TYPE_CHECKING:
        # Set by Controller.__init__; declared here for the type checker.
        store: Store
        state: LockerState
        clock: DomainClock
        uplink: Uplink
        _invalid_acks: int
        _invalid_reported_at: float

        def _apply(self, tr: Transition, now: float, source: object = None) -> None: ...
        def _freed(self, n: int) -> None: ...

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
