"""The contract documents: AsyncAPI file, JSON Schemas, and the validators in tests/contract.py."""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import locker
from locker.contract import commands, jws, schema
from locker.contract.actions import (
    LONG_LIFETIME_S,
    SHORT_LIFETIME_S,
    SHORT_LIVED_ACTIONS,
    Action,
    arg_fields,
)
from locker.fleet import client as fleet
from locker.fleet.provision import generate_signing_key
from tests import contract

COMMON = contract.schemas()["common"]["$defs"]
EVENT_TYPES: list[str] = COMMON["event_type"]["enum"]
DESIGN_EVENT_TYPES = [
    "started",
    "stopping",
    "parcel_reserved",
    "parcel_deposited",
    "parcel_collected",
    "pickup_expired",
    "parcel_retrieved",
    "assignment_cancelled",
    "deposit_empty",
    "item_left_behind",
    "door_opened",
    "door_closed",
    "door_jammed",
    "door_forced",
    "door_left_open",
    "unlock_outcome_unknown",
    "compartment_out_of_service",
    "compartment_in_service",
    "access_granted",
    "access_denied",
    "keypad_throttled",
    "keypad_locked_out",
    "keypad_unlocked",
    "remote_open",
    "lockdown_changed",
    "hardware_fault",
    "hardware_recovered",
    "command_rejected",
]
TAG = "ab" * 32
EPOCH = "5f0c6a52-3f7e-4d0b-9a51-2b8f1c7d9e04"
TS = "2025-03-01T10:20:30.123Z"


def event(event_type: str = "door_opened", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "epoch": EPOCH,
        "seq": 7,
        "event_id": str(uuid.uuid4()),
        "boot_id": "3f0c9a1e",
        "ts": TS,
        "clock_synced": True,
        "type": event_type,
        "data": {"reason": "unknown_code", "source": "keypad"}
        if event_type == "access_denied"
        else {},
    }
    doc.update(changes)
    return doc


def state(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "epoch": EPOCH,
        "rev": 3,
        "ts": TS,
        "lockdown": False,
        "keypad_locked": False,
        "outbox_depth": 0,
        "last_seq": 41,
        "compartments": [
            {
                "id": "A1",
                "size": "S",
                "state": "free",
                "door": "closed",
                "in_service": True,
                "parcel": None,
            },
            {
                "id": "B1",
                "size": "M",
                "state": "occupied",
                "door": "closed",
                "in_service": True,
                "parcel": "P-1",
            },
        ],
    }
    doc.update(changes)
    return doc


def invalid(kind: str, payload: Any) -> str:
    with pytest.raises(AssertionError) as err:
        contract.validate_payload(kind, payload)
    return str(err.value)


# --- the documents themselves --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(contract.schemas()))
def test_every_schema_is_valid_json_schema_2020_12(name: str) -> None:
    doc = contract.schemas()[name]
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"{contract.BASE_URI}{name}.json"


