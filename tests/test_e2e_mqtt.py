"""The whole daemon against a real Mosquitto: the MQTT contract and signed commands.

The real ``lockerd`` runs as a child process (``SimCabinet``: mock pins with a simulated
person at the GPIO doors, ptys for keypad and scanner, a KR-CU16 board emulator), and a test
server (``ServerClient``) stands where the fleet backend would: it subscribes with
retain-as-published, acks events by contiguous seq and sends commands with MQTT 5
ResponseTopic and CorrelationData.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardware.boards.kerong import CMD_UNLOCK
from locker.contract.credentials import TokenAction
from locker.sim.broker import Broker
from locker.sim.cabinet import COMMAND_KID, SimCabinet
from tests.broker import ServerClient, tls_broker  # noqa: F401 - fixture
from tests.conftest import wait_for
from tests.contract import validate_payload, validate_topic_message
from tests.e2e import (
    Cabinets,
    all_delivered,
    assert_exactly_once,
    cabinets,  # noqa: F401 - fixture
    command,
    db_last_seq,
    event_types,
    failure_context,
    replies,
    signed,
    start_online,
    unique_events,
    wait_event,
)

pytestmark = pytest.mark.broker

LOCKER = "SIM-0001"
P = f"lockers/{LOCKER}"
OTHER = "SIM-0002"

# --- 1. the contract, over mutual TLS ---------------------------------------------------------

FLOW = [
    "started",
    "parcel_reserved",
    "access_granted",  # the courier's drop-off code
    "door_opened",
    "door_closed",
    "parcel_deposited",
    "access_denied",  # a wrong code
    "access_granted",  # the customer's pickup QR
    "door_opened",
    "door_closed",
    "parcel_collected",
    "remote_open",
    "door_opened",
    "door_closed",
    "lockdown_changed",
    "lockdown_changed",
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("target", "expected"), [(None, "A1"), ("B1", "B1")], ids=["gpio", "board"]
)
def test_full_flow_every_message_follows_the_contract(
    tls_broker: Broker,  # noqa: F811
    cabinets: Cabinets,  # noqa: F811
    target: str | None,
    expected: str,
) -> None:
    srv = ServerClient(tls_broker)
    srv.start()
    try:
        cab = cabinets.make(tls_broker)
        start_online(srv, cab)
        _run_flow(srv, cab, target, expected)
        wait_for(lambda: all_delivered(srv, cab), 15, what="every event acked")
        held = assert_exactly_once(srv, cab)
        assert [held[s]["type"] for s in sorted(held)] == FLOW, failure_context(cab)
        assert {held[s].get("compartment") for s in sorted(held)[1:]} - {None} == {expected}
        cab.stop()
        wait_for(lambda: not srv.statuses(LOCKER)[-1]["online"], 5, what="offline on stop")
        _check_every_message(srv, cab)
    finally:
        srv.stop()


def _run_flow(srv: ServerClient, cab: SimCabinet, target: str | None, expected: str) -> None:
    res = f"{P}/res"
    wait_event(srv, cab, "started")
    code, tag = cab.new_code()
    _pickup_code, pickup_tag = cab.new_code()
    args: dict[str, Any] = {
        "parcel": "PCL-1",
        "kind": "delivery",
        "size": "S",
        "dropoff_tag": tag,
        "pickup_tag": pickup_tag,
    }
    if target is not None:
        args["compartment"] = target
    token, jti = signed(cab, "assign", args)
    reply = command(srv, cab, token, b"corr-assign", response_topic=res)
    assert (reply["status"], reply["cmd_id"], reply["result"]) == (
        "done",
        jti,
        {"compartment": expected},
    )
    cab.press(code + "#")
    wait_event(srv, cab, "parcel_deposited")
    cab.press(cab.new_code()[0] + "#")
    wait_event(srv, cab, "access_denied")
    cab.scan(cab.token("PCL-1", TokenAction.PICKUP))
    wait_event(srv, cab, "parcel_collected")
    for corr, act, cmd_args in (
        (b"corr-open", "open", {"compartment": expected, "reason": "e2e"}),
        (b"corr-lock-on", "lockdown", {"on": True}),
        (b"corr-lock-off", "lockdown", {"on": False}),
    ):
        token, jti = signed(cab, act, cmd_args)
        reply = command(srv, cab, token, corr, response_topic=res)
        assert (reply["status"], reply["cmd_id"]) == ("done", jti), reply
        if act == "open":
            wait_event(srv, cab, "door_closed", 3)
    wait_event(srv, cab, "lockdown_changed", 2)


def _check_every_message(srv: ServerClient, cab: SimCabinet) -> None:
    seen: dict[str, int] = {}
    for m in srv.received:
        info = validate_topic_message(m.topic, m.payload, m.retain, m.qos)
        assert info.locker_id == LOCKER, m.topic
        seen[info.channel] = seen.get(info.channel, 0) + 1
    assert seen.keys() == {"status", "state", "evt", "res"}, seen
    assert seen["res"] == 4
    statuses = srv.statuses(LOCKER)
    validate_payload("status_online", statuses[0])
    validate_payload("status_offline", statuses[-1])
    assert statuses[-1]["boot_id"] == statuses[0]["boot_id"]
    assert "ts" in statuses[-1], "a clean stop publishes offline itself (the will has no ts)"
    states = [m.json() for m in srv.messages(f"{P}/state")]
    revs = [s["rev"] for s in states]
    assert revs == sorted(revs), "state rev went back"
    by_rev: dict[int, dict[str, Any]] = {}
    for st in states:
        body = {k: v for k, v in st.items() if k != "ts"}
        assert by_rev.setdefault(st["rev"], body) == body, "one rev, two different snapshots"
    final = states[-1]
    # The last snapshot is the stopping one: its "stopping" event waits for the next start.
    assert (final["lockdown"], final["outbox_depth"]) == (False, 1)
    assert final["last_seq"] == db_last_seq(cab) == len(FLOW) + 1
    assert all(c["parcel"] is None for c in final["compartments"])
    corrs = [corr for _doc, corr in replies(srv, LOCKER)]
    assert corrs == [b"corr-assign", b"corr-open", b"corr-lock-on", b"corr-lock-off"], corrs


# --- 2. every rejection, through the daemon ---------------------------------------------------


@dataclass
class Rig:
    broker: Broker
    srv: ServerClient
    cab: SimCabinet


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One broker, server and daemon for the rejection cases (they change nothing)."""
    root = tmp_path_factory.mktemp("rejections")
    broker = Broker(root / "broker")
    broker.start()
    srv = ServerClient(broker)
    cab = SimCabinet(root / "cab", broker=broker)
    try:
        srv.start()
        start_online(srv, cab)
        yield Rig(broker, srv, cab)
    finally:
        srv.stop()
        cab.close()
        broker.stop()


