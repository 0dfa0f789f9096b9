"""The server side of the MQTT contract (DESIGN section 5) as a library.

``lockerctl`` is built on it, and end-to-end tests use it as "the server". It owns:

- ``FleetClient``: an MQTT 5 connection (paho, TLS client certificate or plain) that signs
  and sends commands on ``{p}/cmd`` (QoS 1, not retained, ResponseTopic ``{p}/res``,
  random CorrelationData) and waits, bounded, for the matching reply; ``issue_parcel`` on top
  (codes, tags with the locker's device key, a signed ``assign``, the customer's QR token).
  Command claims, arguments, signing, replies and the errors are in ``locker.fleet.commands``
  (re-exported here).

Watching a fleet (``FleetView``, ``EventLog``, ``Watcher``) lives in ``locker.fleet.watch``.

Codes and keys never go to the log; only the caller decides to print codes (the operator's
job).

Past 500 lines (about 520) for a stated reason: one class whose connection, waits and paho
callbacks share one lock and must be read together; what could leave has left (command
building: ``commands``; the connection's story: ``connection``; TLS causes: ``tls_cause``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from locker.contract import credentials
from locker.contract.actions import Action
from locker.fleet import tls_cause
from locker.fleet.commands import (
    DEFAULT_DROPOFF_HOURS,
    DEFAULT_LONG_TTL_S,
    DEFAULT_PICKUP_HOURS,
    DEFAULT_SHORT_TTL_S,
    PARCEL_ID_RE,
    AssignTimeoutError,
    BrokerError,
    CommandSigner,
    FleetError,
    IssuedParcel,
    Reply,
    ReplyTimeoutError,
    assign_args,
    check_args,
    check_parcel_id,
    coerce_args,
    command_claims,
    customer_token,
    max_ttl,
    new_code_pair,
    parse_action,
)
from locker.fleet.connection import ConnectionWatch
from locker.fleet.provision import Fleet
from locker.ports import guarded

logger = logging.getLogger(__name__)

# The command-building part lives in locker.fleet.commands; callers import it from here too.
__all__ = [
    "DEFAULT_DROPOFF_HOURS",
    "DEFAULT_LONG_TTL_S",
    "DEFAULT_PICKUP_HOURS",
    "DEFAULT_SHORT_TTL_S",
    "PARCEL_ID_RE",
    "WATCH_SESSION_EXPIRY_S",
    "AssignTimeoutError",
    "BrokerError",
    "CommandSigner",
    "FleetClient",
    "FleetError",
    "Incoming",
    "IssuedParcel",
    "Reply",
    "ReplyTimeoutError",
    "TlsFiles",
    "assign_args",
    "check_args",
    "check_parcel_id",
    "coerce_args",
    "command_claims",
    "customer_token",
    "max_ttl",
    "new_code_pair",
    "parse_action",
    "signer_for",
]

WATCH_SESSION_EXPIRY_S = 7 * 24 * 3600


# --- MQTT client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Incoming:
    """One message as received (``retain`` as published: subscriptions use retainAsPublished)."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    correlation_data: bytes | None = None


def _props(packet: int, **values: Any) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