def test_every_ref_resolves() -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend([node["$ref"]] if isinstance(node.get("$ref"), str) else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name, doc in contract.schemas().items():
        refs.clear()
        walk(doc)
        resolver = contract.registry().resolver(base_uri=doc["$id"])
        for ref in refs:
            assert resolver.lookup(ref).contents is not None, f"{name}: {ref}"


def test_event_types_cover_the_design_list() -> None:
    assert set(DESIGN_EVENT_TYPES) <= set(EVENT_TYPES)
    assert len(set(EVENT_TYPES)) == len(EVENT_TYPES)


def test_every_event_type_emitted_by_the_code_is_in_the_contract() -> None:
    """A new event type must be added to the contract (schema + AsyncAPI), never slip in."""
    source = "\n".join(p.read_text() for p in Path(locker.__file__).parent.rglob("*.py"))
    emitted = set(re.findall(r"""emit\(\s*["']([a-z_]+)["']""", source))
    assert emitted, "no emit() calls found: the pattern is stale"
    assert emitted <= set(EVENT_TYPES), sorted(emitted - set(EVENT_TYPES))


ASYNCAPI = contract.ASYNCAPI_FILE.read_text(encoding="utf-8")


def test_asyncapi_text_references_existing_schemas_and_all_event_types() -> None:
    refs = re.findall(r"\$ref: '\./schemas/([a-z_]+\.json)'", ASYNCAPI)
    assert refs
    for ref in refs:
        assert (contract.SCHEMA_DIR / ref).is_file(), ref
    listed = re.findall(r"^ {10}- ([a-z_]+)$", ASYNCAPI, re.MULTILINE)
    assert listed == EVENT_TYPES


def test_asyncapi_parses_as_yaml_with_the_contract_channels() -> None:
    doc = yaml.safe_load(ASYNCAPI)
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {
        f"lockers/{{lockerId}}/{suffix}"
        for suffix in ("status", "state", "evt/{eventType}", "ack", "cmd", "res")
    }
    assert doc["channels"]["events"]["parameters"]["eventType"]["enum"] == EVENT_TYPES
    ops = doc["operations"]
    for name, retain in (("publishStatus", True), ("publishState", True), ("publishEvent", False)):
        assert ops[name]["bindings"]["mqtt"] == {
            "qos": 1,
            "retain": retain,
            "bindingVersion": "0.2.0",
        }
    assert ops["receiveCommand"]["reply"]["channel"] == {"$ref": "#/channels/results"}
    for message in doc["components"]["messages"].values():
        for example in message.get("examples", []):
            kind = message["name"] if message["name"] != "result" else "res"
            contract.validate_payload(kind, example["payload"])


# --- events --------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_example_event_of_every_type_validates(event_type: str) -> None:
    contract.validate_payload("event", event(event_type))
    contract.validate_payload("event", event(event_type, compartment="A1", parcel="P-1"))
    contract.validate_payload("event", json.dumps(event(event_type)).encode())


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"seq": 0}, "seq"),
        ({"seq": "7"}, "seq"),
        ({"v": 2}, "v"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"epoch": "E1"}, "epoch"),
        ({"ts": "2025-03-01T10:20:30+02:00"}, "ts"),
        ({"ts": "2025-03-01 10:20:30Z"}, "ts"),
        ({"type": "door_exploded"}, "type"),
        ({"clock_synced": "yes"}, "clock_synced"),
        ({"compartment": None}, "compartment"),
        ({"parcel": ""}, "parcel"),
        ({"data": []}, "data"),
        ({"extra": 1}, "(root)"),
    ],
)
def test_bad_events_fail(changes: dict[str, Any], where: str) -> None:
    assert where in invalid("event", event(**changes))


@pytest.mark.parametrize(
    "missing", ["v", "epoch", "seq", "event_id", "boot_id", "ts", "clock_synced", "type", "data"]
)
def test_event_without_a_required_field_fails(missing: str) -> None:
    doc = event()
    del doc[missing]
    assert missing in invalid("event", doc)


@pytest.mark.parametrize(
    "data",
    [
        {"reason": "guessing", "source": "keypad"},
        {"reason": "unknown_code", "source": "nfc"},
        {"reason": "unknown_code"},
        {"source": "scanner"},
    ],
)
def test_access_denied_needs_a_known_reason_and_source(data: dict[str, str]) -> None:
    assert "data" in invalid("event", event("access_denied", data=data))


def test_every_denial_reason_of_the_design_validates() -> None:
    for reason in COMMON["denied_reason"]["enum"]:
        for source in ("keypad", "scanner"):
            contract.validate_payload(
                "event",
                event("access_denied", data={"reason": reason, "source": source, "detail": "x"}),
            )
    assert (
        len(COMMON["denied_reason"]["enum"]) == 13
    )  # DESIGN 5 adds not_yet_available, out_of_service; already_used since


def test_non_json_payload_is_reported() -> None:
    assert "not UTF-8 JSON" in invalid("event", b"\xff{")


# --- status, state, ack, res ----------------------------------------------------------------------


def test_status_birth_and_will() -> None:
    online = {
        "v": 1,
        "online": True,
        "boot_id": "b1",
        "ts": TS,
        "version": "0.1.0",
        "clock_synced": False,
    }
    contract.validate_payload("status", online)
    contract.validate_payload("status_online", online)
    contract.validate_payload("status", {"v": 1, "online": False, "boot_id": "b1"})
    contract.validate_payload("status", {"v": 1, "online": False, "boot_id": "b1", "ts": TS})
    invalid("status", {**online, "version": None})
    invalid("status", {k: v for k, v in online.items() if k != "clock_synced"})
    invalid("status", {"v": 1, "online": False})
    invalid("status", {"v": 1, "online": False, "boot_id": "b1", "fw": "x"})


def test_state_snapshot() -> None:
    contract.validate_payload("state", state())
    contract.validate_payload("state", state(compartments=[]))
    bad_comp = copy.deepcopy(state())
    bad_comp["compartments"][0]["state"] = "full"
    assert "compartments/0/state" in invalid("state", bad_comp)
    extra = copy.deepcopy(state())
    extra["compartments"][1]["item"] = True
    assert "compartments/1" in invalid("state", extra)
    missing_parcel = copy.deepcopy(state())
    del missing_parcel["compartments"][0]["parcel"]
    invalid("state", missing_parcel)
    invalid("state", state(rev=-1))
    invalid("state", {k: v for k, v in state().items() if k != "outbox_depth"})


