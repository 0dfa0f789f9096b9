"""locker.contract.commands: every rejection code of DESIGN section 5, and every action accepted."""

from __future__ import annotations

import base64
import json
from typing import Any, get_args

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from locker.contract import commands, jws, replies
from locker.contract.actions import (
    Action,
    AssignArgs,
    CancelArgs,
    Command,
    CommandArgs,
    CommandRejected,
    EmptyArgs,
    ExtendArgs,
    LockdownArgs,
    OpenArgs,
    RejectCode,
    RetrieveArgs,
    SetServiceArgs,
)
from locker.ports import CommandMessage
from tests.contract import validate_payload

LOCKER = "LKR-0001"
NOW = 1_800_000_000
KEY = Ed25519PrivateKey.generate()
KEYS = {"ops1": KEY.public_key()}
RES = f"lockers/{LOCKER}/res"
TAG_A = "a" * 64
TAG_B = "0123456789abcdef" * 4

VALID_ARGS: dict[str, dict[str, Any]] = {
    "assign": {
        "parcel": "P-1",
        "kind": "delivery",
        "size": "M",
        "dropoff_tag": TAG_A,
        "pickup_tag": TAG_B,
        "compartment": "A1",
        "dropoff_until": NOW + 3600,
        "pickup_hours": 72,
    },
    "cancel": {"parcel": "P-1"},
    "extend": {"parcel": "P-1", "pickup_until": NOW + 86400},
    "retrieve": {"parcel": "P-1", "code_tag": TAG_A, "valid_until": NOW + 86400},
    "open": {"compartment": "A1", "reason": "customer called"},
    "set_service": {"compartment": "A1", "in_service": False, "reason": "broken hinge"},
    "lockdown": {"on": True},
    "reset_lockout": {},
    "resync": {},
}
EXPECTED_ARGS: dict[str, CommandArgs] = {
    "assign": AssignArgs("P-1", "delivery", "M", TAG_A, TAG_B, "A1", NOW + 3600, 72),
    "cancel": CancelArgs("P-1"),
    "extend": ExtendArgs("P-1", NOW + 86400),
    "retrieve": RetrieveArgs("P-1", TAG_A, NOW + 86400),
    "open": OpenArgs("A1", "customer called"),
    "set_service": SetServiceArgs("A1", False, "broken hinge"),
    "lockdown": LockdownArgs(True),
    "reset_lockout": EmptyArgs(),
    "resync": EmptyArgs(),
}


def claims(act: str = "cancel", **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "aud": LOCKER,
        "jti": "cmd-0001-abcdef",
        "iat": NOW - 5,
        "exp": NOW + 60,
        "act": act,
        "args": VALID_ARGS.get(act, {}) if isinstance(act, str) else {},
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not DROP}


DROP = object()
REJECT_CODES = set(get_args(RejectCode))


def token(
    act: str = "cancel", key: Ed25519PrivateKey = KEY, kid: str = "ops1", **over: Any
) -> bytes:
    return jws.sign_command(key, kid, claims(act, **over))


def verify(payload: bytes, **over: Any) -> Command:
    kwargs: dict[str, Any] = {
        "locker_id": LOCKER,
        "keys": KEYS,
        "now": NOW,
        "retained": False,
        "response_topic": None,
        "expected_response_topic": RES,
    }
    kwargs.update(over)
    return commands.verify_command(payload, **kwargs)


def rejected(payload: bytes, **over: Any) -> CommandRejected:
    with pytest.raises(CommandRejected) as info:
        verify(payload, **over)
    return info.value


# --- acceptance -----------------------------------------------------------------------------


@pytest.mark.parametrize("act", list(VALID_ARGS))
def test_every_action_is_accepted(act: str) -> None:
    tok = token(act)
    validate_payload("cmd", tok)  # what we sign here is what the contract describes
    cmd = verify(tok, response_topic=RES)
    assert cmd == Command(
        cmd_id="cmd-0001-abcdef",
        action=Action(act),
        args=EXPECTED_ARGS[act],
        iat=NOW - 5,
        exp=NOW + 60,
        kid="ops1",
    )


def test_optional_assign_arguments_may_be_left_out() -> None:
    args = {
        k: VALID_ARGS["assign"][k] for k in ("parcel", "kind", "size", "dropoff_tag", "pickup_tag")
    }
    cmd = verify(token("assign", args=args))
    assert cmd.args == AssignArgs("P-1", "delivery", "M", TAG_A, TAG_B)


