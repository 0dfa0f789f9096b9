"""Mutual TLS and the per-locker ACL (mqtt.md section 6) with the real broker and the link."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from locker.cabinet.link import MqttLink
from locker.ports import CommandMessage, LinkChanged
from locker.sim.broker import OPERATOR_CN, SERVER_CN, Broker, ClientCert, Endpoint, Pki
from tests.broker import (
    LinkRecorder,
    ServerClient,
    SqliteOutbox,
    make_link,
    paho_client,
    tls_broker,  # noqa: F401 - fixture
)
from tests.conftest import wait_for
from tests.contract import validate_topic_message

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

L1, L2 = "LKR-0001", "LKR-0002"


class RawClient:
    """A bare paho client holding some certificate: what a compromised locker could do."""

    def __init__(self, broker: Broker, client_id: str, cert: ClientCert | None) -> None:
        assert broker.pki is not None
        endpoint = Endpoint(broker.host, broker.port, broker.pki.ca_file, cert)
        self.client = paho_client(endpoint, client_id)
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.broker = broker

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.connack = rc

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
        with self.lock:
            self.pubacks[mid] = rc

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def connect(self) -> bool:
        """True once CONNACK says success; False if TLS or the broker refuses."""
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=5)
        except OSError:
            return False
        self.client.loop_start()
        deadline = time.monotonic() + 5
        while self.connack is None and self._alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.connack is not None and not self.connack.is_failure

    def _alive(self) -> bool:
        return self.client.socket() is not None

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.pubacks, 5, what=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def server(tls_broker: Broker) -> Iterator[ServerClient]:  # noqa: F811
    with ServerClient(tls_broker) as srv:
        yield srv


@pytest.fixture
def raw_clients() -> Iterator[list[RawClient]]:
    made: list[RawClient] = []
    yield made
    for c in made:
        c.close()


def raw(
    made: list[RawClient], broker: Broker, client_id: str, cert: ClientCert | None
) -> RawClient:
    client = RawClient(broker, client_id, cert)
    made.append(client)
    return client


def start_link(
    broker: Broker, tmp_path: Path, locker_id: str, **kw: object
) -> tuple[MqttLink, LinkRecorder]:
    outbox = SqliteOutbox(tmp_path / f"{locker_id}.db")
    rec = LinkRecorder(outbox)
    lk = make_link(broker, outbox, locker_id=locker_id, **kw)  # type: ignore[arg-type]
    rec.attach(lk.outbox_changed, lk.stream_checked)
    lk.start(rec)
    return lk, rec


def test_links_work_over_mutual_tls_and_only_see_their_own_commands(
    tls_broker: Broker,  # noqa: F811
    server: ServerClient,
    tmp_path: Path,
) -> None:
    one, rec1 = start_link(tls_broker, tmp_path, L1)
    two, rec2 = start_link(tls_broker, tmp_path, L2)
    try:
        wait_for(lambda: server.statuses(L1) and server.statuses(L2), what="both births")
        for m in server.messages("/status"):
            validate_topic_message(m.topic, m.payload, m.retain, m.qos)
        server.send_command(L2, b"for.two.only")
        server.send_command(L1, b"for.one")
        wait_for(lambda: rec1.of(CommandMessage) and rec2.of(CommandMessage), what="commands")
        # Per-subscriber order is kept, so L2's command would have reached L1 first.
        assert [c.payload for c in rec1.of(CommandMessage)] == [b"for.one"]
        assert [c.payload for c in rec2.of(CommandMessage)] == [b"for.two.only"]
    finally:
        one.close()
        two.close()
        rec1.close()
        rec2.close()


def test_a_locker_cannot_read_another_lockers_commands(
    tls_broker: Broker,  # noqa: F811
    server: ServerClient,
    raw_clients: list[RawClient],
) -> None:
    assert tls_broker.pki is not None
    spy = raw(raw_clients, tls_broker, L1, tls_broker.pki.client(L1))
    assert spy.connect()
    opts = SubscribeOptions(qos=1)
    # Mosquitto grants these SUBSCRIBEs (mqtt.md 0.5) but filters at delivery.
    spy.client.subscribe([(f"lockers/{L2}/cmd", opts), ("#", opts), (f"lockers/{L1}/cmd", opts)])
    wait_for(lambda: server.connects, what="server")
    server.send_command(L2, b"secret.for.two")
    server.ack(L2, 5)
    server.send_command(L1, b"mine")
    wait_for(lambda: any(m.payload == b"mine" for m in spy.messages), what="own command")
    assert all(m.topic.startswith(f"lockers/{L1}/") for m in spy.messages)
    assert b"secret.for.two" not in [m.payload for m in spy.messages]


@pytest.mark.parametrize(
    "topic",
    [
        f"lockers/{L2}/evt/door_opened",
        f"lockers/{L2}/status",
        f"lockers/{L2}/state",
        f"lockers/{L2}/res",
        f"lockers/{L2}/cmd",
        f"lockers/{L1}/cmd",  # not even its own command topic
        f"lockers/{L1}/ack",
        "fleet/backend/status",
    ],
)
def test_a_locker_cannot_publish_outside_its_own_topics(
    tls_broker: Broker,  # noqa: F811
    server: ServerClient,
    raw_clients: list[RawClient],
    topic: str,
) -> None:
    assert tls_broker.pki is not None
    evil = raw(raw_clients, tls_broker, L1, tls_broker.pki.client(L1))
    assert evil.connect()
    rc = evil.publish(topic, b'{"spoofed":true}')
    assert rc.is_failure and rc.value == 0x87  # Not authorized (MQTT 5)
    assert not evil.publish(f"lockers/{L1}/evt/door_opened", b"{}").is_failure
    wait_for(lambda: server.messages(f"lockers/{L1}/evt/door_opened"), what="allowed publish")
    assert not server.messages(lambda m: b"spoofed" in m.payload)


def test_a_client_without_a_certificate_is_refused(
    tls_broker: Broker,  # noqa: F811
    raw_clients: list[RawClient],
) -> None:
    assert not raw(raw_clients, tls_broker, L1, None).connect()


def test_a_certificate_from_another_ca_is_refused(
    tls_broker: Broker,  # noqa: F811
    raw_clients: list[RawClient],
    tmp_path: Path,
) -> None:
    rogue = Pki(tmp_path / "rogue", "Rogue CA")
    assert not raw(raw_clients, tls_broker, L1, rogue.client(L1)).connect()


def test_another_locker_cannot_take_over_a_client_id(
    tls_broker: Broker,  # noqa: F811
    server: ServerClient,
    raw_clients: list[RawClient],
    tmp_path: Path,
) -> None:
    """use_username_as_clientid: L2's certificate connects as L2 whatever id it asks for."""
    assert tls_broker.pki is not None
    lk, rec = start_link(tls_broker, tmp_path, L1)
    try:
        wait_for(lambda: server.statuses(L1), what="L1 up")
        thief = raw(raw_clients, tls_broker, L1, tls_broker.pki.client(L2))
        assert thief.connect()
        lk.publish_state({"probe": 1})
        wait_for(lambda: server.messages(f"lockers/{L1}/state"), what="L1 still publishing")
        assert [e.connected for e in rec.of(LinkChanged)] == [True]
    finally:
        lk.close()
        rec.close()


