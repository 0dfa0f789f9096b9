"""What a user can make the fleet do: issue parcels and send signed commands (DESIGN 13).

Shared by the REST API and the web console. Every command is signed with the ACTING USER's
own key (``kid`` = user name), recorded in ``commands`` (who, why, the reply) and sent on
``{p}/cmd``; the caller waits, bounded, for the reply on ``{p}/res``.

Issuing a parcel: two codes from the OS CSPRNG (``credentials.generate_code``), only their
HMAC tags under the locker's device key go into ``assign``; the codes and the pickup token are
returned to the caller once and never stored or logged. The token's id and validity are
stored so that the same token (Ed25519 signatures are deterministic) can be rendered again as
a QR image later.

Errors: :class:`ActionError` with an HTTP-like ``status`` and a stable ``code``: 404
``unknown_locker``/``unknown_parcel``, 409 ``duplicate_parcel`` or the locker's own rejection
code, 422 ``invalid_args``, 504 ``locker_timeout`` (the command stays queued for the locker
until it expires), 503 ``broker_unavailable``.

An ``assign`` that times out may still run when the locker comes back (it waits in the
locker's session until its ``exp``, two days), so its codes are not lost with the 504: the
error carries them (``ActionError.issued``, given once, like the 201's), and the parcel is
recorded ``pending`` with its token (its QR renders). While it is pending another issue of
the same parcel is refused (409 ``assign_pending``): two code pairs of which only the first
could work would be worse than none. Its ``parcel_reserved`` event makes it ``reserved``;
cancelling it (queued behind the assign) withdraws it.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from locker import errors
from locker.contract import credentials
from locker.contract.actions import Action
from locker.fleet import provision
from locker.fleet.client import (
    DEFAULT_DROPOFF_HOURS,
    DEFAULT_PICKUP_HOURS,
    PARCEL_ID_RE,
    BrokerError,
    FleetClient,
    FleetError,
    Reply,
    ReplyTimeoutError,
    assign_args,
    command_claims,
    customer_token,
    new_code_pair,
)
from locker.fleet.service import parcel_ledger, users
from locker.fleet.service.db import commands, parcels
from locker.fleet.service.metrics import METRICS

logger = logging.getLogger(__name__)

PARCEL_RE = PARCEL_ID_RE  # the fleet's one rule for the ids it makes (lockerctl uses it too)
RETRIEVE_HOURS = 48  # a courier retrieval code's default validity (the API's valid_hours)
FINAL_STATES = frozenset({"collected", "retrieved", "cancelled"})
PENDING = "pending"  # an assign sent but unanswered: it may still run (see the module doc)


def _already_active(parcel: str, known: Any) -> str:
    """The 409 for a parcel issued before, with the way out when its codes were lost (a
    carrier's retry after a 201 that never reached it lands here: the codes are never
    stored, so they cannot be given again)."""
    where = f"{known.state} at locker {known.locker}"
    if known.state == "reserved":
        return (
            f"parcel {parcel} is already active ({where}). If its codes were lost, cancel it "
            f"(POST /api/v1/parcels/{parcel}/cancel) and issue it again: new codes"
        )
    return f"parcel {parcel} is already active ({where})"


class ActionError(errors.UsageError):
    """``issued``: the parcel and its codes, when an ``assign`` went out unanswered."""

    def __init__(self, status: int, code: str, message: str, issued: Issued | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.issued = issued


@dataclass(frozen=True)
class Issued:
    parcel: str
    locker: str
    compartment: str | None
    dropoff_code: str
    pickup_code: str
    pickup_token: str | None


class Actions:
    """Signed actions on behalf of users; thread-safe (the client serialises on its own)."""

    def __init__(
        self,
        engine: Engine,
        fleet: provision.Fleet,
        client: FleetClient,
        *,
        reply_timeout_s: float = 10.0,
    ) -> None:
        self.engine, self.fleet, self.client = engine, fleet, client
        self.reply_timeout_s = reply_timeout_s

    # -- commands --

    def send(
        self,
        user: str,
        locker: str,
        action: Action | str,
        args: dict[str, Any],
        reason: str | None,
    ) -> Reply:
        """Sign as ``user``, record, send and wait for the reply (any status)."""
        self._check_locker(locker)
        try:
            claims = command_claims(locker, action, args, now=time.time())
        except FleetError as err:
            raise ActionError(422, "invalid_args", str(err)) from None
        try:
            signer = users.signer(self.fleet.dir, user)
        except provision.ProvisionError as err:
            raise ActionError(403, "no_signing_key", str(err)) from None
        with self.engine.begin() as conn:
            conn.execute(
                insert(commands).values(
                    id=claims["jti"],
                    locker=locker,
                    action=claims["act"],
                    actor=user,
                    reason=reason,
                    sent_at=time.time(),
                )
            )
        started = time.monotonic()
        logger.info("%s sends %s to %s (jti %s)", user, claims["act"], locker, claims["jti"])
        try:
            reply = self.client.send_signed(locker, signer.sign(claims), self.reply_timeout_s)
        except ReplyTimeoutError as err:
            self._record(claims["jti"], "timeout", "locker_timeout", None)
            raise ActionError(504, "locker_timeout", str(err)) from None
        except BrokerError as err:
            self._record(claims["jti"], "unsent", "broker_unavailable", None)
            raise ActionError(503, "broker_unavailable", str(err)) from None
        except FleetError as err:
            self._record(claims["jti"], "unsent", "broker_refused", None)
            raise ActionError(503, "broker_unavailable", str(err)) from None
        METRICS.command_seconds.labels(claims["act"]).observe(time.monotonic() - started)
        code = (reply.error or {}).get("code")
        self._record(claims["jti"], reply.status, code, reply.result)
        return reply

    def _record(self, jti: str, status: str, code: Any, result: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(commands)
                .where(commands.c.id == jti)
                .values(
                    status=status,
                    error_code=str(code)[:64] if code else None,
                    result=result,
                    replied_at=time.time(),
                )
            )

    def command(
        self, user: str, locker: str, action: str, args: dict[str, Any], reason: str
    ) -> Reply:
        """A command of the API (anything but ``assign``, which only parcels may send)."""
        try:
            act = Action(action)
        except ValueError:
            raise ActionError(422, "invalid_args", f"unknown action {action!r}") from None
        if act is Action.ASSIGN:
            raise ActionError(422, "invalid_args", "assign is sent by POST /api/v1/parcels")
        if act in (Action.OPEN, Action.SET_SERVICE):
            args = {**args, "reason": args.get("reason", reason)}
        return self._ok(self.send(user, locker, act, args, reason))

    @staticmethod
    def _ok(reply: Reply) -> Reply:
        if not reply.ok:
            err = reply.error or {}
            code = str(err.get("code") or reply.status)
            raise ActionError(409, code, str(err.get("message") or f"locker said {reply.status}"))
        return reply

    def _check_locker(self, locker: str) -> bytes:
        try:
            return self.fleet.device_key(locker)
        except provision.ProvisionError:
            raise ActionError(
                404, "unknown_locker", f"no locker {locker!r} in this fleet"
            ) from None

    # -- parcels --

    def issue(
        self,
        user: str,
        locker: str,
        parcel: str,
        size: str,
        kind: str,
        compartment: str | None = None,
        pickup_hours: int | None = None,
        *,
        accessible: bool = False,
    ) -> Issued:
        if not PARCEL_RE.fullmatch(parcel):
            raise ActionError(422, "invalid_args", f"bad parcel id: expected {PARCEL_RE.pattern}")
        device_key = self._check_locker(locker)
        with self.engine.connect() as conn:
            known = conn.execute(
                select(parcels.c.state, parcels.c.locker).where(parcels.c.parcel == parcel)
            ).first()
        if known is not None and known.state == PENDING:
            raise ActionError(
                409,
                "assign_pending",
                f"an assign of parcel {parcel} waits for locker {known.locker}, unanswered; its "
                "codes came with its 504 and work if it runs. Cancel the parcel to issue it "
                "again",
            )
        if known is not None and known.state not in FINAL_STATES:
            raise ActionError(409, "duplicate_parcel", _already_active(parcel, known))
        now = int(time.time())
        # the locker's own code length: it refuses codes of any other length as malformed
        digits = self.fleet.code_length(locker).digits
        dropoff, pickup, d_tag, p_tag = new_code_pair(device_key, digits)
        hours = pickup_hours if pickup_hours is not None else DEFAULT_PICKUP_HOURS
        args = assign_args(
            parcel,
            kind,
            size,
            dropoff_tag=d_tag,
            pickup_tag=p_tag,
            dropoff_until=now + DEFAULT_DROPOFF_HOURS * 3600,
            pickup_hours=hours,
            compartment=compartment,
            accessible=accessible,
        )
        token_id = secrets.token_bytes(credentials.TOKEN_ID_BYTES)
        action, exp = customer_token(kind, args["dropoff_until"], hours)
        nb = now - 60  # a locker's clock a minute behind still takes it
        token = credentials.mint_token(
            self.fleet.token_key(), self.fleet.token_kid, locker, action, parcel, nb, exp, token_id
        )
        try:
            reply = self._ok(self.send(user, locker, Action.ASSIGN, args, f"issue parcel {parcel}"))
        except ActionError as err:
            if err.code != "locker_timeout":
                raise
            state, where = PENDING, None
        else:
            state, where = "reserved", (reply.result or {}).get("compartment")
        with self.engine.begin() as conn:
            values = {
                "locker": locker,
                "kind": kind,
                "size": size,
                "compartment": where if isinstance(where, str) else None,
                "created_by": user,
                "updated_at": time.time(),
                "dropoff_until": args["dropoff_until"],
                "token_id": token_id.hex(),
                "token_nb": nb,
                "token_exp": exp,
            }
            if known is None:
                # ingest may already have created the row from parcel_reserved: keep its state
                exists = conn.execute(select(parcels.c.parcel).where(parcels.c.parcel == parcel))
                if exists.first() is None:
                    conn.execute(
                        insert(parcels).values(
                            parcel=parcel, state=state, created_at=time.time(), **values
                        )
                    )
                else:
                    conn.execute(update(parcels).where(parcels.c.parcel == parcel).values(**values))
            else:
                conn.execute(
                    update(parcels)
                    .where(parcels.c.parcel == parcel)
                    .values(state=state, state_epoch=None, state_seq=None, **values)
                )
            what = "issued" if state != PENDING else "issued, unanswered"
            parcel_ledger.record_api(
                conn, parcel, what, user, time.time(), {"locker": locker, "kind": kind}
            )
        issued = Issued(parcel, locker, values["compartment"], dropoff, pickup, token)
        if state == PENDING:
            raise ActionError(
                504,
                "locker_timeout",
                f"locker {locker} did not answer in {self.reply_timeout_s:g} s. The assign "
                f"waits for it until {_utc(args['dropoff_until'])} and runs when it is back: "
                "these codes work if it does (they are given only now). To withdraw it, "
                f"cancel parcel {parcel}",
                issued,
            )
        return issued

    def parcel_row(self, parcel: str) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(select(parcels).where(parcels.c.parcel == parcel)).first()
        if row is None:
            raise ActionError(404, "unknown_parcel", f"no parcel {parcel!r}")
        return row

    def token(self, parcel: str) -> str:
        row = self.parcel_row(parcel)
        if row.token_id is None:
            raise ActionError(404, "no_token", f"parcel {parcel} was not issued by this service")
        action = (
            credentials.TokenAction.PICKUP
            if row.kind == "delivery"
            else credentials.TokenAction.DROPOFF
        )
        return credentials.mint_token(
            self.fleet.token_key(),
            self.fleet.token_kid,
            row.locker,
            action,
            parcel,
            row.token_nb,
            row.token_exp,
            bytes.fromhex(row.token_id),
        )

    def parcel_command(
        self, user: str, parcel: str, action: Action, extra: dict[str, Any], reason: str
    ) -> Reply:
        row = self.parcel_row(parcel)
        try:
            reply = self._ok(
                self.send(user, row.locker, action, {"parcel": parcel, **extra}, reason)
            )
        except ActionError as err:
            if row.state == PENDING and action is Action.CANCEL and err.code == "unknown_parcel":
                # Commands run in order: a cancel after the unanswered assign that finds no
                # parcel means the assign never ran and never will (it expired): withdrawn.
                self._withdrawn(user, parcel)
            raise
        with self.engine.begin() as conn:
            detail = {k: v for k, v in extra.items() if not k.endswith("_tag")}
            parcel_ledger.record_api(conn, parcel, action.value, user, time.time(), detail)
        return reply

    def _withdrawn(self, user: str, parcel: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(parcels)
                .where(parcels.c.parcel == parcel, parcels.c.state == PENDING)
                .values(state="cancelled", updated_at=time.time())
            )
            parcel_ledger.record_api(
                conn, parcel, "cancelled", user, time.time(), {"detail": "assign never ran"}
            )

    def retrieve(self, user: str, parcel: str, valid_hours: int, reason: str) -> str:
        """Arm a courier code that takes the parcel back; returns the code (once)."""
        row = self.parcel_row(parcel)
        code = credentials.generate_code(self.fleet.code_length(row.locker).digits)
        tag = credentials.code_tag(self._check_locker(row.locker), code)
        until = int(time.time()) + valid_hours * 3600
        self.parcel_command(
            user, parcel, Action.RETRIEVE, {"code_tag": tag, "valid_until": until}, reason
        )
        return code


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
