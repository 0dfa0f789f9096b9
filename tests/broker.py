"""A real Mosquitto for tests, the certificates it needs, and a stand-in for the fleet server.

- ``Broker``: Debian's ``/usr/sbin/mosquitto`` on a free loopback port with its own config and
  persistence directory under ``tmp_path``, plain (anonymous) or mutual TLS with the per-locker
  ACL of ``locker.fleet.provision``; stop/kill/pause/resume/restart on the same port and directory.
- ``Pki``: a fleet CA, the broker's certificate and client certificates, all made by
  ``locker.fleet.provision`` (the same code ``lockerctl`` provisions real fleets with).
- ``ServerClient``: a paho client playing the central server: subscribes to every locker's
  status/state/evt/res, records what arrives (topic, payload, retain flag, properties), can
  ack events and send commands. Its receipt bookkeeping is the servers' own
  (``locker.fleet.ledger.Stream`` per locker and epoch: deduplicated by (epoch, seq), acked
  with the epoch up to the contiguous high-water mark, never past a gap).
- ``SqliteOutbox`` and ``LinkRecorder``: a real-SQLite ``OutboxReader`` and a link sink that
  does what the controller does with acks, for tests of the link on its own.

Fixtures ``broker`` and ``tls_broker`` start one broker per test; import them into a test
module (``from tests.broker import broker``) to use them.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from locker.cabinet.link import MqttLink
from locker.cabinet.sender import check_ack
from locker.config.sections import Mqtt
from locker.contract.replies import rfc3339
from locker.fleet import ledger
from locker.ports import (
    EventsDelivered,
    LinkEvent,
    OutboxReader,
    OutboxRow,
    RetainedState,
    ServerAck,
)
from locker.sim.broker import (  # noqa: F401 - re-exported for the tests
    HOST,
    MOSQUITTO,
    SERVER_CN,
    Broker,
    ClientCert,
    Endpoint,
    Pki,
    free_port,
    port_open,
)
from tests.conftest import wait_for


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A plain, anonymous broker (no TLS, no ACL) for logic tests."""
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Broker]:
    """Mutual TLS, identity from the certificate CN, per-locker ACL; server CN ``backend``."""
    b = Broker(tmp_path / "broker", pki=Pki(tmp_path / "pki"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


# --- MQTT clients for tests -----------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.payload)


def paho_client(endpoint: Endpoint, client_id: str) -> mqtt.Client:
    """A v5 paho client for ``endpoint`` (not connected)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.suppress_exceptions = True
    if endpoint.ca_file is not None:
        cert = endpoint.cert
        client.tls_set(
            ca_certs=endpoint.ca_file,
            certfile=cert.cert_file if cert else None,
            keyfile=cert.key_file if cert else None,
        )
    return client


def _props(packet_type: int, **values: Any) -> Properties:
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


class ServerClient:
    """The fleet server's side, for tests: records everything, acks events like a backend."""

    def __init__(
        self,
        broker: Broker | Endpoint,
        *,
        client_id: str = SERVER_CN,
        topics: tuple[str, ...] = (
            "lockers/+/status",
            "lockers/+/state",
            "lockers/+/evt/#",
            "lockers/+/res",
        ),
        auto_ack: bool = True,
        first_seq: int = 1,
        persistent: bool = True,
    ) -> None:
        self.endpoint = broker.endpoint(client_id) if isinstance(broker, Broker) else broker
        self.topics = topics
        self.auto_ack = auto_ack
        self.first_seq = first_seq
        self.received: list[Received] = []
        self.seqs: dict[str, set[int]] = {}  # every seq seen per locker, all epochs
        self.streams: dict[tuple[str, str], ledger.Stream] = {}  # (locker, epoch)
        self._epoch: dict[str, str] = {}  # each locker's epoch of its latest event
        self._cond = threading.Condition()
        self._stop = False
        self.connects = 0
        self.client = paho_client(self.endpoint, client_id)
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # floats work
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._persistent = persistent
        self._ack_thread = threading.Thread(
            target=self._ack_loop, name="test-server-ack", daemon=True
        )

    def __enter__(self) -> ServerClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        props = _props(PacketTypes.CONNECT, SessionExpiryInterval=3600 if self._persistent else 0)
        self.client.connect_async(
            self.endpoint.host, self.endpoint.port, keepalive=5, clean_start=False, properties=props
        )
        self.client.loop_start()
        self._ack_thread.start()
        wait_for(lambda: self.connects > 0, timeout, what="server client connected")

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self.client.disconnect()
        self.client.loop_stop()
        self._ack_thread.join(5)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: Any, rc: Any, p: Any
    ) -> None:
        if rc.is_failure:
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # A backend wants its small acks out at once, as the link does (no Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # retainAsPublished: see the real retain flag on live messages, not just on replays.
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        client.subscribe([(t, opts) for t in self.topics])
        with self._cond:
            self.connects += 1
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = {}
        for name in ("ResponseTopic", "CorrelationData", "MessageExpiryInterval"):
            if hasattr(msg.properties, name):
                props[name] = getattr(msg.properties, name)
        rec = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, props)
        with self._cond:
            self.received.append(rec)
            levels = msg.topic.split("/")
            if len(levels) >= 4 and levels[2] == "evt":
                self._note_seq(levels[1], rec.payload)
            self._cond.notify_all()

    def _note_seq(self, locker_id: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
            seq, epoch = doc["seq"], ledger.epoch_of(doc)
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if type(seq) is not int or seq < 1 or epoch is None:
            return
        self.seqs.setdefault(locker_id, set()).add(seq)
        stream = self.streams.get((locker_id, epoch))
        if stream is None:  # a server that starts mid-stream holds nothing below first_seq
            stream = ledger.Stream(locker_id, epoch, contiguous=self.first_seq - 1)
            self.streams[(locker_id, epoch)] = stream
        stream.receive(seq, doc)
        stream.take_released()  # ``received`` keeps every copy in arrival order
        self._epoch[locker_id] = epoch

    @property
    def high_water(self) -> dict[str, int]:
        """Per locker, the contiguous high-water mark of its latest event's epoch."""
        with self._cond:
            return {lk: self.streams[(lk, ep)].contiguous for lk, ep in self._epoch.items()}

    def _ack_loop(self) -> None:
        # Acks are coalesced: under load one ack covers many events, as a real backend does.
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._ack_due(), timeout=1.0)
                if self._stop:
                    return
                due: list[tuple[str, ledger.Ack]] = []
                for (locker_id, _), stream in self.streams.items() if self.auto_ack else ():
                    ack = stream.ack_due()
                    if ack is not None:
                        stream.mark_acked(ack.upto_seq)
                        due.append((locker_id, ack))
            for locker_id, ack in due:
                self.client.publish(f"lockers/{locker_id}/ack", json.dumps(ack.payload()), qos=1)

    def _ack_due(self) -> bool:
        return self.auto_ack and any(s.ack_due() is not None for s in self.streams.values())

    # --- what tests call --------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 5.0,
    ) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        info.wait_for_publish(timeout)
        return info

    def ack(self, locker_id: str, upto: int) -> None:
        self.client.publish(
            f"lockers/{locker_id}/ack", json.dumps({"v": 1, "upto_seq": upto}), qos=1
        )

    def send_command(
        self,
        locker_id: str,
        token: bytes,
        *,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
        retain: bool = False,
    ) -> mqtt.MQTTMessageInfo:
        values: dict[str, Any] = {}
        if correlation_data is not None:
            values["CorrelationData"] = correlation_data
        if response_topic is not None:
            values["ResponseTopic"] = response_topic
        props = _props(PacketTypes.PUBLISH, **values) if values else None
        return self.publish(f"lockers/{locker_id}/cmd", token, retain=retain, properties=props)

    def messages(self, predicate: Callable[[Received], bool] | str) -> list[Received]:
        if isinstance(predicate, str):
            suffix = predicate
            predicate = lambda r: r.topic.endswith(suffix)  # noqa: E731
        with self._cond:
            return [r for r in self.received if predicate(r)]

    def statuses(self, locker_id: str) -> list[dict[str, Any]]:
        return [r.json() for r in self.messages(f"lockers/{locker_id}/status")]

    def events(self, locker_id: str) -> list[dict[str, Any]]:
        """Every event received, duplicates included, in arrival order."""
        return [
            r.json()
            for r in self.messages(lambda r: r.topic.startswith(f"lockers/{locker_id}/evt/"))
        ]

    def unique_seqs(self, locker_id: str) -> set[int]:
        with self._cond:
            return set(self.seqs.get(locker_id, set()))

    def has_all(self, locker_id: str, upto: int) -> bool:
        """Whether every seq up to ``upto`` of the locker's latest epoch is held."""
        return self.high_water.get(locker_id, 0) >= upto


