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
- Which event goes out next, and what PUBACKs and server acks mean, is decided by the pure
  ``sender.OutboxSender`` (go-back-N window, ack time-out, ack checks); the link only reads
  the outbox rows it asks for and publishes them.
- A PUBACK with a failure reason code (the broker's ACL refuses the topic: a ``locker.id``
  that is not the certificate's CN, a wrong ``mqtt.topic_prefix``) is not delivery (DESIGN
  5): the row stays. It is one outage (``refusals.Refusals``), not one fault per refusal:
  the first refusal logs one ERROR line and emits ``PublishRefused``; later ones are
  counted (DEBUG). While it
  lasts the sender publishes no events (``OutboxSender.refusing``); on a back-off timer
  (``reconnect_min_s`` to ``reconnect_max_s``) the link probes with what was refused (the
  lowest unconfirmed event, the state, the birth), and once every kind refused has been
  accepted again it emits ``PublishAccepted`` and the refused events go again. (Before,
  every refusal was a ``hardware_fault`` event, itself refused: 500 events a second.)
- At the first connect of the process, the link reads its own retained ``{p}/state`` and
  hands it to the controller (``RetainedState``) before any command, so a store that went
  backwards is noticed before it could run a command twice (issue 11 item 21). It
  subscribes to that topic and, once SUBACKed, unsubscribes at once: the broker queues a
  subscription's retained message when it handles the SUBSCRIBE, so it comes before the
  UNSUBACK; an UNSUBACK with no retained copy before it is the broker saying none is
  retained. Commands wait for that answer; events and our own state wait until the
  controller has compared and says so (``stream_checked``): publishing the state would
  replace the very copy being read, and an event sent before a rolled-back store begins
  its new epoch would reuse a seq the server holds. No answer within ``STATE_CHECK_S``
  means a dead connection: it is dropped and the next one asks again, while commands stay
  queued with the broker (not PUBACKed); a command released unchecked could run a second
  time on a rolled-back store, a held one only waits. Only a refused subscription (no read
  access: the comparison can never be made) releases them uncompared, with an error logged.
- An event published from memory (``publish_unstored``, a storage fault) goes out only
  once the broker has PUBACKed the latest state given before it, which counts its seq: a
  server can never hold that event while the broker's retained state says less.
- Reconnect back-off grows from ``reconnect_min_s`` to ``reconnect_max_s`` with random jitter
  while the broker answers and refuses (TLS, auth, no CONNACK) or drops us; while no broker
  answers at all, attempts are ``reconnect_unreachable_max_s`` apart at most, however long
  the outage, and such attempts do not grow the back-off (``_schedule_retry``). paho's own
  reconnect delay (``reconnect_delay_set``) is never involved: it only applies inside
  ``loop_forever``, and every connection here is a fresh client connected by this thread.
- Watchdog: any unexpected exception in the thread drops the client and builds a new one after
  a back-off; ``healthy()`` tells whether the thread is alive and looping.

