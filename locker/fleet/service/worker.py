"""The ingest worker: MQTT in, database, acks out (DESIGN 13).

One ``IngestWorker`` per service process. It holds one MQTT connection (a ``FleetClient``
with the server identity ``[mqtt] client``, persistent session, so a restarted worker gets
what the broker queued for it) subscribed to the SHARED subscriptions
``$share/fleet/{prefix}/+/{status,state,evt/#}``: N workers with distinct identities split
the stream. paho's thread only enqueues; this worker's thread takes batches (up to
``batch_max`` messages, or what has arrived), stores each in one transaction
(:class:`~locker.fleet.service.ingest.Ingest`) and only then publishes the acks that the
database justifies. A locker first seen past seq 1 is sent a ``resync`` (signed with the
fleet's own command key) on a side thread, so a slow locker never stalls ingest; so is a
locker whose stream has had a gap for ``gap_resync_s`` (the gap sweep,
:mod:`locker.fleet.service.gaps`, run between batches every ``gap_resync_s / 4``, at most every
second and at least every 0.2 s), logged as ``LKR-1: gap 34-37 for 2.0 s: resync sent``.

If the database fails, nothing is acked: the lockers resend after their ack time-out. A
batch that fails for any other reason is stored again message by message; a message the store
still cannot take (a bug, a value nobody foresaw) is stored once more as a placeholder of its
event (``Ingest.store(..., suspect=...)``: its seq is held, so its stream is not blocked for
good), and only when that fails too is it dropped alone, logged with its locker and topic and
counted (``fleet_ingest_errors_total{reason="dropped"}``). Events held as placeholders count as
``reason="invalid"``. The thread outlives any fault of its own loop (``reason="worker"``);
``alive`` says whether it runs (``/healthz``).

Every ``sweep_s`` it also runs the time-driven rules: alarms and reminders
(``alarms.sweep``), and pending parcels whose assign expired unanswered become ``withdrawn``
(``parcel_ledger.lapse_pending``), one WARNING line each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from locker.contract.actions import Action
from locker.fleet.client import CommandSigner, FleetClient, FleetError, Incoming
from locker.fleet.service import alarms, gaps, parcel_ledger
from locker.fleet.service.ingest import Ack, Ingest, Message, Outcome
from locker.fleet.service.metrics import METRICS

logger = logging.getLogger(__name__)

SHARE_GROUP = "fleet"
STORE_ATTEMPTS = 3
# The database is away or busy (locked, deadlock, connection lost, pool exhausted): the whole
# batch is retried, then left unacked. Any other fault is the data's: isolated per message.
TRANSIENT = (OperationalError, InterfaceError, PoolTimeout)


def shared_topics(prefix: str, group: str = SHARE_GROUP) -> list[str]:
    return [f"$share/{group}/{prefix}/+/{ch}" for ch in ("status", "state", "evt/#")]


class IngestWorker:
    """Feeds :class:`Ingest` from a connected :class:`FleetClient`; see the module docstring."""

    def __init__(
        self,
        client: FleetClient,
        ingest: Ingest,
        signer: CommandSigner,
        *,
        batch_max: int = 500,
        sweep_s: float = 5.0,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.client, self.ingest, self.signer = client, ingest, signer
        self.batch_max, self.sweep_s = batch_max, sweep_s
        self.on_outcome = on_outcome
        self._queue: queue.Queue[Incoming] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acked: dict[tuple[str, str], int] = {}
        self._side = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fleet-resync")
        self._last_sweep = 0.0
        self.gap_rule = ingest.rules.gap_rule
        self.gap_check_s = min(1.0, max(0.2, self.gap_rule.wait_s / 4))
        self._last_gap_check = 0.0
        self.new_events = 0  # stored by this worker (the others count their own)
        client.add_listener(self._on_message)

    def _on_message(self, msg: Incoming) -> None:
        # {p}/res: replies to other workers' commands (not a shared subscription), not stored
        if not msg.topic.endswith("/res"):
            self._queue.put(msg)

    def start(self) -> None:
        self.client.subscribe(shared_topics(self.client.prefix))
        self._thread = threading.Thread(target=self._run, name="fleet-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._side.shutdown(wait=False, cancel_futures=True)

    def _take(self) -> list[Message]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [Message(m.topic, m.payload, m.retain) for m in batch]

    @property
    def alive(self) -> bool:
        """Whether the ingest thread runs (False before ``start`` and after a crash)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._take()
                if batch:
                    self.process(batch)
                if time.monotonic() - self._last_gap_check > self.gap_check_s:
                    self._last_gap_check = time.monotonic()
                    self._gap_sweep()
                if time.monotonic() - self._last_sweep > self.sweep_s:
                    self._last_sweep = time.monotonic()
                    self._sweep()
            except Exception:
                # process() already isolates a failing message; this is a fault of the loop
                # itself (a listener, a publish): the thread must outlive it, or ingest stops
                # for every locker while HTTP still answers
                METRICS.ingest_errors.labels("worker").inc()
                logger.exception("ingest loop fault; carrying on")
                self._stop.wait(0.5)  # a fault that repeats must not spin a core

    def process(self, batch: list[Message]) -> None:
        """Store ``batch`` and act on it: acks, resyncs, the live listener, the log."""
        started = time.monotonic()
        outcomes = self._store(batch)
        METRICS.ingest_batch_seconds.observe(time.monotonic() - started)
        for out in outcomes:
            self._apply(out)

    def _store(self, batch: list[Message]) -> list[Outcome]:
        """The outcomes of storing ``batch``: one for the batch, or, when it fails for a
        reason of its own (not the database being away), one per message of it stored alone,
        so a single message the store cannot take costs only itself (logged with its locker
        and topic, counted as ``dropped``). Empty when the database is away: nothing is acked
        and the lockers resend."""
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                return [self.ingest.store(batch)]
            except TRANSIENT as err:
                # a deadlock with another worker or a dropped connection: the transaction
                # was rolled back whole, so trying again is safe
                METRICS.ingest_errors.labels("database").inc()
                if attempt == STORE_ATTEMPTS:
                    logger.error("storing %d messages failed (%s); not acked", len(batch), err)
                    return []
                logger.warning("storing a batch failed (%s); attempt %d", err, attempt + 1)
                self._stop.wait(0.05 * attempt)
            except Exception as err:  # any other fault: one message's; isolate it
                if len(batch) == 1:
                    return self._last_resort(batch[0], err)
                logger.warning(
                    "storing %d messages failed (%s); storing them one by one",
                    len(batch),
                    type(err).__name__,
                )
                return [out for msg in batch for out in self._store([msg])]
        return []

    def _last_resort(self, msg: Message, err: Exception) -> list[Outcome]:
        """The store failed on ``msg`` alone: hold its event as a placeholder (if it has a
        place in a stream), or drop it."""
        suspect = f"the store failed on it ({type(err).__name__})"
        try:
            return [self.ingest.store([msg], suspect=suspect)]
        except Exception:  # the database itself, or a fault even a placeholder meets
            self._dropped(msg, err)
            return []

    def _dropped(self, msg: Message, err: Exception) -> None:
        METRICS.ingest_errors.labels("dropped").inc()
        head = self.ingest.prefix + "/"
        rest = msg.topic[len(head) :] if msg.topic.startswith(head) else ""
        locker = rest.split("/", 1)[0] or "?"
        logger.error(
            "%s: message on %r dropped, the store failed on it (%s: %s)",
            locker,
            msg.topic[:200],
            type(err).__name__,
            str(err)[:200],
            exc_info=err,
        )

    def _apply(self, out: Outcome) -> None:
        self.new_events += out.new_events
        METRICS.events_ingested.inc(out.new_events)
        METRICS.duplicates.inc(out.duplicates)
        METRICS.ingest_errors.labels("rejected").inc(out.rejected)
        METRICS.ingest_errors.labels("invalid").inc(out.invalid)
        for line in out.rejections:
            logger.warning("%s", line)
        for line in out.lines:
            logger.info("%s", line)
        for ack in out.acks:
            self._ack(ack, force=out.duplicates > 0)
        for locker in out.resync:
            self._side.submit(self._resync, locker)
        if self.on_outcome is not None:
            try:
                self.on_outcome(out)
            except Exception:
                logger.exception("live listener failed")

    def _ack(self, ack: Ack, *, force: bool) -> None:
        key = (ack.locker, ack.epoch)
        if not force and self._acked.get(key, 0) >= ack.upto_seq:
            return
        try:
            self.client.publish(self.client.topic(ack.locker, "ack"), ack.payload(), timeout=5.0)
        except FleetError as err:
            logger.warning("ack to %s failed (%s); the locker will resend", ack.locker, err)
            return
        self._acked[key] = max(self._acked.get(key, 0), ack.upto_seq)

    def _resync(self, locker: str) -> None:
        try:
            reply = self.client.send_command(locker, Action.RESYNC, {}, signer=self.signer)
            logger.info("%s: resync asked for the backlog: %s", locker, reply.describe())
        except FleetError as err:
            logger.warning("%s: resync not answered: %s", locker, err)

    def _gap_sweep(self) -> None:
        try:
            swept = gaps.sweep(self.ingest.engine, self.gap_rule, self.ingest.clock())
        except SQLAlchemyError:
            logger.exception("gap sweep failed")
            return
        for gone in swept.given_up:
            logger.warning("%s", gone.line())
        for gap in swept.resyncs:
            METRICS.gap_resyncs.inc()
            logger.warning("%s", gap.line())
            self._side.submit(self._resync, gap.locker)

    def _sweep(self) -> None:
        try:
            with self.ingest.engine.begin() as conn:
                alarms.sweep(conn, self.ingest.rules, time.time())
                lapsed = parcel_ledger.lapse_pending(conn, time.time())
        except SQLAlchemyError:
            logger.exception("alarm sweep failed")
            return
        for parcel, locker in lapsed:
            logger.warning(
                "%s: parcel %s withdrawn: its assign expired unanswered (it can never run); "
                "its id is free again",
                locker,
                parcel,
            )

    def backlog(self) -> int:
        return self._queue.qsize()