def test_missing_args_reads_as_empty_object() -> None:
    assert verify(token("resync", args=DROP)).args == EmptyArgs()
    assert rejected(token("cancel", args=DROP)).code == "invalid_args"


def test_lifetimes_at_the_limits_are_accepted() -> None:
    assert verify(token("open", iat=NOW - 10, exp=NOW - 10 + 120)).action is Action.OPEN
    week = 7 * 24 * 3600
    assert verify(token("assign", iat=NOW - 10, exp=NOW - 10 + week)).action is Action.ASSIGN


def test_small_clock_skew_is_tolerated() -> None:
    assert verify(token(iat=NOW + 30, exp=NOW + 90)).cmd_id == "cmd-0001-abcdef"


# --- the rejections, in the order they are checked ------------------------------------------


def test_oversized_payload_rejected_before_any_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(*args: object) -> None:
        raise AssertionError("parsed an oversized payload")

    monkeypatch.setattr(jws, "verify_compact", must_not_parse)
    rej = rejected(b"x" * 10_000_000)
    assert (rej.code, rej.cmd_id) == ("too_large", None)
    assert rejected(b"A" * 4097).code == "too_large"
    assert rejected(b"A" * 101, max_bytes=100).code == "too_large"


def test_retained_command_rejected_even_when_valid() -> None:
    rej = rejected(token("open"), retained=True)
    assert (rej.code, rej.cmd_id) == ("retained", None)


@pytest.mark.parametrize("topic", ["lockers/LKR-0002/res", "lockers/LKR-0001/evt/x", "", "x"])
def test_response_topic_pointing_elsewhere(topic: str) -> None:
    assert rejected(token(), response_topic=topic).code == "bad_response_topic"


@pytest.mark.parametrize(
    "payload",
    [b"", b"{}", b'{"act":"open"}', b"not.a.jws", b"a.b.c", b"\x00\x01\x02", "é".encode()],
)
def test_malformed(payload: bytes) -> None:
    rej = rejected(payload)
    assert (rej.code, rej.cmd_id) == ("malformed", None)


def _forge(header: dict[str, Any], body: bytes) -> bytes:
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(body)
    return signing_input + b"." + b64(KEY.sign(signing_input))


def test_signed_malformed_json_is_malformed() -> None:
    rej = rejected(_forge({"alg": "EdDSA", "kid": "ops1"}, b'{"aud": "LKR-0001",'))
    assert rej.code == "malformed"


