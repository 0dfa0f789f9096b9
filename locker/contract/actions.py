"""Typed, validated remote commands (DESIGN section 5, "Actions and arguments").

``locker.contract.commands`` turns a verified JWS into one of these;
``locker.cabinet.domain.machine`` executes them.
All times are integer Unix seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


class Action(enum.StrEnum):
    ASSIGN = "assign"
    CANCEL = "cancel"
    EXTEND = "extend"
    RETRIEVE = "retrieve"
    OPEN = "open"
    SET_SERVICE = "set_service"
    LOCKDOWN = "lockdown"
    RESET_LOCKOUT = "reset_lockout"
    RESYNC = "resync"


# Commands that can open a door get a short signed lifetime (DESIGN section 5).
SHORT_LIVED_ACTIONS = frozenset({Action.OPEN, Action.LOCKDOWN})
SHORT_LIFETIME_S = 120
LONG_LIFETIME_S = 7 * 24 * 3600

Size = Literal["S", "M", "L", "XL"]


@dataclass(frozen=True, slots=True)
class AssignArgs:
    parcel: str
    kind: Literal["delivery", "return"]
    size: Size
    dropoff_tag: str
    pickup_tag: str
    compartment: str | None = None
    dropoff_until: int | None = None
    pickup_hours: int | None = None


@dataclass(frozen=True, slots=True)
class CancelArgs:
    parcel: str


@dataclass(frozen=True, slots=True)
class ExtendArgs:
    parcel: str
    pickup_until: int


@dataclass(frozen=True, slots=True)
class RetrieveArgs:
    parcel: str
    code_tag: str
    valid_until: int


@dataclass(frozen=True, slots=True)
class OpenArgs:
    compartment: str
    reason: str


@dataclass(frozen=True, slots=True)
class SetServiceArgs:
    compartment: str
    in_service: bool
    reason: str


@dataclass(frozen=True, slots=True)
class LockdownArgs:
    on: bool


@dataclass(frozen=True, slots=True)
class EmptyArgs:
    pass


CommandArgs = (
    AssignArgs
    | CancelArgs
    | ExtendArgs
    | RetrieveArgs
    | OpenArgs
    | SetServiceArgs
    | LockdownArgs
    | EmptyArgs
)

ARGS_FOR_ACTION: dict[Action, type[CommandArgs]] = {
    Action.ASSIGN: AssignArgs,
    Action.CANCEL: CancelArgs,
    Action.EXTEND: ExtendArgs,
    Action.RETRIEVE: RetrieveArgs,
    Action.OPEN: OpenArgs,
    Action.SET_SERVICE: SetServiceArgs,
    Action.LOCKDOWN: LockdownArgs,
    Action.RESET_LOCKOUT: EmptyArgs,
    Action.RESYNC: EmptyArgs,
}


@dataclass(frozen=True, slots=True)
class Command:
    """A command whose signature, audience, lifetime and argument schema have been checked.
    Replay (``jti`` already seen) is judged by the machine against durable state."""

    cmd_id: str
    action: Action
    args: CommandArgs
    iat: int
    exp: int
    kid: str


RejectCode = Literal[
    "malformed",
    "too_large",
    "retained",
    "bad_response_topic",
    "unknown_kid",
    "bad_signature",
    "wrong_audience",
    "expired",
    "not_yet_valid",
    "lifetime_too_long",
    "unknown_action",
    "invalid_args",
]


class CommandRejected(Exception):  # noqa: N818 - a verdict, raised and stored
    """Verification failed; nothing is executed. ``cmd_id`` is the jti when it could be read."""

    def __init__(self, code: RejectCode, message: str, cmd_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: RejectCode = code
        self.message = message
        self.cmd_id = cmd_id