Size: about 1000 lines, twice the project's ~500, because it is one thread's loop around one
paho client (connection, socket pump, publishing, callbacks) whose state is shared by all of
it; the parts that are not (``sender``, ``linkwire``, ``refusals``) are already out.
"""

from __future__ import annotations

import contextlib
import logging
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

from locker.cabinet.linkwire import (
    backoff_delay,
    parse_ack,
    parse_state_stream,
    tls_context,
    to_json,
    topic_level,
    unreachable,
    unreachable_delay,
)
from locker.cabinet.refusals import Refusals
from locker.cabinet.sender import LinkCounters, OutboxSender
from locker.contract.replies import rfc3339
from locker.ports import (
    CommandMessage,
    EventsDelivered,
    LinkChanged,
    LinkEvent,
    LinkSink,
    OutboxReader,
    OutboxRow,
    PublishAccepted,
    PublishRefused,
    RetainedState,
    ServerAck,
    Uplink,
    guarded,
)

logger = logging.getLogger(__name__)

MAX_PENDING_REPLIES = 256
STATE_CHECK_S = 5.0  # longest wait for the answer about our own retained state
_IDLE_WAIT_S = 1.0  # longest select(): keepalive and timers are checked at least this often


@dataclass
class _Requests:
    """What other threads asked for since the link thread last looked (guarded by a lock)."""

    close: bool | None = None  # None: keep running; True/False: close(clean)
    outbox: bool = False
    resync: bool = False
    stream_reset: bool = False
    stream_checked: bool = False
    state: bytes | None = None
    replies: list[_Reply] = field(default_factory=list)
    done: list[tuple[int, int]] = field(default_factory=list)  # (client generation, mid)


@dataclass
class _Reply:
    payload: bytes
    correlation_data: bytes | None
    mid: int | None = None  # None: not published on the current connection
    leaf: str = "res"  # or evt/{type} for an event published from memory (publish_unstored)
    after_state: bool = False  # not before the latest state given to the link is PUBACKed


class _GatheringClient(mqtt.Client):
    """paho's client whose socket writes are gathered while the link publishes a window.

    paho hands every packet to its own ``send()`` (``Client._sock_send``, called from
    ``_packet_write`` as each PUBLISH is queued). Each of those gives up the GIL and comes
    back for it, which under a busy controller thread cost the link most of its time (issue
    10). While ``corked``, the bytes are appended to one buffer instead, in order, and
    ``flush_writes`` sends them with as few ``send()`` calls as the socket takes; bytes
    queued while the buffer is not empty are appended too, so the wire order is paho's.
    paho counts such a packet as written: QoS 1 delivery is unchanged, it still waits for its
    PUBACK, and whatever a dropped connection loses is re-sent on the next one.

    ``_sock_send`` is a private method of paho 2.x (pinned below 3 in pyproject.toml);
    tests/test_link.py checks that a window goes out in few sends."""

    CHUNK = 1 << 16  # bytes handed to one send(): at most four TLS records

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.corked = False
        self.sends = 0  # send() calls made for gathered bytes (tests, benchmarks)
        self._gathered = bytearray()

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self.corked or self._gathered:
            self._gathered += buf
            return len(buf)
        self.sends += 1
        return super()._sock_send(buf)

    def want_write(self) -> bool:
        return bool(self._gathered) or super().want_write()

    def flush_writes(self) -> bool:
        """Send what was gathered, until the socket would block; False if the socket died.
        (A TLS write that wants to be retried is retried with the same leading bytes, which
        OpenSSL allows: Python sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER.)"""
        while self._gathered:
            try:
                self.sends += 1
                n = super()._sock_send(bytes(self._gathered[: self.CHUNK]))
            except BlockingIOError:
                return True  # select() says when it is writable again (want_write)
            except (OSError, ValueError):
                return False
            del self._gathered[:n]
        return True


class MqttLink(Uplink):
    """The locker's MQTT 5 connection to the fleet broker."""

    def __init__(
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
        reconnect_min_s: float,
        reconnect_max_s: float,
        reconnect_unreachable_max_s: float,
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
        self._ack_timeout = ack_timeout_s
        self._max_inflight = max_inflight
        self._backoff = (reconnect_min_s, reconnect_max_s)
        self._unreachable_max = reconnect_unreachable_max_s
        self._connect_timeout = connect_timeout_s
        self._close_timeout = close_timeout_s
        self._clock = clock
        self._tls = tls_context(ca_file, cert_file, key_file) if tls else None
        self.counters = LinkCounters()
        self._sender = OutboxSender(
            require_ack=require_server_ack,
            ack_window=ack_window,
            max_inflight=max_inflight,
            ack_timeout_s=ack_timeout_s,
            counters=self.counters,
        )

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
        self._client: _GatheringClient | None = None
        self._generation = 0  # which client a command's receipt belongs to
        self._callbacks: deque[tuple[Any, ...]] = deque()
        self._connected = False
        self._connack_deadline = 0.0
        self._attempts = 0  # refusals by a broker that answered, since the last CONNACK
        self._failures = 0  # failed connects of any kind since the last CONNACK
        self._down_since: float | None = None  # first failed connect since the last CONNACK
        self._next_attempt = 0.0
        self._state_payload: bytes | None = None
        self._state_dirty = False
        self._state_mid: int | None = None
        self._status_mid: int | None = None  # our own offline status at a clean stop
        self._birth_mid: int | None = None
        self._outage = Refusals((reconnect_min_s, reconnect_max_s))
        self._replies: deque[_Reply] = deque()
        self._held_commands: list[CommandMessage] | None = []  # until RetainedState is out
        self._stream_checked = False  # events and state wait for the controller's comparison
        self._state_check_sub: int | None = None  # mid of the {p}/state SUBSCRIBE
        self._state_check_unsub: int | None = None  # mid of the UNSUBSCRIBE that follows
        self._state_check_deadline = float("inf")

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
        self._request(state=to_json(snapshot))

    def publish_reply(self, reply: Mapping[str, object], correlation_data: bytes | None) -> None:
        self._request(reply=_Reply(to_json(reply), correlation_data))

    def publish_unstored(self, row: OutboxRow) -> None:
        # Sent like a reply (kept until PUBACKed on this connection), not from the outbox.
        # The state naming its seq was handed over just before: wait for its PUBACK.
        self._request(reply=_Reply(row.payload, None, leaf=f"evt/{row.type}", after_state=True))

    def resync(self) -> None:
        self._request(resync=True)

    def stream_reset(self) -> None:
        self._request(stream_reset=True)

    def stream_checked(self) -> None:
        self._request(stream_checked=True)

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
        stream_reset: bool = False,
        stream_checked: bool = False,
        state: bytes | None = None,
        reply: _Reply | None = None,
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
            req.stream_reset |= stream_reset
            req.stream_checked |= stream_checked
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
        client = self._client
        alive = self._pump(client, 0.0 if self._has_work() else self._idle_wait())
        # Everything this turn publishes (a window of events, their acks' effects, state,
        # replies) leaves in as few send() calls as the socket takes (_GatheringClient).
        client.corked = True
        try:
            self._handle_callbacks()
            if not alive:
                self._drop("connection lost")
            elif not self._connected and time.monotonic() > self._connack_deadline:
                self._drop("no CONNACK in time")
            elif self._held_commands is not None and (
                time.monotonic() > self._state_check_deadline
            ):
                self._state_check_overdue()
            elif self._connected:
                self._flush()
        finally:
            client.corked = False
        if self._client is client and not client.flush_writes():
            self._drop("connection lost")
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
        for reply in req.replies:
            if len(self._replies) >= MAX_PENDING_REPLIES:
                # The server re-sends an unanswered command and gets "duplicate" + result.
                logger.warning("reply queue full; dropping the oldest unsent reply")
                self._replies.popleft()
            self._replies.append(reply)
        if req.outbox:
            self._sender.outbox_changed()
        if req.stream_reset:
            self._sender.reset_stream()
        if req.stream_checked and not self._stream_checked:
            self._stream_checked = True
            self._sender.outbox_changed()
        if req.resync:
            self._sender.resync()
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
            # The first failure of an outage is a warning; the attempts after it (one every
            # second or two while the broker is away) only debug lines, summed up on connect.
            level = logging.WARNING if self._failures == 0 else logging.DEBUG
            logger.log(level, "MQTT connect to %s:%s failed: %s", self._host, self._port, err)
            self._schedule_retry(unreachable=unreachable(err))
            return
        self._client = client
        self._connack_deadline = time.monotonic() + self._connect_timeout
        sock = client.socket()
        if isinstance(sock, socket.socket):  # SSLSocket included
            # Small QoS 1 packets both ways: Nagle plus delayed ACKs would stall the event
            # stream for 40 ms at a time whenever it waits on acks.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _new_client(self) -> _GatheringClient:
        # manual_ack: a command is PUBACKed only once the controller has committed it, so a
        # crash before that leaves it with the broker, which delivers it again.
        client = _GatheringClient(
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
        client.on_unsubscribe = self._on_unsubscribe
        return client

    def _schedule_retry(self, *, unreachable: bool = False) -> None:
        """Back off before the next connect. A broker that answered and refused (TLS, auth,
        no CONNACK) or dropped us gets the doubling back-off up to ``reconnect_max_s``; one
        that cannot be reached at all (nothing listens, no route, reset before it answered)
        costs nothing to retry, so the next attempt is at most ``reconnect_unreachable_max_s``
        away, however long the outage, and these attempts do not grow the back-off: a broker
        that comes back after 90 s, and resets the first connection while it starts, is
        retried within a second or two, not after a 60 s ceiling reached while it was away
        (issue 10: a 90 s outage left a 13-19 s median wait)."""
        now = time.monotonic()
        self._failures += 1
        if self._down_since is None:
            self._down_since = now
        if unreachable:
            delay = unreachable_delay(self._unreachable_max)
        else:
            self._attempts += 1
            low, high = self._backoff
            delay = backoff_delay(self._attempts, low, high)
        self._next_attempt = now + delay

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
        self._sender.lost()
        if self._held_commands is not None:
            # Never PUBACKed: the broker delivers them again on the next connection.
            self._held_commands = []
        self._state_check_deadline = float("inf")  # the next connection asks again
        self._state_mid = self._status_mid = self._birth_mid = None
        self._state_dirty = self._state_payload is not None
        for reply in self._replies:
            reply.mid = None

    def _on_connected(self, session_present: bool) -> None:
        assert self._client is not None
        self._connected = True
        self.counters.connects += 1
        self.counters.connect_failures += self._failures
        outage = ""
        if self._down_since is not None:
            outage = f" after {self._failures} failed attempts over "
            outage += f"{time.monotonic() - self._down_since:.1f} s"
        self._attempts = self._failures = 0
        self._down_since = None
        logger.info("MQTT link up (session %s)%s", "resumed" if session_present else "new", outage)
        self._emit(LinkChanged(True, "session resumed" if session_present else "new session"))
        # Subscribe on every connect: a broker that lost the session has lost these too.
        # retainAsPublished: without it the broker clears the flag on live deliveries, and a
        # command published with retain while we are connected would look like a normal one.
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        self._client.subscribe([(self._topic("cmd"), opts), (self._topic("ack"), opts)])
        if self._held_commands is not None:
            # Our own retained state, once per process (before our first publication of it,
            # which this SUBSCRIBE precedes on the wire). Without retainAsPublished, only the
            # retained copy has the retain flag; our own live state, if it comes first, says
            # nothing was retained.
            _, mid = self._client.subscribe(
                self._topic("state"), options=SubscribeOptions(qos=1, retainAsPublished=False)
            )
            self._state_check_sub, self._state_check_unsub = mid, None
            self._state_check_deadline = time.monotonic() + STATE_CHECK_S
        self._publish_birth()
        self._sender.connected()
        self._outage.probe_now()  # a new connection: probe what was refused, if anything

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
            while client.want_write() and time.monotonic() < deadline:
                # paho closes the socket right after queueing DISCONNECT: nothing may be
                # left in the gathered buffer by then
                if not self._pump(client, 0.05):
                    break
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

    def _pump(self, client: _GatheringClient, timeout: float) -> bool:
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
        if writable and client.socket() is not None:
            if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            if not client.flush_writes():
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
        state = self._state_dirty and self._state_mid is None and self._stream_checked
        replies = any(r.mid is None and self._sendable(r) for r in self._replies)
        return state or replies or (self._stream_checked and self._sender.has_work())

    def _sendable(self, reply: _Reply) -> bool:
        """False for an event from memory until the broker retains the latest state."""
        return not reply.after_state or (
            self._stream_checked and not self._state_dirty and self._state_mid is None
        )

    def _idle_wait(self) -> float:
        due = self._sender.next_timeout(time.monotonic())
        return self._tick if due is None else min(self._tick, due)

    # --- publishing -------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._outage.probe_due(time.monotonic()):
            self._probe()
        self._flush_state_and_replies()
        if self._sender.check_timeout(time.monotonic()):
            logger.info(
                "no server ack for %.0f s: re-sending after seq %d",
                self._ack_timeout,
                self._sender.floor,
            )
        self._send_events()

    def _flush_state_and_replies(self) -> None:
        if (
            self._state_dirty
            and self._state_mid is None
            and self._state_payload is not None
            and self._stream_checked  # not over the retained copy still being read
        ):
            # One state in flight at a time; newer snapshots replace the waiting one.
            self._state_mid = self._publish("state", self._state_payload, retain=True)
            self._state_dirty = False
        for reply in self._replies:
            if reply.mid is None and self._sendable(reply):
                reply.mid = self._publish(
                    reply.leaf, reply.payload, correlation=reply.correlation_data
                )

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
        self._birth_mid = self._publish("status", self._status(online=True), retain=True)

    def _status(self, *, online: bool, stamped: bool = True) -> bytes:
        """Birth, or offline; the will is built once before connecting, so it has no ts."""
        doc: dict[str, object] = {"v": 1, "online": online, "boot_id": self._boot_id}
        if stamped:
            doc["ts"] = rfc3339(self._clock())
        if online:
            doc |= {"version": self._version, "clock_synced": bool(self._clock_synced())}
        return to_json(doc)

    def _send_events(self) -> None:
        if not self._stream_checked:
            return
        sender = self._sender
        while True:
            row = sender.next_row()
            if row is None:
                request = sender.read_request()
                if request is None:
                    return
                rows = self._outbox.read(*request)
                sender.fill(rows, request[1])
                if not rows:
                    return
                continue
            self._publish_event(row)

    def _publish_event(self, row: OutboxRow) -> None:
        if not topic_level(row.type):
            self._refuse(row.seq, f"event type {row.type[:40]!r} is not a topic level")
            return
        assert self._client is not None
        info = self._client.publish(self._topic(f"evt/{row.type}"), row.payload, qos=1)
        self._sender.sent(row.seq, info.mid, time.monotonic())

    def _refuse(self, seq: int, reason: str) -> None:
        # An internal event whose type cannot be a topic level (a bug): kept, never sent.
        logger.error("event seq %d cannot be published: %s", seq, reason)
        self._sender.refuse(seq)

    # --- refused publishes: one outage, probed on a back-off ----------------------------------

    def _publish_outcome(self, kind: str, failed: bool, reason: str, what: str) -> None:
        """A PUBACK of ``kind`` ("evt", "state", "status"): starts, extends or (once every
        refused kind is accepted again) ends the refusal outage (``refusals.Refusals``)."""
        now = time.monotonic()
        if failed and not self._outage.refused(kind, reason, now):
            logger.debug("publish refused again (%s): %s", what, reason)
        elif failed:
            logger.error(
                "the broker refuses this locker's publishes (%s: %s): is locker.id %r the "
                "client certificate's CN, and mqtt.topic_prefix the fleet's? Reported once "
                "(hardware_fault mqtt); refused events are kept and retried every %.0f s at most",
                what,
                reason,
                self.locker_id,
                self._backoff[1],
            )
            self._emit(PublishRefused(self._topic(kind), reason))
        elif ended := self._outage.accepted(kind, now):
            logger.warning(
                "the broker accepts this locker's publishes again, after %d refusal(s) over %.1f s",
                *ended,
            )
            self._emit(PublishAccepted(*ended))

    def _probe(self) -> None:
        """Publish once more what the broker refused, to learn whether it accepts it now."""
        self._outage.probed(time.monotonic())
        kinds = self._outage.kinds
        if "evt" in kinds:
            self._sender.probe()
        if "state" in kinds and self._state_payload is not None:
            self._state_dirty = True
        if "status" in kinds and self._birth_mid is None:
            self._publish_birth()

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
        self._callbacks.append(("suback", [str(r) for r in reasons if r.is_failure], mid))

    @guarded(logger)
    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: Any, props: Any
    ) -> None:
        self._callbacks.append(("unsuback", mid))

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
                if data[1] == self._state_check_sub:
                    self._state_seen(None)  # no read access: nothing to compare with
            elif kind == "suback" and data[1] == self._state_check_sub:
                self._state_check_unsubscribe()
            elif kind == "unsuback" and data[0] == self._state_check_unsub:
                # Anything retained was queued before this UNSUBACK and has been handled.
                self._state_seen(None)
            elif kind == "disconnect":
                logger.info("MQTT disconnect: %s", data[0])
        if seqs := self._sender.take_delivered():
            self._emit(EventsDelivered(seqs))

    def _handle_puback(self, mid: int, failed: bool, reason: str) -> None:
        seq = self._sender.puback(mid, failed)
        if seq is not None:
            self._publish_outcome("evt", failed, reason, f"event seq {seq}")
            return
        if mid == self._state_mid:
            self._state_mid = None
            self._publish_outcome("state", failed, reason, "state")
            return
        if mid == self._birth_mid:
            self._birth_mid = None
            self._publish_outcome("status", failed, reason, "status")
            return
        if mid == self._status_mid:
            self._status_mid = None
        else:
            for reply in self._replies:
                if reply.mid == mid:
                    self._replies.remove(reply)
                    break
        if failed:
            # A reply (dropped: the server asks again and gets "duplicate" with the result)
            # or the offline status: one line each, during an outage only at DEBUG.
            level = logging.DEBUG if self._outage.kinds else logging.ERROR
            logger.log(level, "publish refused by the broker: %s", reason)

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
            command = CommandMessage(
                payload=payload,
                retained=retained,
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=getattr(props, "CorrelationData", None),
                receipt=(generation, mid) if qos else None,
            )
            if self._held_commands is not None:
                # Not before the store has been compared with what this locker published:
                # a rolled-back store must not run a command it may have run already.
                if len(self._held_commands) < MAX_PENDING_REPLIES:
                    self._held_commands.append(command)
                return  # past the bound: not PUBACKed, the broker delivers it again
            self._emit(command)
            return
        if qos and self._client is not None and generation == self._generation:
            self._client.ack(mid, qos)  # an ack or a stray message: nothing to keep
        if topic == self._topic("ack"):
            ack = parse_ack(payload)
            if ack is None:
                # Dropping a bad ack is safe: an ack only allows deleting rows, so ignoring
                # one keeps them (and re-sends them) until a valid ack covers them. It is not
                # a command, so there is no one to reply to.
                logger.warning("ignored a malformed ack (%d bytes)", len(payload))
                return
            self._server_ack(*ack)
        elif topic == self._topic("state"):
            if retained:
                self._state_seen(payload)
            # else: a live copy queued in the session of a process killed while it was
            # subscribed (only the retained copy is what this locker last published)
        else:
            logger.warning("message on unexpected topic %r ignored", topic[:120])

    def _server_ack(self, epoch: str | None, upto: int) -> None:
        # Checked here too, so that an ack the controller refuses cannot move the window
        # (an ack above last_seq used to stop the event stream until a restart).
        verdict = self._sender.server_ack(epoch, upto, self._outbox.stream(), time.monotonic())
        if verdict != "stale":
            self._emit(ServerAck(upto, epoch))  # the controller deletes, or reports it

    def _state_check_unsubscribe(self) -> None:
        if self._client is not None and self._state_check_unsub is None:
            _, self._state_check_unsub = self._client.unsubscribe(self._topic("state"))

    def _state_check_overdue(self) -> None:
        """No answer about our retained state in time (neither the copy nor the UNSUBACK):
        the connection is not working. Commands stay held, not PUBACKed (the broker keeps
        them and delivers them again), and the next connection asks again."""
        logger.warning(
            "no answer about our own retained state within %.0f s; reconnecting, commands held",
            STATE_CHECK_S,
        )
        self._state_check_deadline = float("inf")
        self._drop("no answer about the retained state")

    def _state_seen(self, retained: bytes | None) -> None:
        """The answer about ``{p}/state``: its retained copy (what this locker last
        published), or None when the broker has none (or refuses to tell)."""
        if self._held_commands is None:
            return
        epoch, last_seq = parse_state_stream(retained) if retained is not None else (None, None)
        self._state_check_unsubscribe()
        self._state_check_deadline = float("inf")
        self._emit(RetainedState(epoch, last_seq))
        held, self._held_commands = self._held_commands, None
        for command in held:
            self._emit(command)

    def _emit(self, event: LinkEvent) -> None:
        if self._sink is not None:
            self._sink(event)

    def _topic(self, leaf: str) -> str:
        return f"{self.prefix}/{leaf}"


def _close_socket(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]
