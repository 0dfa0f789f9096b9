"""Fleet commands before and after the wire (DESIGN section 5): their claims and arguments
checked as the locker will check them, the signing key, the locker's reply, the parcel issued,
and the errors of fleet operations. No MQTT here: ``locker.fleet.client`` sends them (and
re-exports these names).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from locker.contract import credentials, jws
from locker.contract.actions import (
    LONG_LIFETIME_S,
    SHORT_LIFETIME_S,
    SHORT_LIVED_ACTIONS,
    Action,
    args_from_json,
    args_from_text,
    args_to_json,
)
from locker.errors import ContractError, LinkError, LinkTimeoutError, UsageError

__all__ = [
    "DEFAULT_DROPOFF_HOURS",
    "DEFAULT_LONG_TTL_S",
    "DEFAULT_PICKUP_HOURS",
    "DEFAULT_SHORT_TTL_S",
    "PARCEL_ID_RE",
    "AssignTimeoutError",
    "BrokerError",
    "CommandSigner",
    "FleetError",
    "IssuedParcel",
    "Reply",
    "ReplyTimeoutError",
    "assign_args",
    "check_args",
    "check_parcel_id",
    "coerce_args",
    "command_claims",
    "customer_token",
    "max_ttl",
    "new_code_pair",
    "parse_action",
]

DEFAULT_SHORT_TTL_S = 60
DEFAULT_LONG_TTL_S = 2 * 24 * 3600
DEFAULT_DROPOFF_HOURS = 48
DEFAULT_PICKUP_HOURS = 72

PARCEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
"""A parcel id the fleet creates (assign, QR tokens, the REST API): it is a URL path segment
of the API (``/api/v1/parcels/{parcel}``), a database key and a log word, so no space, slash
or other punctuation. The locker itself takes any printable id (``ParcelId``), so that ids
made elsewhere still work; the fleet makes none it cannot serve."""


class FleetError(UsageError):
    """A fleet operation that could not be done (bad arguments, broker refused...)."""


class BrokerError(FleetError, LinkError):
    """Cannot reach or authenticate with the broker."""


class ReplyTimeoutError(FleetError, LinkTimeoutError):
    """No reply in time. The command may still run later: it waits in the locker's session
    until its ``exp``."""


class AssignTimeoutError(ReplyTimeoutError):
    """An ``assign`` sent but not answered in time: it may still run when the locker is
    back (until its ``exp``), and then its codes work, so they come with the error
    (``issued``, its ``reply`` None) instead of being lost with it."""

    def __init__(self, message: str, issued: IssuedParcel) -> None:
        super().__init__(message)
        self.issued = issued


def parse_action(action: str) -> Action:
    try:
        return Action(action)
    except ValueError:
        known = ", ".join(a.value for a in Action)
        raise FleetError(f"unknown action {action!r} (one of: {known})") from None


def coerce_args(action: Action | str, raw: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``name -> text`` (from a command line) into checked command arguments; the rules
    are the action's model in ``locker.contract.actions``."""
    act = parse_action(str(action))
    try:
        return args_to_json(args_from_text(act, raw))
    except UsageError as err:
        raise FleetError(str(err)) from None


