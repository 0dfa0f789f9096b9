"""Verification of signed commands and the shape of their replies (DESIGN section 5).

``verify_command`` takes one ``{p}/cmd`` message exactly as it arrived and either returns a
typed ``Command`` or raises ``CommandRejected`` with the contract's reason code. It checks, in
this order: size (before any parsing), retain flag, MQTT 5 ResponseTopic, JWS structure, key id,
signature, and only then the signed claims (audience, time window, lifetime for the action, jti,
action, arguments). Replay of a ``jti`` is not judged here: the machine owns the durable table of
seen ids. ``reply_payload`` builds the ``{p}/res`` document. Pure functions, no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from locker.contract import jws
from locker.contract.actions import (
    LONG_LIFETIME_S,
    MAX_UINT32,
    SHORT_LIFETIME_S,
    SHORT_LIVED_ACTIONS,
    Action,
    Command,
    CommandArgs,
    CommandRejected,
    args_from_json,
)
from locker.errors import ContractError
from locker.ports import CommandMessage

MAX_COMMAND_BYTES = 4096
CLOCK_SKEW_S = 60  # how far in the future a server clock may put iat
MAX_INT_TIME = MAX_UINT32


# Printable ASCII without space: safe in logs, topics and SQL alike ("!" is 0x21, "~" 0x7e).
JTI_PATTERN = "^[!-~]{8,128}$"
_JTI = re.compile(JTI_PATTERN)


def verify_command(
    payload: bytes,
    *,
    locker_id: str,
    keys: Mapping[str, Ed25519PublicKey],
    now: float,
    retained: bool,
    response_topic: str | None,
    expected_response_topic: str,
    max_bytes: int = MAX_COMMAND_BYTES,
) -> Command:
    """Verify one command message; ``now`` is the caller's trusted time (its high-water mark)."""
    if len(payload) > max_bytes:
        raise CommandRejected("too_large", f"{len(payload)} bytes, limit {max_bytes}")
    if retained:
        # A retained command would run again on every reconnect (Tasmota's "ghost switching").
        raise CommandRejected("retained", "commands must not be retained")
    if response_topic is not None and response_topic != expected_response_topic:
        raise CommandRejected("bad_response_topic", f"replies go to {expected_response_topic}")
    header, claims = _verify_signature(payload, keys)
    # From here on the claims are signed by a key we trust, so the jti may be echoed in the
    # rejection. Before this point it is deliberately not read: an unverified id in a reply
    # would let anyone able to publish on {p}/cmd make this locker "reject" a real command's id.
    cmd_id = _jti(claims)
    try:
        return _check_claims(claims, header, cmd_id, locker_id=locker_id, now=now)
    except CommandRejected as rej:
        rej.cmd_id = cmd_id
        iat = claims.get("iat")
        if type(iat) is int and 0 <= iat <= MAX_INT_TIME:
            rej.iat = iat
        raise


def command_verifier(
    locker_id: str,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    topic_prefix: str = "lockers",
    max_bytes: int = MAX_COMMAND_BYTES,
) -> Callable[[CommandMessage, float], Command]:
    """``verify_command`` bound to this locker, in the shape the controller calls it."""
    expected = f"{topic_prefix}/{locker_id}/res"

    def verify(msg: CommandMessage, now: float) -> Command:
        return verify_command(
            msg.payload,
            locker_id=locker_id,
            keys=keys,
            now=now,
            retained=msg.retained,
            response_topic=msg.response_topic,
            expected_response_topic=expected,
            max_bytes=max_bytes,
        )

    return verify


# --- the steps ------------------------------------------------------------------------------


def _verify_signature(
    payload: bytes, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        return jws.verify_compact(payload, keys)
    except jws.UnknownKid as err:
        raise CommandRejected("unknown_kid", str(err)) from None
    except jws.BadSignature as err:
        raise CommandRejected("bad_signature", str(err)) from None
    except jws.JwsError as err:
        raise CommandRejected("malformed", str(err)) from None


def _jti(claims: Mapping[str, Any]) -> str | None:
    jti = claims.get("jti")
    return jti if isinstance(jti, str) and _JTI.fullmatch(jti) else None


def _check_claims(
    claims: Mapping[str, Any],
    header: Mapping[str, Any],
    cmd_id: str | None,
    *,
    locker_id: str,
    now: float,
) -> Command:
    if claims.get("aud") != locker_id:
        raise CommandRejected("wrong_audience", "aud is not this locker")
    iat, exp = _int_claim(claims, "iat"), _int_claim(claims, "exp")
    _check_window(claims, iat, exp, now)
    if cmd_id is None:
        raise CommandRejected("malformed", "jti must be a string of 8-128 printable characters")
    action = _action(claims.get("act"))
    args = _args(action, claims)
    return Command(cmd_id=cmd_id, action=action, args=args, iat=iat, exp=exp, kid=header["kid"])


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if type(value) is not int or not 0 <= value <= MAX_INT_TIME:
        raise CommandRejected("malformed", f"{name} must be a non-negative integer")
    return value


def _check_window(claims: Mapping[str, Any], iat: int, exp: int, now: float) -> None:
    if exp <= now:
        raise CommandRejected("expired", "exp has passed")
    if iat > now + CLOCK_SKEW_S:
        raise CommandRejected("not_yet_valid", "iat is in the future")
    if "nbf" in claims and _int_claim(claims, "nbf") > now + CLOCK_SKEW_S:
        raise CommandRejected("not_yet_valid", "nbf is in the future")
    if exp <= iat:
        raise CommandRejected("malformed", "exp must be later than iat")
    act = claims.get("act")
    short = isinstance(act, str) and act in SHORT_LIVED_ACTIONS
    limit = SHORT_LIFETIME_S if short else LONG_LIFETIME_S
    if exp - iat > limit:
        raise CommandRejected("lifetime_too_long", f"exp - iat is {exp - iat} s, limit {limit} s")


def _action(act: object) -> Action:
    if not isinstance(act, str):
        raise CommandRejected("unknown_action", "act must be a string")
    try:
        return Action(act)
    except ValueError:
        raise CommandRejected("unknown_action", f"unknown action {act[:32]!r}") from None


def _args(action: Action, claims: Mapping[str, Any]) -> CommandArgs:
    # A missing "args" reads as {}: harmless for the argument-less actions, and every other
    # action then fails on its required fields with a precise message.
    raw = claims.get("args", {})
    if not isinstance(raw, dict):
        raise CommandRejected("invalid_args", "args must be an object")
    try:
        return args_from_json(action, raw)
    except ContractError as err:
        raise CommandRejected("invalid_args", str(err)) from None