OPEN_B1 = {"compartment": "B1", "reason": "test"}
Case = Callable[[SimCabinet], tuple[bytes, str | None]]


def _tampered(cab: SimCabinet) -> tuple[bytes, str | None]:
    token, _ = signed(cab, "open", OPEN_B1)
    head, body, sig = token.split(b".")
    flipped = sig[:20] + (b"A" if sig[20:21] != b"A" else b"B") + sig[21:]
    return b".".join((head, body, flipped)), None


def _foreign_key(cab: SimCabinet) -> tuple[bytes, str | None]:
    token, _ = signed(cab, "open", OPEN_B1, key=Ed25519PrivateKey.generate())
    return token, None


def _unknown_kid(cab: SimCabinet) -> tuple[bytes, str | None]:
    token, _ = signed(cab, "open", OPEN_B1, key=Ed25519PrivateKey.generate(), kid="stranger")
    return token, None


def _not_json(cab: SimCabinet) -> tuple[bytes, str | None]:
    token = jwt.api_jws.PyJWS().encode(
        b'{"act":"open",', cab.command_key, algorithm="EdDSA", headers={"kid": COMMAND_KID}
    )
    return token.encode(), None


def _oversized(cab: SimCabinet) -> tuple[bytes, str | None]:
    token, _ = signed(cab, "open", {"compartment": "B1", "reason": "x" * 5000})
    return token, None


def _claims(act: str = "open", args: dict[str, Any] = OPEN_B1, **claims: Any) -> Case:
    """A maker of a validly signed command with these claims (``iat``/``exp`` relative to now)."""

    def make(cab: SimCabinet) -> tuple[bytes, str | None]:
        now = int(time.time())
        fixed = {k: now + v if k in ("iat", "exp") else v for k, v in claims.items()}
        return signed(cab, act, args, **fixed)

    return make