class SqliteOutbox(OutboxReader):
    """A real SQLite outbox (WAL) with the controller's write side reduced to add/delete."""

    def __init__(self, path: Path, *, boot_id: str = "test-boot") -> None:
        self.path = path
        self.boot_id = boot_id
        self.epoch = str(uuid.uuid4())
        self._local = threading.local()
        self._write_lock = threading.Lock()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, type TEXT NOT NULL,"
            " payload BLOB NOT NULL)"
        )
        db.commit()
        # Seqs are never reused, even after every row was acked and deleted.
        (self._last_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10)
            self._local.db = db
        return db

    def add(self, n: int = 1, event_type: str = "door_opened", **extra: Any) -> list[int]:
        """Append ``n`` contract-valid events; returns their seqs."""
        with self._write_lock:
            db = self._db()
            last = self._last_seq
            rows = []
            for seq in range(last + 1, last + n + 1):
                doc = {
                    "v": 1,
                    "epoch": self.epoch,
                    "seq": seq,
                    "event_id": str(uuid.uuid4()),
                    "boot_id": self.boot_id,
                    "ts": rfc3339(time.time()),
                    "clock_synced": True,
                    "type": event_type,
                    "compartment": "A1",
                    "data": dict(extra),
                }
                rows.append((seq, event_type, json.dumps(doc, separators=(",", ":")).encode()))
            db.executemany("INSERT INTO outbox VALUES (?, ?, ?)", rows)
            db.commit()
            self._last_seq = last + n
            return [r[0] for r in rows]

    def read(self, after_seq: int, limit: int) -> list[OutboxRow]:
        cur = self._db().execute(
            "SELECT seq, type, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [OutboxRow(seq, typ, bytes(payload)) for seq, typ, payload in cur]

    def depth(self) -> int:
        (n,) = self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def stream(self) -> tuple[str, int]:
        with self._write_lock:
            return self.epoch, self._last_seq

    def delete_upto(self, seq: int) -> None:
        with self._write_lock:
            db = self._db()
            db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
            db.commit()

    def delete(self, seqs: tuple[int, ...]) -> None:
        with self._write_lock:
            db = self._db()
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            db.commit()


class LinkRecorder:
    """A link sink for tests: records every LinkEvent and, like the controller, deletes
    acknowledged rows from the outbox on its own thread and tells the link (``attach``), and
    answers the link's ``RetainedState`` with ``stream_checked`` (nothing to compare here)."""

    def __init__(self, outbox: SqliteOutbox | None = None) -> None:
        self.outbox = outbox
        self.events: list[LinkEvent] = []
        self._cond = threading.Condition()
        self._todo: list[LinkEvent] = []
        self._closed = False
        self._outbox_changed: Callable[[], None] | None = None
        self._stream_checked: Callable[[], None] | None = None
        self._worker: threading.Thread | None = None

    def attach(
        self, outbox_changed: Callable[[], None], stream_checked: Callable[[], None] | None = None
    ) -> None:
        """Start applying acks to the outbox; ``outbox_changed`` and ``stream_checked`` are
        the link's methods (without the latter, the link never sends events or state)."""
        self._outbox_changed = outbox_changed
        self._stream_checked = stream_checked
        self._worker = threading.Thread(target=self._work, name="test-controller", daemon=True)
        self._worker.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(5)

    def __call__(self, event: LinkEvent) -> None:
        with self._cond:
            self.events.append(event)
            if isinstance(event, ServerAck | EventsDelivered):
                self._todo.append(event)
            self._cond.notify_all()
        if isinstance(event, RetainedState) and self._stream_checked is not None:
            self._stream_checked()  # only queues a request on the link

    def _work(self) -> None:
        # Coalesced like a busy controller: one delete per batch of acks.
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._todo))
                if self._closed:
                    return
                todo, self._todo = self._todo, []
            assert self.outbox is not None and self._outbox_changed is not None
            stream = self.outbox.stream()  # like the controller: only valid acks delete
            upto = max(
                (
                    e.upto_seq
                    for e in todo
                    if isinstance(e, ServerAck) and check_ack(e.epoch, e.upto_seq, stream) == "ok"
                ),
                default=0,
            )
            seqs = tuple(s for e in todo if isinstance(e, EventsDelivered) for s in e.seqs)
            if upto:
                self.outbox.delete_upto(upto)
            if seqs:
                self.outbox.delete(seqs)
            self._outbox_changed()

    def of(self, kind: type[Any]) -> list[Any]:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]


def make_link(
    broker: Broker,
    outbox: OutboxReader,
    *,
    locker_id: str = "LKR-0001",
    boot_id: str = "boot-1",
    **settings: Any,
) -> MqttLink:
    """An ``MqttLink`` for ``broker`` with test-friendly timings (override any setting)."""
    mqtt = Mqtt.model_fields  # the configuration's defaults, as lockerd would use them
    defaults = (
        "topic_prefix",
        "session_expiry_s",
        "require_server_ack",
        "max_inflight",
        "reconnect_unreachable_max_s",
    )
    kwargs: dict[str, Any] = {
        **{name: mqtt[name].default for name in defaults},
        "keepalive_s": 5,
        "will_delay_s": 2,
        "ack_timeout_s": 30.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "connect_timeout_s": 3.0,
        **broker.link_kwargs(locker_id),
    }
    kwargs.update(settings)
    return MqttLink(
        locker_id=locker_id,
        outbox=outbox,
        boot_id=boot_id,
        version="0.1.0-test",
        clock_synced=lambda: True,
        **kwargs,
    )
