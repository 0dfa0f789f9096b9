"""What lockers publish, checked and sorted before ingest's transaction (DESIGN 5, 13).

``parse`` takes a batch of MQTT messages and returns, per kind, what may be stored: each
locker's last status and state, and its events, each placed by ``(epoch, seq)``. Every
message is checked against the contract first: a counter (``seq``, ``last_seq``,
``outbox_depth``, ``rev``) outside 0..2**63-1 (``locker.contract.numbers``: the database's
signed 64-bit integer), a topic that names no locker of this fleet, a retained event (events
are never retained; Mosquitto 2.0.11 hands retained messages to every member of a share), or
an event that cannot be placed (not JSON, no valid seq or epoch, over ``MAX_PLACEABLE_BYTES``)
rejects that message alone (``Outcome.rejections``, one line each, with the locker and
topic). An event that CAN be placed but whose body breaks the contract
(``ledger.event_problem``, or larger than ``MAX_EVENT_BYTES``) is replaced by its
placeholder (``ledger.placeholder``) with the problem: its seq must be held, or its stream
would stop there for good. So is an event nested too deep for ``json.loads`` whose top level
still gives its ``epoch`` and ``seq`` (:func:`locker.fleet.jsontop.top_level`). So no value
from a locker can make the database driver raise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from locker.contract import numbers
from locker.fleet import jsontop
from locker.fleet import ledger as receipt

MAX_EVENT_BYTES = 64 * 1024
# An event larger than MAX_EVENT_BYTES is still parsed, up to this, to place its seq (held as
# a placeholder); beyond it, parsing would cost more than a locker can justify: rejected.
MAX_PLACEABLE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Message:
    """One MQTT message as the worker received it."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class Ack:
    locker: str
    epoch: str
    upto_seq: int

    def payload(self) -> bytes:
        """The ``{p}/ack`` document of the shared receipt rule (no ``epoch`` for a legacy
        stream, as older lockers expect)."""
        doc = receipt.Ack(self.epoch, self.upto_seq).payload()
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Outcome:
    """What a committed batch asks the worker to do, and what it counted."""

    acks: list[Ack] = field(default_factory=list)
    resync: list[str] = field(default_factory=list)
    new_events: int = 0
    duplicates: int = 0
    rejected: int = 0
    invalid: int = 0  # events held as placeholders (new ones only, not their resends)
    lines: list[str] = field(default_factory=list)  # what happened, for the log (INFO)
    # one per rejected message and per new placeholder (WARNING)
    rejections: list[str] = field(default_factory=list)
    stored: list[dict[str, Any]] = field(default_factory=list)  # the new events, for live views
    statuses: list[tuple[str, bool]] = field(default_factory=list)  # (locker, online) births/wills
    states: list[str] = field(default_factory=list)  # lockers whose state snapshot changed


@dataclass(frozen=True)
class Placed:
    """A placed event of ``locker``: its payload, or its placeholder when ``problem`` is set."""

    locker: str
    doc: dict[str, Any]
    problem: str | None = None


@dataclass
class Parsed:
    statuses: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[Placed] = field(default_factory=list)


MAX_LOCKER_ID = 64  # lockers.id, the certificate CN (DESIGN 6)
_text = receipt.printable


def _placement_problem(doc: Any) -> str | None:
    """Why ``doc`` is an event that cannot be placed in a stream (so can only be dropped)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if numbers.count(doc.get("seq"), minimum=1) is None:
        return f"seq {_shown(doc.get('seq'))} is not an integer in [1, 2**63-1]"
    if receipt.epoch_of(doc) is None:
        return "epoch is not a string of 1-64 characters"
    return None


def _state_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a state snapshot this service can store, or None. Fields a locker
    from before them leaves out stay optional; a present one must be in the contract's range."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    for key in ("rev", "last_seq", "outbox_depth"):
        if doc.get(key) is not None and numbers.count(doc[key]) is None:
            return f"{key} {_shown(doc[key])} is not an integer in [0, 2**63-1]"
    if receipt.epoch_of(doc) is None:
        return "epoch is not a string of 1-64 characters"
    if not isinstance(doc.get("compartments", []), list | None):
        return "compartments is not a list"
    return None


def _problem(channel: str, doc: Any) -> str | None:
    """Why a message of ``channel`` (status, state, evt) cannot be stored, or None."""
    if channel == "status":
        return None if doc is None or isinstance(doc, dict) else "not a JSON object"
    if channel == "state":
        return _state_problem(doc)
    if channel == "evt":
        return _placement_problem(doc)
    return f"unexpected channel {channel!r}"


def _shown(value: Any) -> str:
    """A received value for a log line: its JSON, cut short (a locker may send megabytes)."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse(
    batch: Iterable[Message], prefix: str, out: Outcome, suspect: str | None = None
) -> Parsed:
    """Check and sort ``batch`` (see the module docstring); rejections go to ``out``."""
    parsed = Parsed()
    head = prefix + "/"
    for msg in batch:
        levels = msg.topic[len(head) :].split("/") if msg.topic.startswith(head) else []
        if len(levels) < 2 or not levels[0] or not _text(levels[0], MAX_LOCKER_ID):
            _reject(out, "?", msg.topic, "not a locker topic of this fleet")
            continue
        locker, channel = levels[0], levels[1]
        if channel == "evt" and msg.retain:
            _reject(out, locker, msg.topic, "retained event (events are never retained)")
            continue
        size = len(msg.payload)
        oversized = size > MAX_EVENT_BYTES
        if oversized and (channel != "evt" or size > MAX_PLACEABLE_BYTES):
            _reject(out, locker, msg.topic, f"oversized ({size} bytes)")
            continue
        doc: Any = None  # an empty status payload: the retained status was cleared
        deep = None
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except (UnicodeDecodeError, ValueError):
            _reject(out, locker, msg.topic, "not JSON")
            continue
        except RecursionError:
            # nested deeper than the parser goes: an event's top level may still place it
            doc = jsontop.top_level(msg.payload) if channel == "evt" else None
            if doc is None:
                _reject(out, locker, msg.topic, "not JSON it can read (nested too deep)")
                continue
            deep = "nested too deep to parse (its top level was read)"
        why = _problem(channel, doc)
        if why is not None:
            _reject(out, locker, msg.topic, why)
        elif channel == "status":
            parsed.statuses[locker] = doc
        elif channel == "state":
            parsed.states[locker] = doc
        else:
            problem = f"oversized ({size} bytes)" if oversized else (deep or suspect)
            problem = problem or receipt.event_problem(doc)
            if problem is not None:
                doc = receipt.placeholder(doc, problem)
            parsed.events.append(Placed(locker, doc, problem))
    return parsed


def _reject(out: Outcome, locker: str, topic: str, why: str) -> None:
    out.rejected += 1
    out.rejections.append(f"{locker}: message on {topic} rejected: {why}")