def check_args(action: Action, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` checked against ``action``'s model, as the locker will check them."""
    try:
        return args_to_json(args_from_json(action, args))
    except ContractError as err:
        raise FleetError(f"{action}: {err}") from None


def check_parcel_id(parcel: str) -> str:
    """``parcel`` when it matches :data:`PARCEL_ID_RE`.

    :raises FleetError: it does not (the message gives the rule).
    """
    if not PARCEL_ID_RE.fullmatch(parcel):
        raise FleetError(
            f"bad parcel id {parcel!r}: 1-128 of A-Z a-z 0-9 . _ : -, "
            "starting with a letter or digit"
        )
    return parcel


def max_ttl(action: Action) -> int:
    return SHORT_LIFETIME_S if action in SHORT_LIVED_ACTIONS else LONG_LIFETIME_S


def command_claims(
    locker_id: str,
    action: Action | str,
    args: Mapping[str, Any],
    *,
    now: float,
    ttl: int | None = None,
    jti: str | None = None,
) -> dict[str, Any]:
    """The claims of DESIGN 5: aud, jti, iat, exp, act, args; ``exp - iat`` within the limit."""
    act = parse_action(str(action))
    limit = max_ttl(act)
    if ttl is None:
        ttl = DEFAULT_SHORT_TTL_S if act in SHORT_LIVED_ACTIONS else DEFAULT_LONG_TTL_S
    if not 1 <= ttl <= limit:
        raise FleetError(f"{act}: lifetime must be 1-{limit} s, got {ttl}")
    iat = int(now)
    return {
        "aud": locker_id,
        "jti": jti or str(uuid.uuid4()),
        "iat": iat,
        "exp": iat + ttl,
        "act": act.value,
        "args": check_args(act, args),
    }


@dataclass(frozen=True)
class CommandSigner:
    """The fleet's command signing key and its ``kid`` (``security.command_keys``)."""

    key: Ed25519PrivateKey = field(repr=False)
    kid: str

    def sign(self, claims: Mapping[str, Any]) -> bytes:
        return jws.sign_command(self.key, self.kid, claims)


@dataclass(frozen=True)
class Reply:
    """A locker's reply on ``{p}/res``."""

    status: str
    cmd_id: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    raw: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Done now, or done before (a duplicate with a stored result and no error)."""
        return self.status == "done" or (self.status == "duplicate" and not self.error)

    @classmethod
    def parse(cls, payload: bytes) -> Reply:
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FleetError(f"reply is not JSON: {err}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("status"), str):
            raise FleetError("reply has no status")
        result, error = raw.get("result"), raw.get("error")
        return cls(
            status=raw["status"],
            cmd_id=raw.get("cmd_id") if isinstance(raw.get("cmd_id"), str) else None,
            result=result if isinstance(result, dict) else None,
            error=error if isinstance(error, dict) else None,
            raw=raw,
        )

    def describe(self) -> str:
        text = f"{self.status}"
        if self.error:
            text += f" ({self.error.get('code')}: {self.error.get('message')})"
        if self.result:
            text += " " + json.dumps(self.result, sort_keys=True)
        return text


@dataclass(frozen=True)
class IssuedParcel:
    """A parcel announced to a locker. The codes are for the operator's eyes only."""

    locker_id: str
    parcel: str
    kind: str
    size: str
    dropoff_until: int
    pickup_hours: int
    reply: Reply | None  # None: sent, not answered in time (``AssignTimeoutError``)
    dropoff_code: str = field(repr=False)
    pickup_code: str = field(repr=False)
    qr_token: str | None = field(default=None, repr=False)
    qr_action: credentials.TokenAction | None = None

    @property
    def compartment(self) -> str | None:
        if self.reply is None:
            return None
        value = (self.reply.result or {}).get("compartment")
        return value if isinstance(value, str) else None


def new_code_pair(device_key: bytes, digits: int = 8) -> tuple[str, str, str, str]:
    """(dropoff code, pickup code, dropoff tag, pickup tag); the two tags differ."""
    while True:
        dropoff, pickup = credentials.generate_code(digits), credentials.generate_code(digits)
        d_tag, p_tag = (credentials.code_tag(device_key, c) for c in (dropoff, pickup))
        if d_tag != p_tag:
            return dropoff, pickup, d_tag, p_tag


def assign_args(
    parcel: str,
    kind: str,
    size: str,
    *,
    dropoff_tag: str,
    pickup_tag: str,
    dropoff_until: int,
    pickup_hours: int,
    compartment: str | None = None,
    accessible: bool = False,
) -> dict[str, Any]:
    """An ``assign`` command's arguments (DESIGN section 5; ``dropoff_until`` in seconds since
    the epoch): ``compartment`` and ``accessible`` only when given.

    :raises FleetError: ``parcel`` is not an id the fleet makes (:func:`check_parcel_id`).
    """
    check_parcel_id(parcel)
    args: dict[str, Any] = {
        "parcel": parcel,
        "kind": kind,
        "size": size,
        "dropoff_tag": dropoff_tag,
        "pickup_tag": pickup_tag,
        "dropoff_until": dropoff_until,
        "pickup_hours": pickup_hours,
    }
    if compartment is not None:
        args["compartment"] = compartment
    if accessible:
        args["accessible"] = True
    return args


def customer_token(
    kind: str, dropoff_until: int, pickup_hours: int
) -> tuple[credentials.TokenAction, int]:
    """The QR token a parcel's customer gets: its action (pickup for a delivery, drop-off for a
    return) and its expiry, when that step's window can last end (seconds since the epoch)."""
    if kind == "delivery":
        return credentials.TokenAction.PICKUP, dropoff_until + pickup_hours * 3600
    return credentials.TokenAction.DROPOFF, dropoff_until
