"""locker.cabinet.link against a real Mosquitto: contract, availability, delivery through faults."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from locker.cabinet import link as link_mod
from locker.cabinet.link import MqttLink
from locker.cabinet.linkwire import (
    backoff_delay,
    parse_ack,
    parse_state_stream,
    unreachable,
    unreachable_delay,
)
from locker.ports import (
    CommandMessage,
    EventsDelivered,
    LinkChanged,
    OutboxRow,
    PublishAccepted,
    PublishRefused,
    RetainedState,
    ServerAck,
)
from locker.sim.broker import Broker
from tests.broker import (
    LinkRecorder,
    Received,
    ServerClient,
    SqliteOutbox,
    broker,  # noqa: F401 - fixture
    make_link,
    tls_broker,  # noqa: F401 - fixture
)
from tests.conftest import never_within, wait_for
from tests.contract import validate_topic_message

LOCKER = "LKR-0001"
P = f"lockers/{LOCKER}"


@pytest.fixture
def outbox(tmp_path: Path) -> SqliteOutbox:
    return SqliteOutbox(tmp_path / "outbox.db")


@pytest.fixture
def server(broker: Broker) -> Iterator[ServerClient]:  # noqa: F811
    with ServerClient(broker) as srv:
        yield srv


class Harness:
    """Starts links wired to a LinkRecorder that deletes acked rows, and stops them all."""

    def __init__(self, outbox: SqliteOutbox) -> None:
        self.outbox = outbox
        self.links: list[tuple[MqttLink, LinkRecorder]] = []

    def start(self, b: Broker, **settings: object) -> tuple[MqttLink, LinkRecorder]:
        rec = LinkRecorder(self.outbox)
        lk = make_link(b, self.outbox, **settings)  # type: ignore[arg-type]
        rec.attach(lk.outbox_changed, lk.stream_checked)
        lk.start(rec)
        self.links.append((lk, rec))
        return lk, rec

    def close(self) -> None:
        for lk, rec in self.links:
            lk.close(clean=False)
            rec.close()


@pytest.fixture
def harness(outbox: SqliteOutbox) -> Iterator[Harness]:
    h = Harness(outbox)
    try:
        yield h
    finally:
        h.close()


def connected(rec: LinkRecorder, times: int = 1) -> Callable[[], bool]:
    return lambda: sum(1 for e in rec.of(LinkChanged) if e.connected) >= times


def check_contract(messages: list[Received]) -> None:
    for m in messages:
        validate_topic_message(m.topic, m.payload, m.retain, m.qos)


pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"v":1,"upto_seq":0}', (None, 0)),
        (b'{"upto_seq": 42, "v": 1}', (None, 42)),
        (b'{"v":1,"epoch":"e1","upto_seq":7}', ("e1", 7)),
        (b'{"v":1,"epoch":"","upto_seq":7}', None),
        (b'{"v":1,"epoch":7,"upto_seq":7}', None),
        (b'{"v":1,"upto_seq":-1}', None),
        (b'{"v":1,"upto_seq":9223372036854775807}', (None, 2**63 - 1)),
        (b'{"v":1,"upto_seq":9223372036854775808}', None),  # past the contract's range
        (b'{"v":1,"upto_seq":99999999999999999999999}', None),
        (b'{"v":2,"upto_seq":1}', None),
        (b'{"v":true,"upto_seq":1}', None),
        (b'{"v":1,"upto_seq":1.0}', None),
        (b'{"v":1,"upto_seq":"1"}', None),
        (b'{"v":1,"upto_seq":true}', None),
        (b'{"v":1,"upto_seq":1,"seqs":[3]}', None),
        (b'{"v":1}', None),
        (b"[1]", None),
        (b"", None),
        (b"\xff", None),
        (b'{"v":1,"upto_seq":1' + b" " * 300 + b"}", None),
    ],
)
def test_parse_ack_is_strict(payload: bytes, expected: tuple[str | None, int] | None) -> None:
    assert parse_ack(payload) == expected


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    for attempt in range(1, 12):
        delays = [backoff_delay(attempt, 1.0, 60.0) for _ in range(200)]
        assert all(1.0 <= d <= min(60.0, 2.0**attempt) for d in delays)
        assert len(set(delays)) > 100  # jittered, not a fixed schedule
    assert max(backoff_delay(30, 1.0, 60.0) for _ in range(200)) > 30


def test_an_unreachable_broker_is_retried_within_seconds(
    broker: Broker,  # noqa: F811
    harness: Harness,
) -> None:
    """Issue 10: after a long outage the next attempt is at most
    ``reconnect_unreachable_max_s`` away, whatever the number of failed attempts."""
    assert unreachable(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert unreachable(OSError(errno.EHOSTUNREACH, "no route"))
    assert unreachable(ConnectionResetError(errno.ECONNRESET, "reset while starting"))
    assert not unreachable(ssl.SSLError("handshake"))
    lk, rec = harness.start(
        broker, reconnect_min_s=0.05, reconnect_max_s=60.0, reconnect_unreachable_max_s=0.2
    )
    wait_for(connected(rec))
    broker.stop()
    wait_for(lambda: any(not e.connected for e in rec.of(LinkChanged)), what="link down")
    wait_for(lambda: lk._failures >= 12, 10, what="many refused attempts")
    # the refusals of an absent broker did not grow the back-off of one that answers: a
    # broker that comes back and drops the first connection is retried within 2*0.05 s
    assert lk._attempts <= 1
    broker.start()
    wait_for(connected(rec, 2), 3, what="back within the unreachable bound")
    assert lk.counters.connect_failures >= 12
    assert lk._failures == lk._attempts == 0


def test_unreachable_attempts_are_jittered_within_half_to_all_of_the_cap() -> None:
    delays = [unreachable_delay(1.0) for _ in range(500)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 400 and max(delays) - min(delays) > 0.4


# --- status, state, replies, commands -------------------------------------------------------


def test_birth_is_retained_and_late_subscribers_see_it(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    lk, rec = harness.start(broker)
    wait_for(connected(rec), what="link up")
    wait_for(lambda: server.statuses(LOCKER), what="birth")
    birth = server.messages(f"{P}/status")[0]
    assert birth.retain
    assert birth.json()["online"] is True
    assert birth.json()["boot_id"] == "boot-1"
    assert birth.json()["version"] == "0.1.0-test"
    check_contract([birth])
    assert lk.connected and lk.healthy()
    with ServerClient(broker, client_id="late", persistent=False) as late:
        wait_for(lambda: late.statuses(LOCKER), what="retained birth for a late subscriber")
        assert late.statuses(LOCKER)[-1]["online"] is True


def test_state_is_retained_coalesced_and_republished_on_connect(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    lk, rec = harness.start(broker)
    wait_for(connected(rec))
    for rev in range(300):
        lk.publish_state(state(rev))
    wait_for(lambda: last_state_rev(server) == 299, what="latest state")
    states = server.messages(f"{P}/state")
    assert len(states) < 300  # bursts coalesce: only the newest snapshot matters
    assert all(m.retain for m in states)
    assert [m.json()["rev"] for m in states] == sorted(m.json()["rev"] for m in states)
    check_contract(states)
    before = len(states)
    broker.restart()
    wait_for(connected(rec, 2), what="reconnect")
    wait_for(lambda: len(server.messages(f"{P}/state")) > before, what="state republished")
    assert last_state_rev(server) == 299


def state(rev: int) -> dict[str, object]:
    return {
        "v": 1,
        "epoch": "5f0c6a52-3f7e-4d0b-9a51-2b8f1c7d9e04",
        "rev": rev,
        "ts": "2026-11-21T07:00:00.000Z",
        "lockdown": False,
        "keypad_locked": False,
        "outbox_depth": 0,
        "last_seq": 0,
        "compartments": [],
    }


def last_state_rev(server: ServerClient) -> int | None:
    states = server.messages(f"{P}/state")
    return states[-1].json()["rev"] if states else None


def test_reply_echoes_correlation_data(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    lk, rec = harness.start(broker)
    wait_for(connected(rec))
    reply = {"v": 1, "cmd_id": "cmd-0001", "status": "done", "ts": "2026-11-21T07:00:00.000Z"}
    lk.publish_reply(reply, b"\x00corr-1")
    lk.publish_reply(
        reply
        | {"cmd_id": None, "status": "rejected", "error": {"code": "malformed", "message": "x"}},
        None,
    )
    wait_for(lambda: len(server.messages(f"{P}/res")) == 2, what="replies")
    first, second = server.messages(f"{P}/res")
    assert first.json() == reply
    assert first.properties["CorrelationData"] == b"\x00corr-1"
    assert "CorrelationData" not in second.properties
    assert not first.retain
    check_contract([first, second])


def test_reply_made_while_offline_goes_out_after_reconnect(
    broker: Broker,  # noqa: F811
    harness: Harness,
) -> None:
    # The server's session (and subscription) exists before the outage and survives the
    # broker's restart: subscribed only afterwards, it could miss a reply the link, faster
    # to reconnect, published first (seen under load).
    with ServerClient(broker) as server:
        lk, rec = harness.start(broker)
        wait_for(connected(rec))
        broker.stop()
        wait_for(lambda: rec.of(LinkChanged)[-1].connected is False, what="link down")
        lk.publish_reply({"v": 1, "cmd_id": "c-1", "status": "done", "ts": "x"}, b"c1")
        broker.start()
        wait_for(lambda: server.messages(f"{P}/res"), 15, what="reply after reconnect")
        assert server.messages(f"{P}/res")[0].properties["CorrelationData"] == b"c1"


def test_command_is_forwarded_as_received(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    _lk, rec = harness.start(broker)
    wait_for(connected(rec))
    wait_for(lambda: server.statuses(LOCKER), what="birth (subscriptions are made before it)")
    token = b"eyJhbGciOiJFZERTQSIsImtpZCI6Im9wczEifQ.e30.c2ln"
    server.send_command(LOCKER, token, correlation_data=b"k-1", response_topic=f"{P}/res")
    server.send_command(LOCKER, b"\xff not even text")
    wait_for(lambda: len(rec.of(CommandMessage)) == 2, what="commands")
    first, second = rec.of(CommandMessage)
    assert dataclasses.replace(first, receipt=None) == CommandMessage(
        token, False, f"{P}/res", b"k-1"
    )
    assert dataclasses.replace(second, receipt=None) == CommandMessage(
        b"\xff not even text", False, None, None
    )
    assert first.receipt != second.receipt  # each is PUBACKed on its own, once committed


def test_retained_command_is_flagged(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    server.send_command(LOCKER, b"a.b.c", retain=True)
    _lk, rec = harness.start(broker)
    wait_for(lambda: rec.of(CommandMessage), what="retained command delivered on subscribe")
    assert rec.of(CommandMessage)[0].retained is True


def test_malformed_ack_is_dropped_with_a_warning(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _lk, rec = harness.start(broker)
    wait_for(connected(rec))
    wait_for(lambda: server.statuses(LOCKER))
    with caplog.at_level(logging.WARNING, logger="locker.cabinet.link"):
        server.publish(f"{P}/ack", b'{"v":1,"upto_seq":"5"}')
        server.publish(f"{P}/ack", b'{"v":1,"upto_seq":7}')
        wait_for(lambda: rec.of(ServerAck), what="the valid ack")
    assert rec.of(ServerAck) == [ServerAck(7)]
    assert "malformed ack" in caplog.text
    assert '"5"' not in caplog.text  # payloads stay out of the log


# --- availability: birth, will, clean stop --------------------------------------------------


def test_clean_close_publishes_offline_and_suppresses_the_will(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    lk, rec = harness.start(broker, will_delay_s=0)
    wait_for(lambda: server.statuses(LOCKER), what="birth")
    lk.close(clean=True)
    assert rec.of(LinkChanged)[-1] == LinkChanged(False, "closed")
    assert not lk.healthy()
    # A will (no "ts") would be published at the disconnect, before this marker arrives.
    server.publish("lockers/marker/status", b"{}")
    wait_for(lambda: server.messages("lockers/marker/status"), what="marker")
    statuses = server.statuses(LOCKER)
    assert [s["online"] for s in statuses] == [True, False]
    assert "ts" in statuses[-1]
    assert server.messages(f"{P}/status")[-1].retain
    check_contract(server.messages(f"{P}/status"))
    lk.close()  # idempotent


LINK_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from locker.cabinet.link import MqttLink
    from tests.broker import SqliteOutbox
    port, db = int(sys.argv[1]), Path(sys.argv[2])
    up = threading.Event()
    link = MqttLink(locker_id="LKR-0001", host="127.0.0.1", port=port, tls=False,
                    outbox=SqliteOutbox(db), boot_id="boot-killed", version="t",
                    clock_synced=lambda: False, will_delay_s=1, keepalive_s=5,
                    topic_prefix="lockers", session_expiry_s=604800,
                    require_server_ack=True, ack_timeout_s=30.0, max_inflight=20,
                    reconnect_min_s=0.05, reconnect_max_s=0.5,
                    reconnect_unreachable_max_s=0.5)
    link.start(lambda e: up.set() if getattr(e, "connected", False) else None)
    up.wait(10)
    print("up", flush=True)
    threading.Event().wait()
    """
)


