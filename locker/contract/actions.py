"""Typed, validated remote commands (DESIGN section 5, "Actions and arguments").

One pydantic dataclass per action is the single source of its argument rules: names, types,
which are required, and every constraint (lengths, hex tag pattern, uint32 times, ranges,
enums), with ``extra="forbid"``. Everything else is derived from these classes:

- ``locker.contract.commands`` validates a verified JWS's ``args`` against them;
- ``locker.contract.schema`` generates ``schemas/command.json`` from them (a test keeps the
  committed file equal to the generated one, and the AsyncAPI document refers to it);
- ``lockerctl cmd send`` and the simulator's prompt read their fields (``arg_fields``) to parse
  and document ``NAME=VALUE`` arguments.

The classes are frozen (immutable, hashable) and validate on construction, so the pure domain
(``locker.cabinet.domain``) can trust any instance it is given. All times are integer Unix
seconds (uint32, as in the QR token).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from locker.errors import ContractError, UsageError


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

MAX_UINT32 = 2**32 - 1  # Unix seconds, as in the QR token's not_before/expires fields
MAX_PICKUP_HOURS = 24 * 365
SIZES = ("S", "M", "L", "XL")
Size = Literal["S", "M", "L", "XL"]


def _printable(text: str) -> str:
    # Ids and reasons end up in logs, events and the operator's terminal: no control characters.
    if not text.isprintable():
        raise ValueError("no control characters")
    return text


ParcelId = Annotated[
    str,
    Field(min_length=1, max_length=128, description="parcel id (printable)"),
    AfterValidator(_printable),
]
CompartmentId = Annotated[
    str,
    Field(min_length=1, max_length=64, description="compartment id (printable)"),
    AfterValidator(_printable),
]
ReasonText = Annotated[
    str,
    Field(max_length=200, description="free text for the audit trail (printable)"),
    AfterValidator(_printable),
]
CodeTag = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{64}$",
        description="lower-case hex HMAC-SHA256(device_key, code) (DESIGN section 6)",
    ),
]
UnixTime = Annotated[int, Field(ge=0, le=MAX_UINT32, description="integer Unix seconds (uint32)")]

# strict: no coercion on the wire ("1" is not 1, 1.0 is not 1, 1 is not true).
_CONFIG = ConfigDict(extra="forbid", strict=True)


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class AssignArgs:
    """Reserve the best-fitting free compartment (or exactly ``compartment``) for a parcel.

    Result ``{compartment}``; errors ``no_compartment``, ``duplicate_parcel``,
    ``code_collision``, ``invalid_args``.
    """

    parcel: ParcelId
    kind: Annotated[
        Literal["delivery", "return"],
        Field(description="delivery: the courier deposits; return: the customer deposits"),
    ]
    size: Annotated[Size, Field(description="smallest compartment size that fits the parcel")]
    dropoff_tag: Annotated[CodeTag, Field(description="tag of the code that deposits the parcel")]
    pickup_tag: Annotated[
        CodeTag, Field(description="tag of the code that collects it, once deposited")
    ]
    compartment: CompartmentId | None = Field(
        default=None, description="exactly this compartment (default: best fit)"
    )
    dropoff_until: UnixTime | None = Field(
        default=None, description="end of the drop-off window (default: timing.dropoff_hours)"
    )
    pickup_hours: Annotated[int, Field(ge=1, le=MAX_PICKUP_HOURS)] | None = Field(
        default=None, description="pickup window after the deposit (default: timing.pickup_hours)"
    )
    accessible: bool = Field(
        default=False,
        description="ask for a compartment within reach of a wheelchair user (DESIGN section 8)",
    )


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class CancelArgs:
    """Release a reservation; after a deposit, disarm the pickup and wait for ``retrieve``."""

    parcel: ParcelId


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class ExtendArgs:
    """Move a deposited parcel's pickup deadline."""

    parcel: ParcelId
    pickup_until: Annotated[UnixTime, Field(description="new end of the pickup window")]


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class RetrieveArgs:
    """Arm a courier code that takes a parcel back (expired, cancelled, or a return)."""

    parcel: ParcelId
    code_tag: Annotated[CodeTag, Field(description="tag of the courier's retrieval code")]
    valid_until: Annotated[UnixTime, Field(description="end of the retrieval window")]


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class OpenArgs:
    """Open one compartment remotely; capped locally whatever the signatures (no "open all")."""

    compartment: CompartmentId
    reason: ReasonText


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class SetServiceArgs:
    """Take a compartment out of service, or put it back."""

    compartment: CompartmentId
    in_service: Annotated[bool, Field(description="true: usable again; false: out of service")]
    reason: ReasonText


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class LockdownArgs:
    """While on, nothing opens (keypad, QR or remote) until lifted."""

    on: Annotated[bool, Field(description="true: lock down; false: lift")]


@pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)
class EmptyArgs:
    """No arguments (``reset_lockout``, ``resync``)."""


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

