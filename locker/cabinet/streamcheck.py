"""The controller's checks of its event stream against the server and the broker: server
acks (DESIGN 5, issue 11 items 7 and 20) and the retained state this locker last published
(issue 11 item 21).

A mixin of ``Controller`` (locker.cabinet.controller), kept apart so the controller module
stays small; it works on the controller's own attributes, declared below for the type checker
only. Every method is called on the controller thread.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from locker.cabinet.domain.draft import Transition
from locker.cabinet.domain.model import LockerState, Out
from locker.cabinet.sender import check_ack
from locker.cabinet.store import StorageFault, Store
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
        _replay: deque[Any]

        def _apply(self, tr: Transition, now: float, source: object = None) -> None: ...
        def _freed(self, n: int) -> None: ...
        def _enter_storage_fault(self, fault: StorageFault, now: float) -> None: ...

    def _server_acks(self, acks: list[ServerAck]) -> None:
        """Delete what valid acks cover; an ack of another epoch or above last_seq deletes
        nothing and is reported (DESIGN 5, issue 11 items 7 and 20).

        An ack of this very epoch above last_seq is also evidence that the store went
        backwards: the server holds seqs of this stream that the store never had (a power
        loss took its last commits while the published state, rate-bound, lagged behind).
        The next events would reuse those seqs, so a new epoch starts at once, as for a
        store found behind its published state (``_compare_published``). ``last_seq``
        counts events published from memory, so a server's ack of one is not evidence."""
        stream = (self.store.epoch, self.store.last_seq())
        upto = 0
        for ack in acks:
            verdict = check_ack(ack.epoch, ack.upto_seq, stream)
            if verdict == "ok":
                upto = max(upto, ack.upto_seq)
                continue
            self._ack_invalid(ack, verdict)
            if verdict == "above_last_seq" and ack.epoch == self.store.epoch:
                if upto:
                    self._freed(self.store.acknowledge(upto))
                self._rolled_back(
                    "rolled_back", {"evidence": "server_ack"}, ack.epoch, ack.upto_seq
                )
                return  # the rest are acks of the abandoned epoch: nothing to delete
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
        crash), or was killed while an event published from memory (storage fault) was not
        stored yet; a store that had been seen in step before but finds another epoch
        published is an older copy (restored backup). These start a new epoch now, so no
        seq the server holds is reused. A new store that finds an older epoch published
        says so. In all three cases no command issued before now runs (the link holds
        commands until this comparison is made).

        "Behind" is judged on what the store held when this process opened it: events
        committed since (``started`` at least, more while the broker was unreachable) take
        the very seqs that were lost, so the current ``last_seq`` would hide the rollback.

        Only then does the link send events and the state (``stream_checked``). If the
        database cannot be written meanwhile, nothing is decided: the comparison is made
        again once it can (kept with the reports replayed after a storage fault)."""
        try:
            self._compare(seen)
        except StorageFault as fault:
            self._enter_storage_fault(fault, self.clock.now())
            self._replay.appendleft(seen)
            return
        self.uplink.stream_checked()

    def _compare(self, seen: RetainedState) -> None:
        store = self.store
        reason = None
        if seen.epoch is None or seen.epoch in store.meta("abandoned_epochs", []):
            # Nothing published yet (or from before epochs), or this store's own state from
            # before it began its current epoch (a crash before the new state went out).
            pass
        elif seen.epoch == store.epoch:
            if seen.last_seq is not None and seen.last_seq > store.opened_last_seq:
                reason = "rolled_back"
        elif store.meta("published_seen"):
            reason = "restored"
        else:
            reason = "store_replaced"
        now = self.clock.now()
        if reason in ("rolled_back", "restored"):
            assert reason is not None
            self._rolled_back(reason, {}, seen.epoch, seen.last_seq)
        elif reason == "store_replaced":
            logger.warning(
                "new event store: the broker holds epoch %s up to seq %s from a previous one",
                seen.epoch,
                seen.last_seq,
            )
            store.set_meta("epoch_began", now)
        if not store.meta("published_seen"):
            store.set_meta("published_seen", True)
        if reason == "store_replaced":
            data = {
                "reason": reason,
                "previous_epoch": seen.epoch,
                "previous_last_seq": seen.last_seq,
            }
            self._apply(Transition(self.state, (Out("epoch_started", data=data),)), now)

    def _rolled_back(
        self,
        reason: str,
        evidence: dict[str, object],
        seen_epoch: str | None,
        seen_last_seq: int | None,
    ) -> None:
        """The store went backwards (or is an older copy): start a new epoch, renumbering
        every unacknowledged event into it, and say so (``epoch_started``); commands issued
        before now are refused from here on (``epoch_began``)."""
        store, now = self.store, self.clock.now()
        data: dict[str, object] = {
            "reason": reason,
            "previous_epoch": seen_epoch,
            "previous_last_seq": seen_last_seq,
            **evidence,
            "abandoned_epoch": store.epoch,
            "abandoned_last_seq": store.last_seq(),
        }
        logger.error(
            "event store went backwards (%s%s): published epoch %s up to seq %s, store has "
            "epoch %s up to seq %d (%d when opened); starting a new epoch",
            reason,
            ", a server ack above last_seq" if evidence else "",
            seen_epoch,
            seen_last_seq,
            store.epoch,
            store.last_seq(),
            store.opened_last_seq,
        )
        store.begin_epoch(now)
        self.uplink.stream_reset()
        self._apply(Transition(self.state, (Out("epoch_started", data=data),)), now)