class FleetClient:
    """An MQTT 5 client for the server side of the contract.

    The broker forces client id = certificate CN, so two clients on the same identity
    disconnect each other: the fleet has one identity per role (``provision.SERVER_USERS``).
    ``watch`` (:class:`locker.fleet.connection.ConnectionWatch`) tells such a takeover, and
    every drop and return, to the log and to :meth:`add_note_listener`'s listeners. A refused
    TLS connection's error names the cause (:mod:`locker.fleet.tls_cause`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        prefix: str = "lockers",
        tls: TlsFiles | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        keepalive_s: int = 30,
    ) -> None:
        self.host, self.port, self.prefix = host, port, prefix.rstrip("/")
        self._clean_start, self._session_expiry_s, self._keepalive = (
            clean_start,
            session_expiry_s,
            keepalive_s,
        )
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.suppress_exceptions = True
        if tls is not None:
            self._client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file),
                keyfile=str(tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self._client.reconnect_delay_set(1, 30)
        self.identity, self._tls = client_id, tls
        self.watch = ConnectionWatch(client_id)  # drops, returns, takeovers (connection.py)
        self._note_listeners: list[Callable[[str], None]] = []
        self._last_error: str | None = None  # paho's last error log line (a TLS alert...)
        self._closing = False
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._pubacks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._replies: dict[bytes, Reply | None] = {}
        self._stop_waiting: str | None = None  # why every wait for a reply ends now
        self._topics: list[str] = []
        self._listeners: list[Callable[[Incoming], None]] = []
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_log = self._on_log

    @classmethod
    def for_fleet(
        cls,
        fleet: Fleet,
        user: str = "lockerctl",
        *,
        host: str | None = None,
        port: int | None = None,
        tls: bool = True,
        clean_start: bool = True,
        session_expiry_s: int = 0,
    ) -> FleetClient:
        """A client with one of the fleet's server identities (``clients/<user>.pem``)."""
        cert, key = fleet.client_cert(user)
        files = TlsFiles(fleet.ca_file, cert, key) if tls else None
        if files is not None and not cert.exists():
            raise FleetError(f"fleet has no client identity {user!r}")
        return cls(
            host or fleet.broker_host,
            port or fleet.broker_port,
            client_id=user,
            prefix=fleet.topic_prefix,
            tls=files,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
        )

    # -- connection --

    def connect(self, timeout: float = 10.0) -> None:
        _check_timeout(timeout)
        props = _props(PacketTypes.CONNECT, SessionExpiryInterval=self._session_expiry_s)
        try:
            self._client.connect(
                self.host,
                self.port,
                keepalive=self._keepalive,
                clean_start=self._clean_start,
                properties=props,
            )
        except (OSError, ssl.SSLError) as err:
            why = tls_cause.cause(str(err))
            text = f"{why} ({err})" if why else str(err)
            raise BrokerError(
                f"cannot connect to {self.host}:{self.port}: {text}{self._own_files()}"
            ) from err
        self._client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connack is not None, timeout):
                self.close()
                raise BrokerError(f"no CONNACK from {self.host}:{self.port} in {timeout} s")
            rc = self._connack
        if rc is not None and rc.is_failure:
            self.close()
            raise BrokerError(f"broker refused the connection: {rc}{self._why_refused()}")

    def _why_refused(self) -> str:
        why = tls_cause.cause(self._last_error or "")  # the TLS alert the broker sent
        return (f": {why}" if why else "") + self._own_files()

    def _own_files(self) -> str:
        tls = self._tls
        return "" if tls is None else tls_cause.identity_note(tls.ca_file, tls.cert_file)

    def add_note_listener(self, listener: Callable[[str], None]) -> None:
        """Called on paho's thread with a sentence for people when the connection drops, comes
        back, or another client takes this identity over (once per episode). Each is also
        logged."""
        self._note_listeners.append(listener)

    def _notes(self, notes: list[str]) -> None:
        for note in notes:
            contested = note.startswith("another client")
            logger.log(logging.WARNING if contested else logging.INFO, "%s", note)
            for listener in list(self._note_listeners):
                listener(note)

    def close(self, *, end_session: bool = False) -> None:
        """Disconnect. ``end_session``: a clean stop of a persistent session ends it too
        (DISCONNECT with SessionExpiryInterval 0, MQTT 5 section 3.14.2.2.2: allowed when the
        CONNECT gave a non-zero one), so the broker hands what it would have queued for us to
        the other members of a shared subscription instead of holding it until expiry."""
        self._closing = True  # our own DISCONNECT: no "connection lost" note
        props = None
        if end_session and self._session_expiry_s > 0:
            props = _props(PacketTypes.DISCONNECT, SessionExpiryInterval=0)
        with contextlib.suppress(Exception):
            self._client.disconnect(properties=props)
        self._client.loop_stop()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def subscribe(self, topics: Iterable[str], timeout: float = 10.0) -> None:
        """Subscribe (QoS 1, retain as published) and wait for the SUBACK; kept on reconnect."""
        _check_timeout(timeout)
        new = [t for t in topics if t not in self._topics]
        if not new:
            return
        self._topics.extend(new)
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        rc, mid = self._client.subscribe([(t, opts) for t in new])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"subscribe failed: {mqtt.error_string(rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise BrokerError("no SUBACK in time")
            codes = self._subacks.pop(mid)
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            raise FleetError(f"subscription refused: {', '.join(refused)}")

    def add_listener(self, listener: Callable[[Incoming], None]) -> None:
        """Called on paho's thread for every message that is not an awaited reply."""
        self._listeners.append(listener)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Publish QoS 1 and wait for a successful PUBACK."""
        _check_timeout(timeout)
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._pubacks, timeout):
                raise BrokerError(f"no PUBACK for {topic} in {timeout} s")
            rc = self._pubacks.pop(info.mid)
        if rc.is_failure:
            raise FleetError(f"broker refused the publication on {topic}: {rc}")

    # -- contract operations --

    def topic(self, locker_id: str, channel: str) -> str:
        return f"{self.prefix}/{locker_id}/{channel}"

    def send_signed(self, locker_id: str, token: bytes, timeout: float = 10.0) -> Reply:
        """Publish a signed command on ``{p}/cmd`` and wait for its reply on ``{p}/res``.

        :raises ReplyTimeoutError: no reply in ``timeout`` s, or ``stop_waiting`` was called
            (the command stays queued for the locker either way).
        :raises BrokerError: the broker did not take the publication.
        """
        _check_timeout(timeout)
        correlation = secrets.token_bytes(16)
        with self._cond:
            self._replies[correlation] = None
        try:
            self.post_signed(locker_id, token, timeout, correlation=correlation)
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._replies[correlation] is not None or self._stop_waiting is not None
                    ),
                    timeout,
                )
                reply = self._replies[correlation]
                if reply is None:
                    why = self._stop_waiting or f"no reply from {locker_id} in {timeout} s"
                    raise ReplyTimeoutError(
                        f"{why}; the command stays queued for the locker until it expires"
                    )
        finally:
            with self._cond:
                self._replies.pop(correlation, None)
        return reply

    def post_signed(
        self,
        locker_id: str,
        token: bytes,
        timeout: float = 10.0,
        *,
        correlation: bytes | None = None,
    ) -> None:
        """Publish a signed command without waiting for its reply (a locker known to be
        offline: it runs from the locker's session when the locker is back; its reply, if
        anyone still listens, comes on ``{p}/res``).

        :raises BrokerError: the broker did not take the publication in ``timeout`` s.
        """
        _check_timeout(timeout)
        res_topic = self.topic(locker_id, "res")
        self.subscribe([res_topic], timeout)
        props = _props(
            PacketTypes.PUBLISH,
            ResponseTopic=res_topic,
            CorrelationData=correlation or secrets.token_bytes(16),
        )
        self.publish(self.topic(locker_id, "cmd"), token, properties=props, timeout=timeout)

    def stop_waiting(self, why: str) -> None:
        """End every wait for a reply now, and any later one at once, with ``why`` (a
        shutting-down service answers its waiting requests instead of dropping them)."""
        with self._cond:
            self._stop_waiting = why
            self._cond.notify_all()

    def send_command(
        self,
        locker_id: str,
        action: Action | str,
        args: Mapping[str, Any],
        *,
        signer: CommandSigner,
        ttl: int | None = None,
        timeout: float = 10.0,
        now: float | None = None,
    ) -> Reply:
        """Sign and send one command of DESIGN 5; returns the locker's reply."""
        claims = command_claims(
            locker_id, action, args, now=time.time() if now is None else now, ttl=ttl
        )
        logger.info("sending %s to %s (jti %s)", claims["act"], locker_id, claims["jti"])
        return self.send_signed(locker_id, signer.sign(claims), timeout)

    def ack(
        self, locker_id: str, upto_seq: int, *, epoch: str | None = None, timeout: float = 10.0
    ) -> None:
        """Publish ``{"v":1,"epoch","upto_seq"}`` on ``{p}/ack`` (no ``epoch``: legacy)."""
        doc: dict[str, Any] = {"v": 1, "upto_seq": upto_seq}
        if epoch:
            doc["epoch"] = epoch
        payload = json.dumps(doc, separators=(",", ":")).encode()
        self.publish(self.topic(locker_id, "ack"), payload, timeout=timeout)

    def issue_parcel(
        self,
        locker_id: str,
        parcel: str,
        size: str,
        *,
        device_key: bytes,
        signer: CommandSigner,
        kind: str = "delivery",
        compartment: str | None = None,
        accessible: bool = False,
        digits: int = 8,
        dropoff_hours: float = DEFAULT_DROPOFF_HOURS,
        pickup_hours: int = DEFAULT_PICKUP_HOURS,
        token_key: Ed25519PrivateKey | None = None,
        token_kid: int = 1,
        timeout: float = 10.0,
        now: float | None = None,
    ) -> IssuedParcel:
        """Generate both codes, send a signed ``assign`` and return the codes with the reply.

        With ``token_key`` a QR token is minted for the customer's step: pickup for a delivery,
        drop-off for a return. It is valid from now until the pickup window can last end.
        """
        if kind not in ("delivery", "return"):
            raise FleetError(f"kind must be delivery or return, got {kind!r}")
        if not (math.isfinite(dropoff_hours) and dropoff_hours > 0):
            raise FleetError("dropoff_hours must be positive")
        t = time.time() if now is None else now
        dropoff, pickup, d_tag, p_tag = new_code_pair(device_key, digits)
        until = int(t + dropoff_hours * 3600)
        args = assign_args(
            parcel,
            kind,
            size,
            dropoff_tag=d_tag,
            pickup_tag=p_tag,
            dropoff_until=until,
            pickup_hours=pickup_hours,
            compartment=compartment,
            accessible=accessible,
        )
        token, action = None, None
        if token_key is not None:
            action, expires = customer_token(kind, until, pickup_hours)
            token = credentials.mint_token(
                token_key, token_kid, locker_id, action, parcel, int(t), expires
            )
        issued = IssuedParcel(
            locker_id, parcel, kind, size, until, pickup_hours, None, dropoff, pickup, token, action
        )
        try:
            reply = self.send_command(
                locker_id, Action.ASSIGN, args, signer=signer, timeout=timeout, now=t
            )
        except ReplyTimeoutError as err:
            raise AssignTimeoutError(str(err), issued) from None
        return dataclasses.replace(issued, reply=reply)

    # -- paho callbacks: record and notify, nothing else --

    @guarded(logger)
    def _on_connect(
        self, client: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, _p: Any
    ) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()
        if not rc.is_failure:
            self._notes(self.watch.connected(time.monotonic()))
        if not rc.is_failure and self._topics:
            opts = SubscribeOptions(qos=1, retainAsPublished=True)
            client.subscribe([(t, opts) for t in self._topics])

    @guarded(logger)
    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        logger.info("disconnected from %s:%s: %s", self.host, self.port, rc)
        with self._cond:
            first = self._connack is None
            if first:  # dropped before CONNACK: refused, not slow
                self._connack = (
                    rc if rc.is_failure else ReasonCode(PacketTypes.CONNACK, "Unspecified error")
                )
                self._cond.notify_all()
        if not first and not self._closing:
            self._notes(self.watch.disconnected(str(rc), int(rc.value), time.monotonic()))

    def _on_log(self, _c: Any, _u: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_error = text

    @guarded(logger)
    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._pubacks[mid] = rc
            self._cond.notify_all()

    @guarded(logger)
    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = codes
            self._cond.notify_all()

    @guarded(logger)
    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        if correlation is not None and msg.topic.endswith("/res"):
            with self._cond:
                if correlation in self._replies:
                    try:
                        self._replies[correlation] = Reply.parse(bytes(msg.payload))
                    except FleetError as err:
                        self._replies[correlation] = Reply(
                            "failed", None, None, {"code": "bad_reply", "message": str(err)}, {}
                        )
                    self._cond.notify_all()
                    return
        incoming = Incoming(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, correlation)
        for listener in list(self._listeners):
            listener(incoming)


def _check_timeout(timeout: float) -> None:
    """:raises FleetError: ``timeout`` is not a positive, finite number of seconds (a NaN
    deadline never passes, and 0 or less would give up before the broker could answer)."""
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise FleetError(f"a timeout must be a positive number of seconds, got {timeout!r}")


def signer_for(fleet: Fleet) -> CommandSigner:
    return CommandSigner(fleet.command_key(), fleet.command_kid)
