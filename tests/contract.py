"""The MQTT contract (DESIGN section 5) as test helpers.

``validate_payload`` checks one payload against the JSON Schemas in ``locker/schemas`` (the
ones ``locker/asyncapi.yaml`` references); ``validate_topic_message`` also checks that the
topic, retain flag and QoS are those of the contract table. Both raise ``AssertionError`` with
jsonschema's message, so a test simply calls them on everything it sees.

Subscribers that check ``retain`` must subscribe with ``retainAsPublished=True`` (MQTT 5),
otherwise the broker clears the flag on live messages; and with QoS 1, since a delivery's QoS
is the lower of the publication's and the subscription's.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

import locker

SCHEMA_DIR = Path(locker.__file__).parent / "contract" / "schemas"
ASYNCAPI_FILE = Path(locker.__file__).parent / "contract" / "asyncapi.yaml"
BASE_URI = "https://schemas.parcel-locker.invalid/v1/"

KINDS = (
    "status",
    "status_online",
    "status_offline",
    "state",
    "event",
    "ack",
    "res",
    "command",
    "command_header",
)
"""Schema kinds; ``cmd`` (a compact JWS: header and claims, signature not verified) too."""


@functools.cache
def schemas() -> dict[str, dict[str, Any]]:
    """Every schema file by its stem (``event``, ``state``...)."""
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in SCHEMA_DIR.glob("*.json")}


@functools.cache
def registry() -> Registry:
    resources = [(doc["$id"], Resource.from_contents(doc)) for doc in schemas().values()]
    return Registry().with_resources(resources)


@functools.cache
def validator(kind: str) -> jsonschema.Draft202012Validator:
    if kind not in schemas():
        raise KeyError(f"no schema for kind {kind!r}")
    return jsonschema.Draft202012Validator(schemas()[kind], registry=registry())


def _as_json(payload: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(payload, Mapping):
        return dict(payload)
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AssertionError(f"payload is not UTF-8 JSON: {err}") from err


def _check(kind: str, doc: Any) -> None:
    errors = sorted(validator(kind).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        where = "/".join(str(p) for p in best.absolute_path) or "(root)"
        raise AssertionError(f"{kind} payload invalid at {where}: {best.message}")


def _b64url(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as err:
        raise AssertionError(f"JWS segment is not base64url: {err}") from err


def decode_jws(payload: bytes | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, NOT verified: for shape checks only."""
    text = payload.decode("ascii") if isinstance(payload, bytes) else payload
    parts = text.split(".")
    if len(parts) != 3 or not all(parts):
        raise AssertionError("cmd payload is not a compact JWS (three non-empty segments)")
    header, claims = (_as_json(_b64url(p)) for p in parts[:2])
    if len(_b64url(parts[2])) != 64:
        raise AssertionError("JWS signature is not 64 bytes (Ed25519)")
    return header, claims


def validate_payload(kind: str, payload: bytes | str | Mapping[str, Any]) -> None:
    """Raise AssertionError unless ``payload`` matches the contract's schema for ``kind``.

    ``kind`` is a schema stem (see :data:`KINDS`) or ``cmd`` for a compact JWS command.
    """
    if kind == "cmd":
        if isinstance(payload, Mapping):
            raise AssertionError("a cmd payload is a compact JWS, not JSON")
        header, claims = decode_jws(payload)
        _check("command_header", header)
        _check("command", claims)
        return
    _check(kind, _as_json(payload))


@dataclass(frozen=True)
class TopicInfo:
    locker_id: str
    channel: str  # status, state, evt, ack, cmd, res
    event_type: str | None = None


# channel -> (schema kind, retained, direction from the locker's point of view)
CHANNELS: dict[str, tuple[str, bool, str]] = {
    "status": ("status", True, "out"),
    "state": ("state", True, "out"),
    "evt": ("event", False, "out"),
    "ack": ("ack", False, "in"),
    "cmd": ("cmd", False, "in"),
    "res": ("res", False, "out"),
}


def parse_topic(topic: str, prefix: str = "lockers") -> TopicInfo:
    """Split ``{prefix}/{locker_id}/{channel}[/{type}]``; AssertionError if no channel matches."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        raise AssertionError(f"topic {topic!r} is not under {prefix!r}")
    levels = topic[len(head) :].split("/")
    if len(levels) < 2 or not levels[0] or any(c in levels[0] for c in "+#"):
        raise AssertionError(f"topic {topic!r} has no locker id level")
    locker_id, channel, rest = levels[0], levels[1], levels[2:]
    if channel == "evt" and len(rest) == 1 and rest[0]:
        return TopicInfo(locker_id, channel, rest[0])
    if channel in CHANNELS and channel != "evt" and not rest:
        return TopicInfo(locker_id, channel)
    raise AssertionError(f"topic {topic!r} matches no channel of the contract")


def validate_topic_message(
    topic: str,
    payload: bytes | str | Mapping[str, Any],
    retain: bool,
    qos: int,
    prefix: str = "lockers",
) -> TopicInfo:
    """Check one message against the contract table: topic -> schema, retain flag, QoS 1.

    ``retain`` is the flag as published (see the module docstring). Returns the parsed topic.
    """
    info = parse_topic(topic, prefix)
    kind, retained, _direction = CHANNELS[info.channel]
    if qos != 1:
        raise AssertionError(f"{topic}: QoS {qos}, the contract says 1")
    if info.channel == "status" and not retain:
        raise AssertionError(f"{topic}: status must be retained")
    if info.channel != "status" and retain != retained:
        raise AssertionError(f"{topic}: retain={retain}, the contract says {retained}")
    validate_payload(kind, payload)
    if info.channel == "evt":
        event_type = _as_json(payload)["type"]
        if event_type != info.event_type:
            raise AssertionError(f"{topic}: payload type {event_type!r} differs from the topic")
    if info.channel == "cmd":
        assert not isinstance(payload, Mapping)
        _header, claims = decode_jws(payload)
        if claims["aud"] != info.locker_id:
            raise AssertionError(f"{topic}: aud {claims['aud']!r} is not the topic's locker")
    return info