ACTION_SUMMARY: dict[Action, str] = {
    Action.ASSIGN: (AssignArgs.__doc__ or "").splitlines()[0],
    Action.CANCEL: CancelArgs.__doc__ or "",
    Action.EXTEND: ExtendArgs.__doc__ or "",
    Action.RETRIEVE: RetrieveArgs.__doc__ or "",
    Action.OPEN: OpenArgs.__doc__ or "",
    Action.SET_SERVICE: SetServiceArgs.__doc__ or "",
    Action.LOCKDOWN: LockdownArgs.__doc__ or "",
    Action.RESET_LOCKOUT: "Lift a keypad hard lock-out.",
    Action.RESYNC: "Republish status and state, resend every unacknowledged event.",
}
"""One line per action, for ``--help`` texts and the docs."""

_ADAPTERS: dict[Action, TypeAdapter[Any]] = {a: TypeAdapter(t) for a, t in ARGS_FOR_ACTION.items()}


def args_adapter(action: Action) -> TypeAdapter[Any]:
    """The pydantic adapter of ``action``'s argument class (validation, dump, JSON Schema)."""
    return _ADAPTERS[action]


def describe_errors(err: ValidationError) -> str:
    """``field: reason; ...`` without the input values: tags are hashes of live codes."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}"
        for e in err.errors(include_input=False, include_url=False)
    ]
    return "; ".join(parts)[:300]


def args_from_json(action: Action, raw: Mapping[str, Any]) -> CommandArgs:
    """Validate JSON-decoded ``args`` strictly (the wire's rules).

    :raises ContractError: the message names each bad field and why, never a value.
    """
    try:
        # JSON mode, strict: a dict is accepted for a dataclass (strict Python mode wants an
        # instance), and JSON's types are kept exactly.
        args: CommandArgs = _ADAPTERS[action].validate_json(json.dumps(raw), strict=True)
    except ValidationError as err:
        raise ContractError(describe_errors(err)) from None
    return args


def args_from_text(action: Action, raw: Mapping[str, str]) -> CommandArgs:
    """Validate ``NAME=VALUE`` texts from a command line or a prompt.

    Numbers and booleans are parsed from text (``true``/``false``, ``yes``/``no``, ``1``/``0``);
    every constraint of the model applies.

    :raises UsageError: unknown or missing names, or values that do not fit.
    """
    names = {f.name for f in dataclasses.fields(ARGS_FOR_ACTION[action])}
    unknown = sorted(set(raw) - names)
    if unknown:
        allowed = ", ".join(sorted(names)) or "none"
        raise UsageError(f"{action}: unknown argument(s) {', '.join(unknown)} (allowed: {allowed})")
    try:
        # Lax Python mode is pydantic's text parsing ("72" -> 72, "yes" -> True); the field
        # types, patterns and bounds are the model's own.
        args: CommandArgs = _ADAPTERS[action].validate_python(dict(raw), strict=False)
    except ValidationError as err:
        raise UsageError(f"{action}: {describe_errors(err)}") from None
    return args


def args_to_json(args: CommandArgs) -> dict[str, Any]:
    """The ``args`` object of the claims: fields left at their default are omitted (so a
    locker that predates an optional argument still accepts the command)."""
    dumped: dict[str, Any] = TypeAdapter(type(args)).dump_python(
        args, mode="json", exclude_defaults=True
    )
    return dumped


@dataclasses.dataclass(frozen=True, slots=True)
class ArgField:
    """One argument of an action as a person types it: name, kind, constraint, help."""

    name: str
    kind: str  # "text", "integer", "hex64", "unix-seconds", "true|false" or "A|B|C" (enum)
    required: bool
    help: str


def arg_fields(action: Action) -> list[ArgField]:
    """The arguments of ``action`` in declaration order, read from its model."""
    schema = _ADAPTERS[action].json_schema()
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        fields.append(
            ArgField(name, _kind(prop), name in required, str(prop.get("description", "")))
        )
    return fields


def _kind(prop: Mapping[str, Any]) -> str:
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    p = options[0] if options else prop
    if "enum" in p:
        return "|".join(str(v) for v in p["enum"])
    if "const" in p:
        return str(p["const"])
    if "pattern" in p:
        return "hex64"  # the only patterned argument is a code tag
    if p.get("maximum") == MAX_UINT32:
        return "unix-seconds"
    kinds = {"integer": "integer", "boolean": "true|false", "string": "text"}
    return kinds.get(str(p.get("type")), str(p.get("type", "any")))


def usage_line(action: Action) -> str:
    """``open compartment=TEXT reason=TEXT``: optional arguments in brackets."""
    parts = [str(action)]
    for f in arg_fields(action):
        value = f.kind.upper() if "|" not in f.kind else f.kind
        parts.append(f"{f.name}={value}" if f.required else f"[{f.name}={value}]")
    return " ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
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


class CommandRejected(ContractError):  # noqa: N818 - a verdict, raised and stored
    """Verification failed; nothing is executed. ``cmd_id`` is the jti when it could be read."""

    def __init__(self, code: RejectCode, message: str, cmd_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: RejectCode = code
        self.message = message
        self.cmd_id = cmd_id
        # The signed iat, once the signature has been verified: the server's time, which may
        # re-anchor a suspect clock (DESIGN section 6) even when the window check failed.
        self.iat: int | None = None