def test_daemon_sigkill_turns_status_offline_within_the_will_delay(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", LINK_SCRIPT, str(broker.port), str(tmp_path / "o.db")],
        cwd=root,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        wait_for(lambda: server.statuses(LOCKER), what="birth")
        assert server.statuses(LOCKER)[-1]["clock_synced"] is False
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
    finally:
        proc.kill()
        proc.wait(5)
    wait_for(lambda: len(server.statuses(LOCKER)) == 2, timeout=6, what="will")
    will = server.messages(f"{P}/status")[-1]
    assert will.json() == {"v": 1, "online": False, "boot_id": "boot-killed"}
    assert will.retain
    assert 0.8 <= will.at - killed <= 1 + 3  # will delay 1 s, plus a few seconds at most
    check_contract([will])


def test_reconnect_within_the_will_delay_does_not_flap(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    first, _rec = harness.start(broker, will_delay_s=2)
    wait_for(lambda: server.statuses(LOCKER), what="birth")
    first.close(clean=False)  # the socket just drops, as when the process dies
    _second, _rec2 = harness.start(broker, will_delay_s=2, boot_id="boot-2")
    wait_for(lambda: len(server.statuses(LOCKER)) == 2, what="second birth")
    assert server.statuses(LOCKER)[-1]["boot_id"] == "boot-2"
    never_within(
        lambda: any(not s["online"] for s in server.statuses(LOCKER)),
        3.0,
        "an offline status flapped although the locker came back within the will delay",
    )


# --- sessions -------------------------------------------------------------------------------


def test_persistent_session_delivers_commands_sent_while_down(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
) -> None:
    first, _rec = harness.start(broker)
    wait_for(lambda: server.statuses(LOCKER), what="birth: session and subscriptions exist")
    first.close(clean=True)
    server.send_command(LOCKER, b"queued.while.down", correlation_data=b"q")
    broker.restart()  # and the session survives a broker restart too (persistence)
    wait_for(lambda: server.connects == 2, what="server back")
    server.send_command(LOCKER, b"queued.after.restart")
    _second, rec2 = harness.start(broker)
    wait_for(lambda: len(rec2.of(CommandMessage)) == 2, what="queued commands")
    assert [c.payload for c in rec2.of(CommandMessage)] == [
        b"queued.while.down",
        b"queued.after.restart",
    ]
    assert rec2.of(CommandMessage)[0].correlation_data == b"q"
    assert rec2.of(LinkChanged)[0] == LinkChanged(True, "session resumed")


@pytest.mark.parametrize("committed", [False, True])
def test_a_command_is_pubacked_only_once_committed(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    committed: bool,
) -> None:
    """A locker that dies between receiving a command and committing it gets the command
    again from its persistent session; one that committed it does not."""
    first, rec = harness.start(broker)
    wait_for(lambda: server.statuses(LOCKER), what="birth")
    server.send_command(LOCKER, b"open.the.door", correlation_data=b"c")
    wait_for(lambda: rec.of(CommandMessage), what="command delivered")
    if committed:
        first.command_done(rec.of(CommandMessage)[0].receipt)
    # A clean close flushes what was queued before it (the PUBACK, if any); the session and
    # its unacknowledged messages are kept either way, as after a crash.
    first.close(clean=True)
    _second, rec2 = harness.start(broker)
    wait_for(connected(rec2), what="second link connected")
    if committed:
        never_within(lambda: rec2.of(CommandMessage), 2.0, "redelivery of a committed command")
    else:
        wait_for(lambda: rec2.of(CommandMessage), what="uncommitted command redelivered")
        assert rec2.of(CommandMessage)[0].payload == b"open.the.door"


# --- events ---------------------------------------------------------------------------------


def test_events_go_out_in_order_qos1_not_retained_and_acks_empty_the_outbox(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    outbox.add(30, "door_opened")
    lk, rec = harness.start(broker)
    outbox.add(20, "door_closed")
    lk.outbox_changed()
    wait_for(lambda: outbox.depth() == 0, what="outbox emptied by acks")
    events = server.messages(lambda m: "/evt/" in m.topic)
    assert [m.json()["seq"] for m in events] == list(range(1, 51))
    assert {m.topic for m in events} == {f"{P}/evt/door_opened", f"{P}/evt/door_closed"}
    assert not any(m.retain for m in events)
    check_contract(events)
    assert rec.of(ServerAck)[-1] == ServerAck(50, outbox.epoch)  # the server acks by epoch
    assert not rec.of(EventsDelivered)  # with require_server_ack, PUBACK is not delivery
    assert lk.counters.published == 50 and lk.counters.acked == 50 and lk.counters.resent == 0


def test_without_server_ack_a_puback_is_delivery(
    broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    outbox.add(40)
    lk, rec = harness.start(broker, require_server_ack=False)
    wait_for(lambda: outbox.depth() == 0, what="outbox emptied by PUBACKs")
    delivered = sorted(s for e in rec.of(EventsDelivered) for s in e.seqs)
    assert delivered == list(range(1, 41))
    assert lk.counters.acked == 40


def test_unacked_events_are_resent_after_reconnect_and_not_after_ack(
    broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    with ServerClient(broker, auto_ack=False) as server:
        outbox.add(10)
        lk, rec = harness.start(broker)
        wait_for(lambda: server.unique_seqs(LOCKER) == set(range(1, 11)), what="first pass")
        broker.restart()
        wait_for(connected(rec, 2), what="reconnect")
        wait_for(lambda: len(server.events(LOCKER)) >= 20, what="re-sent after reconnect")
        assert lk.counters.resent >= 10
        assert outbox.depth() == 10  # PUBACKs did not delete anything

        server.ack(LOCKER, 10)
        wait_for(lambda: outbox.depth() == 0, what="ack applied")
        assert rec.of(ServerAck)[-1] == ServerAck(10)
        count = len(server.events(LOCKER))
        broker.restart()
        wait_for(connected(rec, 3), what="second reconnect")
        outbox.add(1)  # seq 11; any re-send of 1..10 would come before it
        lk.outbox_changed()
        wait_for(lambda: 11 in server.unique_seqs(LOCKER), what="new event")
        assert [e["seq"] for e in server.events(LOCKER)[count:]] == [11]


def test_an_invalid_ack_deletes_nothing_and_the_stream_goes_on(
    broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    """Issue 11 item 20: an ack above last_seq used to stop the stream (0 of 10 new events
    sent until a restart)."""
    with ServerClient(broker, auto_ack=False) as server:
        outbox.add(3)
        lk, _rec = harness.start(broker)
        wait_for(lambda: server.unique_seqs(LOCKER) == {1, 2, 3}, what="first events")
        server.ack(LOCKER, 1000)  # above last_seq (a server from before epochs)
        other = {"v": 1, "epoch": "0b6f3c2e-8a1d-4c57-9a43-5d7f0f1e2a10", "upto_seq": 2}
        server.publish(f"{P}/ack", json.dumps(other))
        wait_for(lambda: lk.counters.invalid_acks == 2, what="both acks refused")
        assert outbox.depth() == 3 and lk.counters.server_acks == 0
        outbox.add(10)
        lk.outbox_changed()
        wait_for(lambda: server.unique_seqs(LOCKER) == set(range(1, 14)), what="10 new events")
        server.publish(f"{P}/ack", json.dumps({"v": 1, "epoch": outbox.epoch, "upto_seq": 13}))
        wait_for(lambda: outbox.depth() == 0, what="a valid ack applied")


def test_resync_republishes_status_state_and_unacked_events(
    broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    with ServerClient(broker, auto_ack=False) as server:
        outbox.add(3)
        lk, _rec = harness.start(broker)
        lk.publish_state(state(1))
        wait_for(lambda: len(server.events(LOCKER)) == 3 and server.messages(f"{P}/state"))
        # The server can hold an event before its PUBACK reaches the link; resync re-sends
        # what is confirmed-but-unacked, not what is still in flight, so wait for the PUBACKs.
        wait_for(lambda: lk.counters.pubacked >= 3, what="PUBACKs of the first pass")
        lk.resync()
        wait_for(lambda: len(server.events(LOCKER)) == 6, what="events re-sent")
        assert [e["seq"] for e in server.events(LOCKER)] == [1, 2, 3, 1, 2, 3]
        wait_for(lambda: len(server.statuses(LOCKER)) == 2, what="birth again")
        wait_for(lambda: len(server.messages(f"{P}/state")) == 2, what="state again")


def test_events_are_resent_when_the_ack_times_out(
    broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    with ServerClient(broker, auto_ack=False) as server:
        outbox.add(5)
        lk, rec = harness.start(broker, ack_timeout_s=0.5)
        wait_for(lambda: len(server.events(LOCKER)) >= 10, what="re-send after ack timeout")
        assert [e["seq"] for e in server.events(LOCKER)[:10]] == [1, 2, 3, 4, 5] * 2
        assert len(rec.of(LinkChanged)) == 1  # no reconnect was involved
        server.ack(LOCKER, 5)
        wait_for(lambda: outbox.depth() == 0)
        assert lk.counters.resent >= 5


def test_ack_window_bounds_what_is_sent_beyond_the_last_ack(
    broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    with ServerClient(broker, auto_ack=False) as server:
        outbox.add(100)
        lk, _rec = harness.start(broker, ack_window=30)
        wait_for(lambda: len(server.unique_seqs(LOCKER)) == 30, what="one window")
        never_within(lambda: len(server.unique_seqs(LOCKER)) > 30, 0.5, "sent past the window")
        server.ack(LOCKER, 30)
        wait_for(lambda: len(server.unique_seqs(LOCKER)) == 60, what="the next window")
        assert lk.counters.published == 60


def test_a_refusing_broker_is_one_outage_not_a_storm(
    tls_broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ACL lets a locker write only under lockers/<its CN>/: MQTT 5 answers 0x87 to a
    wrong topic_prefix (or a locker.id that is not the CN). Reported: every refusal was a
    PublishRefused, hence a hardware_fault event, itself refused (500 events a second). Now:
    one PublishRefused per outage, at most one window refused, no re-send loop, one ERROR
    line; once the broker's ACL accepts the prefix (SIGHUP reloads it), one PublishAccepted
    and the kept rows are delivered."""
    outbox.add(50)
    caplog.set_level(logging.DEBUG, logger="locker.cabinet.link")
    lk, rec = harness.start(
        tls_broker, topic_prefix="elsewhere", max_inflight=5, require_server_ack=False
    )
    wait_for(lambda: rec.of(PublishRefused), what="the refusal")
    refused = rec.of(PublishRefused)[0]
    assert "authori" in refused.reason.lower() and refused.topic.startswith("elsewhere/")
    # Probes every 0.05-0.5 s (reconnect_min_s/max_s of make_link): ~10 in 2 s, not 500.
    never_within(lambda: len(rec.of(PublishRefused)) > 1, 2.0, "a second PublishRefused")
    assert lk.counters.refused <= 5 + 40, lk.counters  # the first window, then probes
    assert lk.counters.pubacked == 0 and outbox.depth() == 50
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "locker.id" in errors[0].getMessage(), errors

    acl = tls_broker.dir / "acl"
    acl.write_text(acl.read_text() + "pattern write elsewhere/%u/#\n")
    assert tls_broker.proc is not None
    tls_broker.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL file
    wait_for(lambda: outbox.depth() == 0, timeout=10, what="kept rows delivered")
    accepted = rec.of(PublishAccepted)
    assert len(accepted) == 1 and accepted[0].refusals >= 1
    assert len(rec.of(PublishRefused)) == 1


# --- broker faults --------------------------------------------------------------------------


def test_broker_sigterm_restart_mid_burst_loses_nothing(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    outbox.add(3000)
    _lk, rec = harness.start(broker)
    wait_for(lambda: len(server.unique_seqs(LOCKER)) >= 300, what="burst under way")
    broker.restart(signal.SIGTERM)
    wait_for(lambda: server.has_all(LOCKER, 3000), timeout=40, what="every event")
    wait_for(lambda: outbox.depth() == 0, what="all acked")
    assert server.unique_seqs(LOCKER) == set(range(1, 3001))
    assert sum(1 for e in rec.of(LinkChanged) if not e.connected) == 1


def test_broker_sigkill_after_pubacks_is_covered_by_the_server_ack(
    broker: Broker,  # noqa: F811
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    # The server's session exists but it is offline: the broker holds the events in memory.
    offline_server = ServerClient(broker)
    offline_server.start()
    offline_server.stop()
    outbox.add(300)
    lk, _rec = harness.start(broker)
    wait_for(lambda: lk.counters.pubacked == 300, what="every event PUBACKed by the broker")
    broker.kill()
    broker.start()
    with ServerClient(broker) as server:
        wait_for(lambda: server.has_all(LOCKER, 300), timeout=30, what="every event")
        wait_for(lambda: outbox.depth() == 0, what="acked")
    assert lk.counters.resent >= 1


def test_broker_hang_longer_than_twice_the_keepalive(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    lk, rec = harness.start(broker, keepalive_s=1, connect_timeout_s=1.0)
    wait_for(connected(rec), what="up")
    broker.pause()
    stopped = time.monotonic()
    outbox.add(5)
    lk.outbox_changed()
    wait_for(lambda: not lk.connected, timeout=6, what="hang detected by keepalive")
    assert time.monotonic() - stopped <= 2 * 1 + 1.5
    broker.resume()
    wait_for(connected(rec, 2), timeout=15, what="reconnect after the hang")
    wait_for(lambda: server.has_all(LOCKER, 5), timeout=15, what="events made during the hang")


def test_watchdog_rebuilds_the_client_after_an_internal_failure(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = harness.outbox
    real_read = outbox.read
    calls = {"n": 0}

    def flaky_read(after_seq: int, limit: int) -> list[OutboxRow]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk I/O error")
        return real_read(after_seq, limit)

    monkeypatch.setattr(outbox, "read", flaky_read)
    lk, rec = harness.start(broker)
    wait_for(connected(rec))
    # the first read comes once the store is compared (events wait for that): the second,
    # for the events added below, is the one that fails
    wait_for(lambda: calls["n"] >= 1, what="the first read of the outbox")
    with caplog.at_level(logging.ERROR, logger="locker.cabinet.link"):
        outbox.add(3)
        lk.outbox_changed()
        wait_for(lambda: server.has_all(LOCKER, 3), what="events after the rebuild")
    assert lk.counters.rebuilds == 1
    assert "rebuilding the client" in caplog.text
    assert lk.healthy()


# --- the first connect: the retained-state check (issue 11 item 21) -------------------------


def test_events_and_state_wait_until_the_store_is_compared(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    outbox: SqliteOutbox,
) -> None:
    """Nothing of the event stream goes out before the controller has compared its store
    with the retained state (``stream_checked``): an event sent first would reuse a seq if
    the store turns out rolled back. An event from memory (a storage fault) goes out after
    the retained state that counts its seq."""
    outbox.add(3)
    rec = LinkRecorder(outbox)
    lk = make_link(broker, outbox)
    rec.attach(lk.outbox_changed)  # no stream_checked: this "controller" never answers yet
    lk.start(rec)
    try:
        lk.publish_state(state(1))
        wait_for(lambda: rec.of(RetainedState), what="the answer about the retained state")
        assert rec.of(RetainedState) == [RetainedState(None, None)]  # none on a new broker
        wait_for(lambda: server.statuses(LOCKER), what="birth")
        fault = {**json.loads(outbox.read(0, 1)[0].payload), "seq": 4, "type": "storage_fault"}
        lk.publish_unstored(OutboxRow(4, "storage_fault", json.dumps(fault).encode()))

        def stream() -> list[Received]:
            return server.messages(lambda m: m.topic.endswith("/state") or "/evt/" in m.topic)

        never_within(stream, 1.0, what="an event or the state before the comparison")
        lk.stream_checked()
        wait_for(lambda: len(stream()) >= 5, what="state and four events")
        topics = [m.topic.removeprefix(f"{P}/") for m in stream()]
        assert topics.index("state") < topics.index("evt/storage_fault")
        assert sorted(m.json()["seq"] for m in stream() if "/evt/" in m.topic) == [1, 2, 3, 4]
        assert all(m.retain for m in server.messages(f"{P}/state"))
    finally:
        lk.close(clean=False)
        rec.close()


def test_commands_wait_for_an_answer_about_the_retained_state(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No answer in time (here: the first connection never gets its UNSUBACK) releases no
    command unchecked: the connection is dropped, the broker delivers the command again on
    the next one, and it reaches the controller once, after the comparison."""
    monkeypatch.setattr(link_mod, "STATE_CHECK_S", 1.5)
    real = MqttLink._state_check_unsubscribe
    asked: list[int] = []

    def first_one_unanswered(self: MqttLink) -> None:
        asked.append(1)
        if len(asked) > 1:
            real(self)

    monkeypatch.setattr(MqttLink, "_state_check_unsubscribe", first_one_unanswered)
    caplog.set_level(logging.WARNING, logger=link_mod.__name__)
    _lk, rec = harness.start(broker)
    wait_for(lambda: server.statuses(LOCKER), what="birth (subscriptions are made before it)")
    server.send_command(LOCKER, b"a.b.c", correlation_data=b"k-held")
    wait_for(lambda: rec.of(RetainedState), timeout=10, what="the answer, on a new connection")
    assert "no answer about our own retained state" in caplog.text
    assert sum(1 for e in rec.of(LinkChanged) if e.connected) >= 2
    wait_for(lambda: rec.of(CommandMessage), what="the command, delivered again")
    never_within(lambda: len(rec.of(CommandMessage)) > 1, 0.5, what="the command twice")
    order = [type(e) for e in rec.events]
    assert order.index(RetainedState) < order.index(CommandMessage)
    assert rec.of(CommandMessage)[0].correlation_data == b"k-held"


def test_a_window_of_events_leaves_in_few_send_calls(
    broker: Broker,  # noqa: F811
    server: ServerClient,
    harness: Harness,
    outbox: SqliteOutbox,
) -> None:
    """Issue 10: paho sends every packet with its own send(); the link gathers what one turn
    publishes (_GatheringClient), in paho's order."""
    outbox.add(400)
    lk, _rec = harness.start(broker)
    wait_for(lambda: outbox.depth() == 0, what="outbox emptied by acks")
    client = lk._client
    assert client is not None and lk.counters.connects == 1
    seqs = [m.json()["seq"] for m in server.messages(lambda m: "/evt/" in m.topic)]
    assert seqs == list(range(1, 401))
    # One send() per packet: one per event, one PUBACK per server ack (QoS 1), and the
    # subscriptions. How many acks come between events depends on the machine's load (a fresh
    # clone's CI saw 188 acks and 203 sends, once), so the bound counts them.
    packets = lk.counters.published + lk.counters.server_acks
    assert client.sends < packets / 2, (client.sends, packets)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"epoch":"e1","last_seq":7}', ("e1", 7)),
        (b'{"epoch":"e1","last_seq":9223372036854775807}', ("e1", 2**63 - 1)),
        # beyond what any store can hold: no locker published it, so it is no evidence
        (b'{"epoch":"e1","last_seq":99999999999999999999999}', ("e1", None)),
        (b'{"epoch":"e1","last_seq":-1}', ("e1", None)),
        (b'{"epoch":"e1","last_seq":true}', ("e1", None)),
        (b"not json", (None, None)),
    ],
)
def test_parse_state_stream_keeps_to_the_contract(
    payload: bytes, expected: tuple[str | None, int | None]
) -> None:
    assert parse_state_stream(payload) == expected
