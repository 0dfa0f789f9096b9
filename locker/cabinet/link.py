"""The MQTT link (DESIGN section 5): the only module that imports paho-mqtt.

One thread, ``mqtt-link``, owns the paho client outright: it connects, runs the network I/O
through paho's external-loop calls (``loop_read``/``loop_write``/``loop_misc`` on its own
``select``), publishes, and reconnects. Nothing else ever calls paho, so paho's thread-safety
gaps (paho issues #354, #358) cannot bite and no lock is ever held around a paho call. paho's
callbacks run inside ``loop_read`` on that same thread and only append to a deque; the thread
handles the deque right after.

Reliability model:
- Every connection uses a fresh paho client (``clean_start=False`` and the session expiry on
  every connect, so the broker keeps the subscription and queued commands). paho's in-memory
  queue is therefore never relied on: on every connect the link itself republishes the birth,
  the latest state, unacknowledged replies and every event from the durable outbox above the
  last confirmation. SQLite is the single source of truth for events.
- Events go out in ``seq`` order, at most ``max_inflight`` without PUBACK. A PUBACK with a
  failure reason raises ``PublishRefused`` and the row stays (not retried until ``resync``).
  With ``require_server_ack`` rows stay until ``{p}/ack`` covers them: they are re-sent after
  every reconnect and when no ack progress came for ``ack_timeout_s``; at most ``ack_window``
  rows are sent beyond the last ack, so a slow server cannot make the broker drop messages
  past its ``max_queued_messages``. Without it, a successful PUBACK is delivery.
- Reconnect back-off grows from ``reconnect_min_s`` to ``reconnect_max_s`` with random jitter.
- Watchdog: any unexpected exception in the thread drops the client and builds a new one after
  a back-off; ``healthy()`` tells whether the thread is alive and looping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from locker.contract.replies import rfc3339
from locker.ports import (
    CommandMessage,
    EventsDelivered,
    LinkChanged,
    LinkEvent,
    LinkSink,
    OutboxReader,
    OutboxRow,
    PublishRefused,
    ServerAck,
    Uplink,
    guarded,
)

logger = logging.getLogger(__name__)

MAX_PENDING_REPLIES = 256
_MAX_ACK_BYTES = 256
_IDLE_WAIT_S = 1.0  # longest select(): keepalive and timers are checked at least this often
_READ_BATCH = 200


@dataclass
class LinkCounters:
    """Totals since start, for logs and benchmarks (read from any thread; ints only)."""

    published: int = 0  # event PUBLISHes handed to the socket, re-sends included
    resent: int = 0  # of which re-sends of a seq already published once
    acked: int = 0  # events confirmed: by {p}/ack, or by PUBACK without require_server_ack
    pubacked: int = 0  # event PUBACKs with a success reason code
    refused: int = 0  # event PUBACKs with a failure reason code
    server_acks: int = 0  # valid {p}/ack messages
    connects: int = 0  # successful CONNACKs
    rebuilds: int = 0  # clients dropped by the watchdog after an internal error
    acked_upto: int = 0  # highest upto_seq seen on {p}/ack


@dataclass
class _Requests:
    """What other threads asked for since the link thread last looked (guarded by a lock)."""

    close: bool | None = None  # None: keep running; True/False: close(clean)
    outbox: bool = False
    resync: bool = False
    state: bytes | None = None
    replies: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    done: list[tuple[int, int]] = field(default_factory=list)  # (client generation, mid)


@dataclass
class _Reply:
    payload: bytes
    correlation_data: bytes | None
    mid: int | None = None  # None: not published on the current connection


class MqttLink(Uplink):
    """The locker's MQTT 5 connection to the fleet broker."""

    def __init__(  # noqa: PLR0915 - one assignment per setting and counter
        self,
        *,
        locker_id: str,
        host: str,
        port: int,
        outbox: OutboxReader,
        boot_id: str,
        version: str,
        clock_synced: Callable[[], bool],
        # The settings of the configuration file have no defaults here: they come from the
        # config model (locker.config.sections.Mqtt) through the assembly, one source.
        tls: bool,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        topic_prefix: str,
        keepalive_s: int,
        session_expiry_s: int,
        will_delay_s: int,
        require_server_ack: bool,
        ack_timeout_s: float,
        ack_window: int = 500,
        max_inflight: int,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.locker_id = locker_id
        self.prefix = f"{topic_prefix}/{locker_id}"
        self._host, self._port = host, port
        self._outbox = outbox
        self._boot_id, self._version, self._clock_synced = boot_id, version, clock_synced
        self._keepalive = keepalive_s
        # Short keepalives (tests) need finer ticks for ping time-outs to be timely.
        self._tick = min(_IDLE_WAIT_S, keepalive_s / 4)
        self._session_expiry = session_expiry_s
        self._will_delay = min(will_delay_s, session_expiry_s)  # MQTT 5 3.1.3.2.2
        self._require_ack = require_server_ack
        self._ack_timeout = ack_timeout_s
        self._ack_window = ack_window
        self._max_inflight = max_inflight
        self._backoff = (reconnect_min_s, reconnect_max_s)
        self._connect_timeout = connect_timeout_s
        self._close_timeout = close_timeout_s
        self._clock = clock
        self._tls = _tls_context(ca_file, cert_file, key_file) if tls else None
        self.counters = LinkCounters()

        # Shared with other threads: only under _lock, and never while calling paho.
        self._lock = threading.Lock()
        self._req = _Requests()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

        # Everything below belongs to the link thread.
        self._sink: LinkSink | None = None
        self._thread: threading.Thread | None = None
        self._heartbeat = time.monotonic()
        self._closing = False
        self._client: mqtt.Client | None = None
        self._generation = 0  # which client a command's receipt belongs to
        self._callbacks: deque[tuple[Any, ...]] = deque()
        self._connected = False
        self._connack_deadline = 0.0
        self._attempts = 0
        self._next_attempt = 0.0
        self._state_payload: bytes | None = None
        self._state_dirty = False
        self._state_mid: int | None = None
        self._status_mid: int | None = None
        self._replies: deque[_Reply] = deque()
        # Events: cursor = last seq handed to paho in this pass; buffer = rows read after it.
        self._cursor = 0
        self._buffer: deque[OutboxRow] = deque()
        self._read_upto = 0
        self._want_read = True
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._refused: set[int] = set()
        self._floor = 0  # every seq <= floor is confirmed; a go-back restarts after it
        self._max_sent = 0
        self._first_sends: deque[int] = deque()  # seqs published once, not yet confirmed
        self._outstanding_since: float | None = None
        self._delivered: list[int] = []

    # --- Uplink: called from the controller thread, return at once -------------------------

    def start(self, sink: LinkSink) -> None:
        if self._thread is not None:
            raise RuntimeError("link already started")
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def outbox_changed(self) -> None:
        self._request(outbox=True)

    def publish_state(self, snapshot: Mapping[str, object]) -> None:
        self._request(state=_json(snapshot))

    def publish_reply(self, reply: Mapping[str, object], correlation_data: bytes | None) -> None:
        self._request(reply=(_json(reply), correlation_data))

    def resync(self) -> None:
        self._request(resync=True)

    def command_done(self, receipt: object) -> None:
        if isinstance(receipt, tuple):
            self._request(done=receipt)

    def close(self, clean: bool = True) -> None:
        thread = self._thread
        self._request(close=clean)
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._close_timeout + self._connect_timeout + 2 * _IDLE_WAIT_S)
        if thread is None or not thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def healthy(self) -> bool:
        """The link thread is alive and went round its loop recently (for the sd watchdog)."""
        budget = self._connect_timeout + 2 * _IDLE_WAIT_S + 5.0
        alive = self._thread is not None and self._thread.is_alive()
        return alive and time.monotonic() - self._heartbeat < budget

    @property
    def connected(self) -> bool:
        return self._connected

    def _request(
        self,
        *,
        close: bool | None = None,
        outbox: bool = False,
        resync: bool = False,
        state: bytes | None = None,
        reply: tuple[bytes, bytes | None] | None = None,
        done: tuple[int, int] | None = None,
    ) -> None:
        with self._lock:
            req = self._req
            if done is not None:
                req.done.append(done)
            if close is not None and req.close is None:
                req.close = close
            req.outbox |= outbox
            req.resync |= resync
            if state is not None:
                req.state = state  # coalesced: only the latest snapshot matters
            if reply is not None:
                req.replies.append(reply)
        # OSError: the buffer is full (a wake-up is pending anyway) or close() already ran.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # --- the link thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._heartbeat = time.monotonic()
            try:
                if self._step():
                    return
            except Exception:
                # The watchdog: whatever broke (paho, the outbox, a bug), start over with a
                # new client after a back-off; everything unconfirmed is re-sent on connect.
                logger.exception("MQTT link failed; rebuilding the client")
                self.counters.rebuilds += 1
                if self._closing:
                    return  # a failed shutdown still ends the thread
                self._drop("internal error")

    def _step(self) -> bool:
        """One turn of the loop; True once closed."""
        req = self._take_requests()
        self._apply(req)
        if req.close is not None:
            self._closing = True
            self._shutdown(clean=req.close)
            return True
        if self._client is None:
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                self._wait_wake(min(wait, self._tick))
            else:
                self._connect()
            return False
        alive = self._pump(self._client, 0.0 if self._has_work() else self._idle_wait())
        self._handle_callbacks()
        if not alive:
            self._drop("connection lost")
        elif not self._connected and time.monotonic() > self._connack_deadline:
            self._drop("no CONNACK in time")
        elif self._connected:
            self._flush()
        return False

    def _take_requests(self) -> _Requests:
        with self._lock:
            req, self._req = self._req, _Requests()
        return req

    def _apply(self, req: _Requests) -> None:
        for generation, mid in req.done:
            # A command committed under an older connection is redelivered by the broker
            # anyway (persistent session) and answered "duplicate": nothing to ack here.
            if generation == self._generation and self._client is not None:
                self._client.ack(mid, 1)
        if req.state is not None:
            self._state_payload, self._state_dirty = req.state, True
        for payload, corr in req.replies:
            if len(self._replies) >= MAX_PENDING_REPLIES:
                # The server re-sends an unanswered command and gets "duplicate" + result.
                logger.warning("reply queue full; dropping the oldest unsent reply")
                self._replies.popleft()
            self._replies.append(_Reply(payload, corr))
        if req.outbox:
            self._want_read = True
        if req.resync:
            self._refused.clear()
            if not self._require_ack:
                self._floor = 0  # the outbox holds only undelivered rows: send them all
            self._go_back()
            if self._connected:
                self._publish_birth()
                self._state_dirty = self._state_payload is not None

    # --- connection -------------------------------------------------------------------------

    def _connect(self) -> None:
        client = self._new_client()
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        self._callbacks.clear()
        try:
            # clean_start=False on EVERY connect: paho's default (FIRST_ONLY) would wipe the
            # session, and the commands queued in it, at each daemon start.
            client.connect(
                self._host, self._port, self._keepalive, clean_start=False, properties=props
            )
        except (OSError, ValueError) as err:  # refused, unreachable, TLS handshake or name
            logger.warning("MQTT connect to %s:%s failed: %s", self._host, self._port, err)
            self._schedule_retry()
            return
        self._client = client
        self._connack_deadline = time.monotonic() + self._connect_timeout
        sock = client.socket()
        if isinstance(sock, socket.socket):  # SSLSocket included
            # Small QoS 1 packets both ways: Nagle plus delayed ACKs would stall the event
            # stream for 40 ms at a time whenever it waits on acks.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _new_client(self) -> mqtt.Client:
        # manual_ack: a command is PUBACKed only once the controller has committed it, so a
        # crash before that leaves it with the broker, which delivers it again.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.locker_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self._generation += 1
        client.username_pw_set(self.locker_id)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        will = _properties(PacketTypes.WILLMESSAGE)
        will.WillDelayInterval = self._will_delay
        client.will_set(
            self._topic("status"),
            self._status(online=False, stamped=False),
            qos=1,
            retain=True,
            properties=will,
        )
        client.max_inflight_messages_set(self._max_inflight)
        client.connect_timeout = self._connect_timeout
        client.suppress_exceptions = True  # backstop: our callbacks are guarded anyway
        client.enable_logger(logging.getLogger("paho"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _schedule_retry(self) -> None:
        self._attempts += 1
        self._next_attempt = time.monotonic() + backoff_delay(self._attempts, *self._backoff)

    def _drop(self, detail: str) -> None:
        """Forget the current client (closing its socket without DISCONNECT) and retry later."""
        client, self._client = self._client, None
        if client is not None:
            _close_socket(client)
        self._callbacks.clear()
        was_connected, self._connected = self._connected, False
        self._lost_inflight()
        self._schedule_retry()
        if was_connected:
            logger.warning("MQTT link down: %s", detail)
            self._emit(LinkChanged(False, detail))

    def _lost_inflight(self) -> None:
        if not self._require_ack:
            # Without server acks, PUBACK is delivery: what was still in flight goes again.
            pending = sorted(self._inflight.values())
            self._floor = max(self._floor, (pending[0] - 1) if pending else self._cursor)
        self._inflight.clear()
        self._state_mid = self._status_mid = None
        self._state_dirty = self._state_payload is not None
        for reply in self._replies:
            reply.mid = None
        self._go_back()

    def _on_connected(self, session_present: bool) -> None:
        assert self._client is not None
        self._connected = True
        self._attempts = 0
        self.counters.connects += 1
        logger.info("MQTT link up (session %s)", "resumed" if session_present else "new")
        self._emit(LinkChanged(True, "session resumed" if session_present else "new session"))
        # Subscribe on every connect: a broker that lost the session has lost these too.
        # retainAsPublished: without it the broker clears the flag on live deliveries, and a
        # command published with retain while we are connected would look like a normal one.
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        self._client.subscribe([(self._topic("cmd"), opts), (self._topic("ack"), opts)])
        self._publish_birth()
        self._go_back()

    def _shutdown(self, *, clean: bool) -> None:
        client = self._client
        if client is not None and clean and self._connected:
            self._flush_state_and_replies()
            # Our own offline message, then DISCONNECT with reason 0, which discards the will.
            self._status_mid = self._publish("status", self._status(online=False), retain=True)
            deadline = time.monotonic() + self._close_timeout
            while self._awaiting_close_acks() and time.monotonic() < deadline:
                if not self._pump(client, 0.05):
                    break
                self._handle_callbacks()
            client.disconnect()
            while client.socket() is not None and time.monotonic() < deadline:
                if not self._pump(client, 0.05):
                    break
        if client is not None:
            _close_socket(client)
        self._client = None
        if self._connected:
            self._connected = False
            self._emit(LinkChanged(False, "closed"))

    def _awaiting_close_acks(self) -> bool:
        return self._status_mid is not None or any(r.mid is not None for r in self._replies)

    # --- network I/O (paho's external-loop interface) ---------------------------------------

    def _pump(self, client: mqtt.Client, timeout: float) -> bool:
        """One select() over the MQTT socket and the wake-up socket; False if the link died."""
        sock = client.socket()
        if sock is None:
            return False
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        want_write = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select(
                [sock, self._wake_r], want_write, [], 0.0 if pending else timeout
            )
        except (OSError, ValueError):
            return False
        if self._wake_r in readable:
            self._drain_wake()
        if (sock in readable or pending) and client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if (
            writable
            and client.socket() is not None
            and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS
        ):
            return False
        return client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _wait_wake(self, timeout: float) -> None:
        readable, _, _ = select.select([self._wake_r], [], [], timeout)
        if readable:
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def _has_work(self) -> bool:
        if not self._connected:
            return False
        state = self._state_dirty and self._state_mid is None
        replies = any(r.mid is None for r in self._replies)
        return state or replies or (bool(self._want_read or self._buffer) and self._room() > 0)

    def _idle_wait(self) -> float:
        if self._outstanding_since is None or not self._require_ack:
            return self._tick
        due = self._outstanding_since + self._ack_timeout - time.monotonic()
        return max(0.0, min(self._tick, due))

    # --- publishing -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_state_and_replies()
        self._check_ack_timeout()
        self._send_events()

    def _flush_state_and_replies(self) -> None:
        if self._state_dirty and self._state_mid is None and self._state_payload is not None:
            # One state in flight at a time; newer snapshots replace the waiting one.
            self._state_mid = self._publish("state", self._state_payload, retain=True)
            self._state_dirty = False
        for reply in self._replies:
            if reply.mid is None:
                reply.mid = self._publish("res", reply.payload, correlation=reply.correlation_data)

    def _publish(
        self, leaf: str, payload: bytes, *, retain: bool = False, correlation: bytes | None = None
    ) -> int:
        assert self._client is not None
        props = None
        if correlation is not None:
            props = _properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        info = self._client.publish(
            self._topic(leaf), payload, qos=1, retain=retain, properties=props
        )
        # rc NO_CONN means the socket just died: the loop notices on its next turn and every
        # unconfirmed message is republished on the next connection.
        return info.mid

    def _publish_birth(self) -> None:
        self._publish("status", self._status(online=True), retain=True)

    def _status(self, *, online: bool, stamped: bool = True) -> bytes:
        """Birth, or offline; the will is built once before connecting, so it has no ts."""
        doc: dict[str, object] = {"v": 1, "online": online, "boot_id": self._boot_id}
        if stamped:
            doc["ts"] = rfc3339(self._clock())
        if online:
            doc |= {"version": self._version, "clock_synced": bool(self._clock_synced())}
        return _json(doc)

    def _room(self) -> int:
        room = self._max_inflight - len(self._inflight)
        if self._require_ack:
            room = min(room, self._floor + self._ack_window - self._cursor)
        return room

    def _send_events(self) -> None:
        while self._room() > 0:
            row = self._next_row()
            if row is None:
                return
            self._cursor = row.seq
            if row.seq <= self._floor or row.seq in self._refused:
                continue
            if row.seq in self._inflight.values():
                continue  # still waiting for its PUBACK from before a go-back
            self._publish_event(row)

    def _next_row(self) -> OutboxRow | None:
        if not self._buffer:
            if not self._want_read:
                return None
            self._want_read = False  # cleared before reading: a later notice is not lost
            limit = max(_READ_BATCH, self._max_inflight)
            rows = self._outbox.read(self._read_upto, limit)
            if rows:
                self._buffer.extend(rows)
                self._read_upto = rows[-1].seq
                self._want_read = len(rows) == limit
        return self._buffer.popleft() if self._buffer else None

    def _publish_event(self, row: OutboxRow) -> None:
        if not _topic_level(row.type):
            self._refuse(row.seq, f"event type {row.type[:40]!r} is not a topic level")
            return
        assert self._client is not None
        info = self._client.publish(self._topic(f"evt/{row.type}"), row.payload, qos=1)
        self._inflight[info.mid] = row.seq
        self.counters.published += 1
        if row.seq > self._max_sent:
            self._max_sent = row.seq
            self._first_sends.append(row.seq)
        else:
            self.counters.resent += 1
        if self._outstanding_since is None:
            self._outstanding_since = time.monotonic()

    def _go_back(self) -> None:
        """Restart the event pass just after the last confirmed seq."""
        self._cursor = self._read_upto = self._floor
        self._buffer.clear()
        self._want_read = True
        self._outstanding_since = None

    def _check_ack_timeout(self) -> None:
        if not self._require_ack or self._outstanding_since is None:
            return
        if self._cursor <= self._floor:
            self._outstanding_since = None
        elif time.monotonic() - self._outstanding_since >= self._ack_timeout:
            logger.info(
                "no server ack for %.0f s: re-sending after seq %d", self._ack_timeout, self._floor
            )
            self._go_back()

    def _refuse(self, seq: int, reason: str) -> None:
        logger.error("event seq %d refused: %s", seq, reason)
        self._refused.add(seq)
        self.counters.refused += 1
        self._emit(PublishRefused(seq, reason))

    # --- callbacks: run inside loop_read on the link thread, only enqueue -------------------

    @guarded(logger)
    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._callbacks.append(("connack", reason.is_failure, str(reason), flags.session_present))

    @guarded(logger)
    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._callbacks.append(("disconnect", str(reason)))

    @guarded(logger)
    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._callbacks.append(("puback", mid, reason.is_failure, str(reason)))

    @guarded(logger)
    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode], p: Any
    ) -> None:
        self._callbacks.append(("suback", [str(r) for r in reasons if r.is_failure]))

    @guarded(logger)
    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._callbacks.append(
            (
                "message",
                msg.topic,
                bytes(msg.payload),
                bool(msg.retain),
                getattr(msg, "properties", None),
                (self._generation, msg.mid, msg.qos),
            )
        )

    def _handle_callbacks(self) -> None:
        while self._callbacks:
            kind, *data = self._callbacks.popleft()
            if kind == "connack":
                failed, reason, session_present = data
                if failed:
                    logger.warning("MQTT connection refused by the broker: %s", reason)
                elif self._client is not None:
                    self._on_connected(session_present)
            elif kind == "puback":
                self._handle_puback(*data)
            elif kind == "message":
                self._handle_message(*data)
            elif kind == "suback" and data[0]:
                logger.error("subscription refused: %s", ", ".join(data[0]))
            elif kind == "disconnect":
                logger.info("MQTT disconnect: %s", data[0])
        if self._delivered:
            seqs, self._delivered = tuple(self._delivered), []
            self._emit(EventsDelivered(seqs))

    def _handle_puback(self, mid: int, failed: bool, reason: str) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            if failed:
                self._refuse(seq, reason)
                return
            self.counters.pubacked += 1
            if not self._require_ack:
                self._delivered.append(seq)
                self.counters.acked += 1
                pending = min(self._inflight.values(), default=self._cursor + 1)
                self._floor = max(self._floor, pending - 1)
                self._confirm_upto(self._floor)
            return
        if mid == self._state_mid:
            self._state_mid = None
        elif mid == self._status_mid:
            self._status_mid = None
        else:
            for reply in self._replies:
                if reply.mid == mid:
                    self._replies.remove(reply)
                    break
        if failed:
            logger.error("publish refused by the broker: %s", reason)

    def _handle_message(
        self,
        topic: str,
        payload: bytes,
        retained: bool,
        props: Properties | None,
        delivery: tuple[int, int, int],
    ) -> None:
        generation, mid, qos = delivery
        if topic == self._topic("cmd"):
            # Verified on the controller thread, over these exact bytes; PUBACKed when the
            # controller says it is committed (command_done).
            self._emit(
                CommandMessage(
                    payload=payload,
                    retained=retained,
                    response_topic=getattr(props, "ResponseTopic", None),
                    correlation_data=getattr(props, "CorrelationData", None),
                    receipt=(generation, mid) if qos else None,
                )
            )
            return
        if qos and self._client is not None and generation == self._generation:
            self._client.ack(mid, qos)  # an ack or a stray message: nothing to keep
        if topic == self._topic("ack"):
            upto = parse_ack(payload)
            if upto is None:
                # Dropping a bad ack is safe: an ack only allows deleting rows, so ignoring
                # one keeps them (and re-sends them) until a valid ack covers them. It is not
                # a command, so there is no one to reply to.
                logger.warning("ignored a malformed ack (%d bytes)", len(payload))
                return
            self._server_ack(upto)
        else:
            logger.warning("message on unexpected topic %r ignored", topic[:120])

    def _server_ack(self, upto: int) -> None:
        self.counters.server_acks += 1
        self._emit(ServerAck(upto))
        self.counters.acked_upto = max(self.counters.acked_upto, upto)
        if upto > self._floor:
            self._floor = upto
            self._confirm_upto(upto)
            self._outstanding_since = time.monotonic() if self._cursor > upto else None
            self._want_read = True  # the window moved
            if self._cursor < upto:  # acked beyond what this pass sent: skip ahead
                self._cursor = self._read_upto = upto
                self._buffer.clear()

    def _confirm_upto(self, upto: int) -> None:
        while self._first_sends and self._first_sends[0] <= upto:
            self._first_sends.popleft()
            if self._require_ack:
                self.counters.acked += 1

    def _emit(self, event: LinkEvent) -> None:
        if self._sink is not None:
            self._sink(event)

    def _topic(self, leaf: str) -> str:
        return f"{self.prefix}/{leaf}"


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Seconds before reconnect attempt ``attempt`` (1, 2, ...): random in [low, ceiling],
    the ceiling doubling from 2*low up to ``high``. The jitter spreads a fleet's reconnects
    after a broker restart; paho's own back-off has none."""
    ceiling = min(high, low * 2 ** min(attempt, 32))
    return random.uniform(low, max(low, ceiling))


def parse_ack(payload: bytes) -> int | None:
    """``upto_seq`` of a valid ``{"v":1,"upto_seq":N}`` (N >= 0, nothing else), else None."""
    if len(payload) > _MAX_ACK_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or set(doc) != {"v", "upto_seq"}:
        return None
    v, upto = doc["v"], doc["upto_seq"]
    if type(v) is not int or v != 1 or type(upto) is not int or upto < 0:
        return None
    return upto


def _tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """Mutual TLS: the broker is verified against our CA *and* its host name (never disabled)."""
    if not (ca_file and cert_file and key_file):
        raise ValueError("TLS needs ca_file, cert_file and key_file")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


def _close_socket(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _topic_level(name: str) -> bool:
    return 0 < len(name) <= 64 and not any(c in name for c in "/+#\0")


def _json(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]