def test_ack() -> None:
    contract.validate_payload("ack", b'{"v":1,"upto_seq":42}')  # a server older than epochs
    contract.validate_payload("ack", {"v": 1, "epoch": EPOCH, "upto_seq": 42})
    invalid("ack", {"v": 1, "epoch": 7, "upto_seq": 42})
    invalid("ack", {"v": 1, "upto_seq": -1})
    invalid("ack", {"v": 1, "upto_seq": 4, "from_seq": 1})
    invalid("ack", {"v": 1})


def test_replies() -> None:
    base = {"v": 1, "cmd_id": "c-1", "ts": TS}
    contract.validate_payload("res", {**base, "status": "done", "result": {"compartment": "A1"}})
    contract.validate_payload(
        "res", {**base, "status": "duplicate", "result": {"compartment": "A1"}}
    )
    contract.validate_payload(
        "res", {**base, "status": "rejected", "error": {"code": "bad_signature", "message": "no"}}
    )
    contract.validate_payload(
        "res",
        {
            **base,
            "cmd_id": None,
            "status": "rejected",
            "error": {"code": "malformed", "message": ""},
        },
    )
    invalid("res", {**base, "status": "rejected"})
    invalid("res", {**base, "status": "done", "error": {"code": "x", "message": "y"}})
    invalid("res", {**base, "status": "accepted"})
    invalid("res", {**base, "status": "failed", "error": {"code": "Bad Code", "message": "y"}})
    invalid("res", {"v": 1, "cmd_id": "c-1", "status": "done"})


# --- commands ------------------------------------------------------------------------------------

GOOD_ARGS: dict[Action, dict[str, Any]] = {
    Action.ASSIGN: {
        "parcel": "P-1",
        "kind": "delivery",
        "size": "M",
        "dropoff_tag": TAG,
        "pickup_tag": "cd" * 32,
        "compartment": "A1",
        "dropoff_until": 1_900_000_000,
        "pickup_hours": 48,
    },
    Action.CANCEL: {"parcel": "P-1"},
    Action.EXTEND: {"parcel": "P-1", "pickup_until": 1_900_000_000},
    Action.RETRIEVE: {"parcel": "P-1", "code_tag": TAG, "valid_until": 1_900_000_000},
    Action.OPEN: {"compartment": "A1", "reason": "customer called"},
    Action.SET_SERVICE: {"compartment": "A1", "in_service": False, "reason": "broken hinge"},
    Action.LOCKDOWN: {"on": True},
    Action.RESET_LOCKOUT: {},
    Action.RESYNC: {},
}


def test_committed_command_schema_is_the_one_generated_from_the_models() -> None:
    """schemas/command.json is generated (python -m locker.contract.schema), never edited."""
    assert schema.COMMAND_SCHEMA_FILE.read_text(encoding="utf-8") == schema.render()
    defs = contract.schemas()["command"]["$defs"]
    assert set(Action) == set(GOOD_ARGS)
    for action in Action:
        fields = arg_fields(action)
        args = defs[f"args_{action.value}"]
        assert list(args["properties"]) == [f.name for f in fields], action
        assert set(args["required"]) == {f.name for f in fields if f.required}, action
        assert args["additionalProperties"] is False


def _plain(prop: dict[str, Any]) -> dict[str, Any]:
    """A model property without its description, null option and default."""
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    return {k: v for k, v in options[0].items() if k not in ("description", "default")}


@pytest.mark.parametrize(
    ("common", "action", "field"),
    [
        ("parcel_id", Action.ASSIGN, "parcel"),
        ("compartment_id", Action.OPEN, "compartment"),
        ("reason_text", Action.OPEN, "reason"),
        ("tag", Action.ASSIGN, "dropoff_tag"),
        ("unix_s", Action.EXTEND, "pickup_until"),
        ("size", Action.ASSIGN, "size"),
    ],
)
def test_common_definitions_agree_with_the_models(common: str, action: Action, field: str) -> None:
    """common.json (used by events and state) and the argument models say the same thing."""
    prop = contract.schemas()["command"]["$defs"][f"args_{action.value}"]["properties"][field]
    mine = {k: v for k, v in COMMON[common].items() if k != "description"}
    theirs = _plain(prop)
    if "enum" in mine:
        theirs.pop("type", None)
    assert mine == theirs