def test_the_link_checks_the_broker_certificate_and_host_name(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker whose certificate does not name the host we dial is refused by the link."""
    pki = Pki(tmp_path / "pki", server_names=(["broker.invalid"], []))
    b = Broker(tmp_path / "broker", pki=pki)
    b.start()
    try:
        with caplog.at_level(logging.WARNING, logger="locker.cabinet.link"):
            lk, rec = start_link(b, tmp_path, L1)
            try:
                wait_for(lambda: "certificate verify failed" in caplog.text, what="TLS refusal")
                assert lk.counters.connects == 0
                assert not rec.of(LinkChanged)
            finally:
                lk.close()
                rec.close()
    finally:
        b.stop()


# --- issue 11 items 23-24: each identity only its job; revoked certificates refused ---------


LOCKER_TOPICS = [f"lockers/{L1}/{t}" for t in ("status", "state", "evt/door_forced", "res")]
JOBS = {
    # identity: (what it may publish, what the broker refuses with 0x87 Not authorized)
    OPERATOR_CN: (  # sends commands; never acks (deletes) events, never speaks for a locker
        [f"lockers/{L1}/cmd"],
        [f"lockers/{L1}/ack", *LOCKER_TOPICS, "lockers/x", "elsewhere/topic"],
    ),
    SERVER_CN: (  # commands and acks; never speaks for a locker
        [f"lockers/{L1}/cmd", f"lockers/{L1}/ack"],
        [*LOCKER_TOPICS, "elsewhere/topic"],
    ),
}


@pytest.mark.parametrize("identity", sorted(JOBS))
def test_each_server_identity_publishes_only_its_job(
    tls_broker: Broker,  # noqa: F811
    raw_clients: list[RawClient],
    identity: str,
) -> None:
    assert tls_broker.pki is not None
    client = raw(raw_clients, tls_broker, identity, tls_broker.pki.client(identity))
    assert client.connect()
    allowed, refused = JOBS[identity]
    for topic in refused:
        rc = client.publish(topic, b'{"spoofed":true}')
        assert rc.is_failure and rc.value == 0x87, topic
    for topic in allowed:
        assert not client.publish(topic, b"{}").is_failure, topic


def test_a_revoked_certificate_is_refused_at_the_handshake(
    tls_broker: Broker,  # noqa: F811
    raw_clients: list[RawClient],
) -> None:
    pki = tls_broker.pki
    assert pki is not None
    assert raw(raw_clients, tls_broker, L2, pki.client(L2)).connect()
    pki.revoke(L2)
    tls_broker.restart()  # Mosquitto reads its crlfile when it starts
    assert not raw(raw_clients, tls_broker, L2, pki.client(L2)).connect()
    assert raw(raw_clients, tls_broker, L1, pki.client(L1)).connect()