# (case id, payload maker, ResponseTopic, expected reply status, expected reason code)
REJECTIONS: list[tuple[str, Case, str | None, str, str]] = [
    ("bad_signature", _tampered, None, "rejected", "bad_signature"),
    ("foreign_key", _foreign_key, None, "rejected", "bad_signature"),
    ("unknown_kid", _unknown_kid, None, "rejected", "unknown_kid"),
    ("wrong_audience", _claims(aud=OTHER), None, "rejected", "wrong_audience"),
    ("expired", _claims(iat=-300, exp=-240), None, "expired", "expired"),
    ("lifetime_too_long", _claims(iat=0, exp=300), None, "rejected", "lifetime_too_long"),
    ("oversized", _oversized, None, "rejected", "too_large"),
    ("not_a_jws", lambda cab: (b"not a jws at all", None), None, "rejected", "malformed"),
    ("claims_not_json", _not_json, None, "rejected", "malformed"),
    ("unknown_action", _claims(act="open_all", args={}), None, "rejected", "unknown_action"),
    (
        "bad_arguments",
        _claims(args={"compartment": 1, "reason": "x"}),
        None,
        "rejected",
        "invalid_args",
    ),
    ("unknown_argument", _claims(args={**OPEN_B1, "all": True}), None, "rejected", "invalid_args"),
    (
        "no_compartment",
        _claims(args={"compartment": "Z9", "reason": "x"}),
        None,
        "rejected",
        "invalid_args",
    ),
    # Refused before the signature is looked at, so the (unverified) jti is not echoed.
    (
        "response_elsewhere",
        lambda cab: (signed(cab, "open", OPEN_B1)[0], None),
        f"lockers/{OTHER}/res",
        "rejected",
        "bad_response_topic",
    ),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("make", "response_topic", "status", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in REJECTIONS],
)
def test_rejected_command_replies_with_reason_and_moves_nothing(
    rig: Rig, make: Case, response_topic: str | None, status: str, code: str
) -> None:
    srv, cab = rig.srv, rig.cab
    token, jti = make(cab)
    before = event_types(srv, LOCKER).count("command_rejected")
    corr = secrets.token_bytes(8)
    reply = command(srv, cab, token, corr, response_topic=response_topic)
    validate_payload("res", reply)
    assert reply["status"] == status
    assert reply["error"]["code"] == code, reply
    # The id is echoed only once the signature proved it is the server's.
    assert reply["cmd_id"] == jti
    wait_event(srv, cab, "command_rejected", before + 1)
    rejected = [e for e in unique_events(srv, LOCKER).values() if e["type"] == "command_rejected"]
    assert rejected[-1]["data"]["code"] == code
    assert rejected[-1]["data"]["cmd_id"] == jti
    _assert_nothing_opened(rig)
    assert not srv.messages(f"lockers/{OTHER}/res"), "a reply went to a foreign topic"
    for m in srv.received:
        validate_topic_message(m.topic, m.payload, m.retain, m.qos)


def _assert_nothing_opened(rig: Rig) -> None:
    types = event_types(rig.srv, LOCKER)
    assert not {"access_granted", "remote_open", "door_opened"} & set(types), types
    assert rig.cab.emulator is not None
    assert rig.cab.emulator.frames(cmd=CMD_UNLOCK) == [], "an unlock frame reached the board"


@pytest.mark.timeout(60)
def test_retained_command_is_rejected_live_and_on_every_reconnect(
    rig: Rig,
) -> None:
    srv, cab = rig.srv, rig.cab
    token, _ = signed(cab, "open", OPEN_B1)

    def retained_rejections() -> int:
        return sum(
            1 for doc, _ in replies(srv, LOCKER) if doc.get("error", {}).get("code") == "retained"
        )

    reply = command(srv, cab, token, b"retained-1", retain=True)
    assert (reply["status"], reply["error"]["code"], reply["cmd_id"]) == (
        "rejected",
        "retained",
        None,
    )
    # The broker hands the retained message to every new subscription: refused again.
    start_online(srv, cab)
    wait_for(lambda: retained_rejections() >= 2, 10, what="retained command on resubscribe")
    # Clearing it (an empty retained message) reaches the daemon too, flagged retained.
    srv.publish(f"{P}/cmd", b"", retain=True)
    wait_for(lambda: retained_rejections() >= 3, 10, what="the clearing message refused")
    start_online(srv, cab)
    probe, _ = signed(cab, "set_service", {"compartment": "A6", "in_service": True, "reason": "p"})
    # A retained leftover would be delivered on subscribe, so before this probe's reply.
    assert command(srv, cab, probe, b"retained-probe")["status"] == "done"
    assert retained_rejections() == 3
    _assert_nothing_opened(rig)


@pytest.mark.timeout(60)
def test_replayed_jti_is_a_duplicate_with_the_stored_result_even_after_restart(
    tls_broker: Broker,  # noqa: F811
    cabinets: Cabinets,  # noqa: F811
) -> None:
    srv = ServerClient(tls_broker)
    srv.start()
    try:
        cab = cabinets.make(tls_broker)
        start_online(srv, cab)
        assert cab.emulator is not None
        token, jti = signed(cab, "open", OPEN_B1)
        first = command(srv, cab, token, b"replay-0")
        assert (first["status"], first["result"]) == ("done", {"compartment": "B1"})
        wait_event(srv, cab, "door_closed")
        assert len(cab.emulator.frames(cmd=CMD_UNLOCK)) == 1
        again = command(srv, cab, token, b"replay-1")
        assert (again["status"], again["cmd_id"], again["result"]) == (
            "duplicate",
            jti,
            {"compartment": "B1"},
        )
        start_online(srv, cab)
        after = command(srv, cab, token, b"replay-2")
        assert (after["status"], after["result"]) == ("duplicate", {"compartment": "B1"})
        # Same id, different (validly signed) content: still the first command's answer.
        other, _ = signed(cab, "lockdown", {"on": True}, jti=jti)
        assert command(srv, cab, other, b"replay-3")["status"] == "duplicate"
        wait_for(lambda: all_delivered(srv, cab), 15, what="every event acked")
        held = assert_exactly_once(srv, cab)
        types = [e["type"] for e in held.values()]
        assert types.count("remote_open") == 1 and "lockdown_changed" not in types
        assert len(cab.emulator.frames(cmd=CMD_UNLOCK)) == 1, "the replay pulsed the lock"
    finally:
        srv.stop()