def test_asyncapi_command_message_agrees_with_the_verifier() -> None:
    doc = yaml.safe_load(ASYNCAPI)
    assert doc["components"]["schemas"]["CommandClaims"] == {"$ref": "./schemas/command.json"}
    payload = doc["components"]["messages"]["Command"]["payload"]
    assert payload["maxLength"] == commands.MAX_COMMAND_BYTES
    description = doc["info"]["description"]
    assert f"most {SHORT_LIFETIME_S} s for" in description
    assert f"at most {LONG_LIFETIME_S // 86400} days" in description
    for action in SHORT_LIVED_ACTIONS:
        assert f"`{action.value}`" in description


@pytest.mark.parametrize("action", list(Action))
def test_signed_command_of_every_action_validates(action: Action) -> None:
    claims = fleet.command_claims("LKR-1", action, GOOD_ARGS[action], now=1_800_000_000)
    contract.validate_payload("command", claims)
    token = jws.sign_command(generate_signing_key(), "ops1", claims)
    contract.validate_payload("cmd", token)
    info = contract.validate_topic_message("lockers/LKR-1/cmd", token, False, 1)
    assert info.locker_id == "LKR-1"


@pytest.mark.parametrize(
    ("action", "args"),
    [
        (Action.ASSIGN, {**GOOD_ARGS[Action.ASSIGN], "kind": "gift"}),
        (Action.ASSIGN, {**GOOD_ARGS[Action.ASSIGN], "dropoff_tag": "AB" * 32}),
        (Action.ASSIGN, {**GOOD_ARGS[Action.ASSIGN], "size": "XXL"}),
        (Action.ASSIGN, {**GOOD_ARGS[Action.ASSIGN], "pickup_hours": 0}),
        (Action.CANCEL, {}),
        (Action.EXTEND, {"parcel": "P-1", "pickup_until": "tomorrow"}),
        (Action.OPEN, {"compartment": "A1"}),
        (Action.OPEN, {"compartment": "A1", "reason": "x", "all": True}),
        (Action.LOCKDOWN, {"on": "yes"}),
        (Action.RESYNC, {"full": True}),
    ],
)
def test_bad_command_arguments_fail(action: Action, args: dict[str, Any]) -> None:
    claims = {
        "aud": "LKR-1",
        "jti": "jti-0001",
        "iat": 1,
        "exp": 2,
        "act": action.value,
        "args": args,
    }
    assert "args" in invalid("command", claims)


def test_bad_command_claims_fail() -> None:
    claims = fleet.command_claims("LKR-1", Action.RESYNC, {}, now=1_800_000_000)
    invalid("command", {**claims, "act": "open_all"})
    invalid("command", {**claims, "sub": "x"})
    invalid("command", {k: v for k, v in claims.items() if k != "jti"})
    invalid("command", {**claims, "iat": 1.5})
    assert "compact JWS" in invalid("cmd", b"not.a-jws")
    assert "compact JWS" in invalid("cmd", {"act": "open"})


# --- topics --------------------------------------------------------------------------------------


def test_topic_table() -> None:
    ev = event("door_closed")
    info = contract.validate_topic_message("lockers/LKR-1/evt/door_closed", ev, False, 1)
    assert (info.locker_id, info.channel, info.event_type) == ("LKR-1", "evt", "door_closed")
    contract.validate_topic_message("lockers/LKR-1/state", state(), True, 1)
    contract.validate_topic_message(
        "site/a/LKR-1/ack", {"v": 1, "upto_seq": 1}, False, 1, prefix="site/a"
    )
    with pytest.raises(AssertionError, match="retain"):
        contract.validate_topic_message("lockers/LKR-1/evt/door_closed", ev, True, 1)
    with pytest.raises(AssertionError, match="retain"):
        contract.validate_topic_message("lockers/LKR-1/state", state(), False, 1)
    with pytest.raises(AssertionError, match="status must be retained"):
        contract.validate_topic_message(
            "lockers/LKR-1/status", {"v": 1, "online": False, "boot_id": "b"}, False, 1
        )
    with pytest.raises(AssertionError, match="QoS"):
        contract.validate_topic_message("lockers/LKR-1/state", state(), True, 0)
    with pytest.raises(AssertionError, match="differs from the topic"):
        contract.validate_topic_message("lockers/LKR-1/evt/door_opened", ev, False, 1)
    for topic in (
        "lockers/LKR-1/events",
        "lockers/LKR-1/evt",
        "other/LKR-1/state",
        "lockers/+/state",
    ):
        with pytest.raises(AssertionError, match="topic"):
            contract.validate_topic_message(topic, state(), True, 1)


def test_command_topic_checks_the_audience() -> None:
    claims = fleet.command_claims("LKR-2", Action.RESYNC, {}, now=1_800_000_000)
    token = jws.sign_command(generate_signing_key(), "ops1", claims)
    with pytest.raises(AssertionError, match="aud"):
        contract.validate_topic_message("lockers/LKR-1/cmd", token, False, 1)