def test_alg_none_and_hs256_confusion() -> None:
    none = base64.urlsafe_b64encode(b'{"alg":"none","kid":"ops1"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims("open")).encode()).rstrip(b"=")
    assert rejected(none + b"." + body + b".").code == "malformed"

    secret = KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    hs = jwt.encode(claims("open"), secret, algorithm="HS256", headers={"kid": "ops1"})
    assert rejected(hs.encode()).code == "malformed"


def test_unknown_kid() -> None:
    rej = rejected(token(kid="ops9"))
    assert (rej.code, rej.cmd_id) == ("unknown_kid", None)


def test_bad_signature() -> None:
    rej = rejected(token(key=Ed25519PrivateKey.generate()))
    assert (rej.code, rej.cmd_id) == ("bad_signature", None)


def test_tampered_claims_fail_the_signature() -> None:
    header, _payload, sig = token("open").split(b".")
    evil = claims("open", args={"compartment": "B7", "reason": "x"})
    body = base64.urlsafe_b64encode(json.dumps(evil).encode()).rstrip(b"=")
    assert rejected(header + b"." + body + b"." + sig).code == "bad_signature"


@pytest.mark.parametrize("aud", ["LKR-0002", "", None, ["LKR-0001"], DROP])
def test_wrong_audience(aud: object) -> None:
    rej = rejected(token(aud=aud))
    assert (rej.code, rej.cmd_id) == ("wrong_audience", "cmd-0001-abcdef")


@pytest.mark.parametrize(
    "over",
    [
        {"iat": "1800000000"},
        {"iat": 1.8e9},
        {"iat": True},
        {"iat": DROP},
        {"exp": None},
        {"exp": -1},
        {"exp": 2**40},
        {"exp": NOW - 100, "iat": NOW - 50},  # exp before iat (and expired: expired wins)
    ],
)
def test_time_claims_must_be_integers(over: dict[str, Any]) -> None:
    code = rejected(token(**over)).code
    assert code == ("expired" if over.get("exp") == NOW - 100 else "malformed")


def test_exp_not_after_iat_is_malformed() -> None:
    assert rejected(token(iat=NOW + 20, exp=NOW + 10)).code == "malformed"


def test_expired() -> None:
    rej = rejected(token(iat=NOW - 100, exp=NOW))
    assert (rej.code, rej.cmd_id) == ("expired", "cmd-0001-abcdef")
    reply = replies.rejection_reply(rej, ts=NOW)
    assert reply["status"] == "expired"
    validate_payload("res", reply)


def test_not_yet_valid() -> None:
    assert rejected(token(iat=NOW + 61, exp=NOW + 100)).code == "not_yet_valid"
    assert rejected(token(nbf=NOW + 100, exp=NOW + 200)).code == "not_yet_valid"


@pytest.mark.parametrize("act", ["open", "lockdown"])
def test_short_lived_actions_lifetime(act: str) -> None:
    rej = rejected(token(act, iat=NOW - 1, exp=NOW - 1 + 121))
    assert (rej.code, rej.cmd_id) == ("lifetime_too_long", "cmd-0001-abcdef")


@pytest.mark.parametrize(
    "act", ["assign", "cancel", "extend", "retrieve", "set_service", "reset_lockout", "resync"]
)
def test_long_lived_actions_lifetime(act: str) -> None:
    assert verify(token(act, iat=NOW - 1, exp=NOW + 3600)).action == Action(act)
    week = 7 * 24 * 3600
    assert rejected(token(act, iat=NOW - 1, exp=NOW + week)).code == "lifetime_too_long"


@pytest.mark.parametrize(
    "jti", ["short", "", 12345678, None, "x" * 129, "has space 1234", DROP, "tab\there12345"]
)
def test_bad_jti_is_malformed_without_cmd_id(jti: object) -> None:
    rej = rejected(token(jti=jti))
    assert (rej.code, rej.cmd_id) == ("malformed", None)


@pytest.mark.parametrize("act", ["open_all", "", "OPEN", 3, None, DROP, ["open"], {"a": 1}])
def test_unknown_action(act: object) -> None:
    rej = rejected(token(act=act))  # type: ignore[arg-type]
    assert (rej.code, rej.cmd_id) == ("unknown_action", "cmd-0001-abcdef")


BAD_ARGS: list[tuple[str, dict[str, Any], str]] = [
    ("assign", {"size": "XXL"}, "size"),
    ("assign", {"kind": "gift"}, "kind"),
    ("assign", {"dropoff_tag": "A" * 64}, "dropoff_tag"),  # upper-case hex
    ("assign", {"pickup_tag": "a" * 63}, "pickup_tag"),
    ("assign", {"pickup_tag": "g" * 64}, "pickup_tag"),
    ("assign", {"pickup_hours": "72"}, "pickup_hours"),
    ("assign", {"pickup_hours": 0}, "pickup_hours"),
    ("assign", {"pickup_hours": 72.0}, "pickup_hours"),
    ("assign", {"dropoff_until": -5}, "dropoff_until"),
    ("assign", {"parcel": ""}, "parcel"),
    ("assign", {"parcel": 17}, "parcel"),
    ("assign", {"parcel": "P\n1"}, "parcel"),
    ("assign", {"compartment": "x" * 65}, "compartment"),
    ("assign", {"colour": "red"}, "colour"),
    ("cancel", {"parcel": None}, "parcel"),
    ("extend", {"pickup_until": "tomorrow"}, "pickup_until"),
    ("extend", {"pickup_until": True}, "pickup_until"),
    ("retrieve", {"code_tag": None}, "code_tag"),
    ("retrieve", {"valid_until": 1.5}, "valid_until"),
    ("open", {"compartment": ["A1", "A2"]}, "compartment"),
    ("open", {"reason": "r" * 201}, "reason"),
    ("open", {"all": True}, "all"),
    ("set_service", {"in_service": 1}, "in_service"),
    ("set_service", {"in_service": "false"}, "in_service"),
    ("lockdown", {"on": "yes"}, "on"),
    ("lockdown", {"on": 1}, "on"),
    ("reset_lockout", {"force": True}, "force"),
    ("resync", {"full": True}, "full"),
]


@pytest.mark.parametrize(("act", "change", "field"), BAD_ARGS)
def test_invalid_args(act: str, change: dict[str, Any], field: str) -> None:
    args = dict(VALID_ARGS[act]) | change
    rej = rejected(token(act, args=args))
    assert (rej.code, rej.cmd_id) == ("invalid_args", "cmd-0001-abcdef")
    assert field in rej.message
    assert "aaaa" not in rej.message  # tags (hashes of live codes) never echoed


@pytest.mark.parametrize(
    "act", ["assign", "cancel", "extend", "retrieve", "open", "set_service", "lockdown"]
)
def test_missing_required_argument(act: str) -> None:
    args = dict(VALID_ARGS[act])
    required = next(k for k in args if k not in ("compartment", "dropoff_until", "pickup_hours"))
    del args[required]
    rej = rejected(token(act, args=args))
    assert rej.code == "invalid_args"
    assert required in rej.message


def test_args_must_be_an_object() -> None:
    assert rejected(token("resync", args=[])).code == "invalid_args"
    assert rejected(token("open", args="A1")).code == "invalid_args"


def test_checks_run_in_contract_order() -> None:
    """A payload wrong in every way gets the first failing check's code."""
    bad = token("open", key=Ed25519PrivateKey.generate(), aud="other", exp=NOW - 1)
    assert rejected(bad, retained=True, response_topic="x").code == "retained"
    assert rejected(bad, response_topic="x").code == "bad_response_topic"
    assert rejected(bad).code == "bad_signature"
    assert rejected(token("open", aud="other", exp=NOW - 1)).code == "wrong_audience"
    assert rejected(token("nope", exp=NOW - 1)).code == "expired"


# --- replies --------------------------------------------------------------------------------


def test_reply_payloads_follow_the_contract() -> None:
    done = replies.reply_payload("cmd-1", "done", result={"compartment": "A1"}, ts=NOW + 0.25)
    assert done == {
        "v": 1,
        "cmd_id": "cmd-1",
        "status": "done",
        "result": {"compartment": "A1"},
        "ts": "2027-01-15T08:00:00.250Z",
    }
    failed = replies.reply_payload("cmd-1", "rejected", ("no_compartment", "all full"), ts=NOW)
    assert failed["error"] == {"code": "no_compartment", "message": "all full"}
    unknown = replies.rejection_reply(rejected(b"garbage"), ts=NOW)
    assert (unknown["cmd_id"], unknown["status"]) == (None, "rejected")
    for reply in (done, failed, unknown):
        validate_payload("res", reply)


# --- nothing but a verdict, whatever arrives ------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
claim_values = st.fixed_dictionaries(
    {},
    optional={
        "aud": st.just(LOCKER) | json_values,
        "jti": st.just("cmd-0001-abcdef") | json_values,
        "iat": st.integers(NOW - 200, NOW + 100) | json_values,
        "exp": st.integers(NOW - 100, NOW + 10**6) | json_values,
        "act": st.sampled_from([a.value for a in Action]) | json_values,
        "args": st.sampled_from(list(VALID_ARGS.values())) | json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(claim_values)
def test_any_signed_claims_get_a_verdict(doc: dict[str, Any]) -> None:
    try:
        cmd = verify(jws.sign_command(KEY, "ops1", doc))
    except CommandRejected as rej:
        assert rej.code in REJECT_CODES
        assert rej.cmd_id in (None, doc.get("jti"))
    else:
        assert cmd.cmd_id == doc["jti"] and doc["aud"] == LOCKER


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_get_a_verdict(payload: bytes) -> None:
    with pytest.raises(CommandRejected) as info:
        verify(payload)
    assert info.value.code in ("malformed", "unknown_kid", "bad_signature")


def test_command_verifier_reads_the_message_fields() -> None:
    verify_msg = commands.command_verifier(LOCKER, KEYS)
    good = CommandMessage(token("open"), retained=False, response_topic=RES, correlation_data=b"c")
    assert verify_msg(good, NOW).action is Action.OPEN
    with pytest.raises(CommandRejected) as info:
        verify_msg(CommandMessage(token("open"), retained=True), NOW)
    assert info.value.code == "retained"
    with pytest.raises(CommandRejected) as info:
        verify_msg(CommandMessage(token("open"), response_topic="lockers/x/res"), NOW)
    assert info.value.code == "bad_response_topic"
    with pytest.raises(CommandRejected) as info:
        verify_msg(CommandMessage(token("open")), NOW + 61)
    assert info.value.code == "expired"
