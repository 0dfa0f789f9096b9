"""Plain-value helpers for driving the state machine in tests: keys, rules, commands.

No fakes: the machine is pure, so tests build real inputs and read real outputs."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from locker.cabinet.domain import machine, throttle
from locker.cabinet.domain.draft import Transition, UnlockAction
from locker.cabinet.domain.model import LockerState, fresh_state
from locker.contract import credentials as creds
from locker.contract.actions import (
    ARGS_FOR_ACTION,
    Action,
    Command,
)
from locker.ports import DoorChanged, DoorState, KeyPressed

LOCKER_ID = "LKR-T1"
T0 = 1_800_000_000.0
SIZES = {"A1": "S", "A2": "S", "B1": "M", "B2": "M", "C1": "L", "D1": "XL"}

_ids = itertools.count(1)


@dataclass
class Keys:
    device_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    token_private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def tag(self, code: str) -> str:
        return creds.code_tag(self.device_key, code)

    def token(
        self,
        parcel: str,
        action: int,
        nbf: float,
        exp: float,
        locker_id: str = LOCKER_ID,
        kid: int = 1,
    ) -> str:
        return creds.mint_token(
            self.token_private,
            kid,
            locker_id,
            creds.TokenAction(action),
            parcel,
            int(nbf),
            int(exp),
        )


def limits(**overrides: Any) -> throttle.Limits:
    """Throttle limits as the config's defaults set them (DESIGN 6, 8), with overrides."""
    base: dict[str, Any] = {
        "failures_before_backoff": 5,
        "hard_lockout": 100,
        "max_per_hour": 30,
        "lockout_s": 4 * 3600.0,
    }
    return throttle.Limits(**(base | overrides))


def rules(keys: Keys, **overrides: Any) -> machine.Rules:
    base: dict[str, Any] = {
        "locker_id": LOCKER_ID,
        "device_key": keys.device_key,
        "token_keys": {1: keys.token_private.public_key()},
        "door_open_timeout_s": 10.0,
        "door_left_open_s": 120.0,
        "keypad_entry_timeout_s": 20.0,
        "pickup_hours": 72,
        "dropoff_hours": 48,
        "max_remote_opens_per_hour": 3,
        "code_length": 8,
        "limits": limits(),
    }
    base.update(overrides)
    return machine.Rules(**base)


def command(action: str, now: float = T0, ttl: int = 60, **args: Any) -> machine.CommandArrived:
    act = Action(action)
    cls = ARGS_FOR_ACTION[act]
    cmd = Command(f"cmd-{next(_ids)}", act, cls(**args), int(now), int(now + ttl), "ops1")
    return machine.CommandArrived(cmd, None, b"corr")


def keys_of(code: str) -> list[KeyPressed]:
    return [KeyPressed(k) for k in code]


class Sim:
    """Feeds inputs through ``machine.step`` and keeps the running state and outputs."""

    def __init__(self, keys: Keys | None = None, **rule_overrides: Any) -> None:
        self.keys = keys or Keys()
        self.rules = rules(self.keys, **rule_overrides)
        self.state: LockerState = fresh_state(SIZES)
        self.now = T0
        self.events: list[Any] = []
        self.actions: list[Any] = []
        self.last: Transition | None = None
        self.feed(machine.Boot({c: DoorState.CLOSED for c in SIZES}, {}, "test"))

    def feed(self, *inputs: Any) -> Transition:
        tr: Transition | None = None
        for inp in inputs:
            tr = machine.step(self.state, inp, self.rules, self.now)
            self.state = tr.state
            self.events.extend(tr.events)
            self.actions.extend(tr.actions)
        assert tr is not None
        self.last = tr
        return tr

    def type_code(self, code: str) -> Transition:
        return self.feed(*keys_of(code + "#"))

    def advance(self, seconds: float) -> Transition:
        self.now += seconds
        return self.feed(machine.Tick())

    def door(self, cid: str, state: str) -> Transition:
        return self.feed(DoorChanged(cid, DoorState(state)))

    def types(self, since: int = 0) -> list[str]:
        return [e.type for e in self.events[since:]]

    def unlocks(self) -> list[str]:
        return [a.compartment for a in self.actions if isinstance(a, UnlockAction)]

    def assign(self, parcel: str, size: str = "S", **extra: Any) -> tuple[str, str, str]:
        """Assign a parcel; returns (compartment, dropoff code, pickup code)."""
        drop, pick = creds.generate_code(8), creds.generate_code(8)
        tr = self.feed(
            command(
                "assign",
                self.now,
                parcel=parcel,
                kind=extra.pop("kind", "delivery"),
                size=size,
                dropoff_tag=self.keys.tag(drop),
                pickup_tag=self.keys.tag(pick),
                **extra,
            )
        )
        reply = tr.actions[-1].reply  # type: ignore[union-attr]
        assert reply["status"] == "done", reply
        return reply["result"]["compartment"], drop, pick

    def deposit(self, parcel: str, size: str = "S") -> tuple[str, str]:
        cid, drop, pick = self.assign(parcel, size)
        self.type_code(drop)
        self.door(cid, "open")
        self.door(cid, "closed")
        return cid, pick


def only(events: Iterable[Any], type_: str) -> list[Any]:
    return [e for e in events if e.type == type_]
