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
``unknown_locker``/``unknown_parcel``, 409 ``duplicate_parcel``, ``invalid_state`` (an action
on a parcel in a final state, refused here: nothing is signed or sent) or the locker's own
rejection code, 422 ``invalid_args``, 504 ``locker_timeout`` (no reply in time, or the service
is shutting down) and ``locker_offline`` (the locker's retained status says offline: answered
at once, the command published all the same): the command stays queued for the locker until
it expires; 503 ``broker_unavailable``, ``shutting_down``.

Commit before acting: an ``assign``'s parcel is recorded ``pending``, with its token's data,
BEFORE the assign is published, so whatever interrupts the wait (a time-out, an offline
locker, a broker that does not confirm, a SIGTERM of the service) leaves a record an operator
can see and cancel, and the codes come with the error (``ActionError.issued``, given once,
like the 201's): the assign waits in the locker's session until its ``exp`` (two days) and
runs when the locker is back. While it is pending another issue of the same parcel is refused
(409 ``assign_pending``): two code pairs of which only the first could work would be worse
than none. Its ``parcel_reserved`` event (or the reply) makes it ``reserved``; cancelling it
makes it ``withdrawn`` at once, before the cancel is sent (queued behind the assign, it ends
the parcel at the locker if the assign runs after all), so its id can be issued again at once,
at any locker; once the assign's ``exp`` has passed it can never run and the worker's sweep
withdraws the parcel (``parcel_ledger.lapse_pending``); a definite refusal (the locker's, or
the broker's) makes it ``rejected``. Issuing a parcel id whose earlier parcel is in a final
state starts a new life of it (``parcel_ledger.begin_life``).

About 520 lines, past 500 for a stated reason: issue, the parcel commands and their pending /
withdrawn bookkeeping share one commit-before-acting sequence and are read together.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from locker import errors
from locker.contract import credentials
from locker.contract.actions import Action
from locker.fleet import provision
from locker.fleet.client import (
    DEFAULT_DROPOFF_HOURS,
    DEFAULT_PICKUP_HOURS,
    PARCEL_ID_RE,
    BrokerError,
    CommandSigner,
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
from locker.fleet.service.bodies import MAX_PICKUP_HOURS, RETRIEVE_HOURS
from locker.fleet.service.db import commands, lockers, parcels
from locker.fleet.service.metrics import METRICS
from locker.fleet.service.parcel_ledger import FINAL_STATES, PENDING

logger = logging.getLogger(__name__)

__all__ = ["FINAL_STATES", "PENDING", "RETRIEVE_HOURS", "ActionError", "Actions", "Issued"]

PARCEL_RE = PARCEL_ID_RE  # the fleet's one rule for the ids it makes (lockerctl uses it too)
UNANSWERED = frozenset({"locker_timeout", "locker_offline", "broker_unavailable"})
"""Error codes after which a published command may still run: an assign's codes go with them."""


def _already_active(parcel: str, state: str, locker: str) -> str:
    """The 409 for a parcel issued before, with the way out when its codes were lost (a
    carrier's retry after a 201 that never reached it lands here: the codes are never
    stored, so they cannot be given again)."""
    where = f"{state} at locker {locker}"
    if state == "reserved":
        return (
            f"parcel {parcel} is already active ({where}). If its codes were lost, cancel it "
            f"(POST /api/v1/parcels/{parcel}/cancel) and issue it again: new codes"
        )
    return f"parcel {parcel} is already active ({where})"


class ActionError(errors.UsageError):
    """``issued``: the parcel and its codes, when an ``assign`` went out unanswered;
    ``state``: the parcel's state, when that is why the action was refused."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        issued: Issued | None = None,
        *,
        state: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.issued, self.state = issued, state


@dataclass(frozen=True)
class Issued:
    parcel: str
    locker: str
    compartment: str | None
    dropoff_code: str
    pickup_code: str
    pickup_token: str | None


@dataclass(frozen=True)
class _Signed:
    """A command ready to go: its claims (``jti``, ``act``, ``exp``...) and the signer."""

    locker: str
    claims: dict[str, Any]
    signer: CommandSigner


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
        self._closing = threading.Event()

    def close(self) -> None:
        """The service is stopping: every request waiting for a locker is answered now (504,
        with an assign's codes), and no new command is sent (503 ``shutting_down``)."""
        self._closing.set()
        self.client.stop_waiting("the fleet service is shutting down")

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
        return self._dispatch(user, self._prepare(user, locker, action, args), reason)

    def _prepare(
        self, user: str, locker: str, action: Action | str, args: dict[str, Any]
    ) -> _Signed:
        """Check what can be checked before anything is recorded or sent."""
        self._check_locker(locker)
        if self._closing.is_set():
            raise ActionError(503, "shutting_down", "the fleet service is shutting down")
        try:
            claims = command_claims(locker, action, args, now=time.time())
        except FleetError as err:
            raise ActionError(422, "invalid_args", str(err)) from None
        try:
            signer = users.signer(self.fleet.dir, user)
        except provision.ProvisionError as err:
            raise ActionError(403, "no_signing_key", str(err)) from None
        return _Signed(locker, claims, signer)

    def _dispatch(self, user: str, cmd: _Signed, reason: str | None) -> Reply:
        check_reason(reason)
        locker, claims = cmd.locker, cmd.claims
        offline_since = self._offline_since(locker)
        with self.engine.begin() as conn:
            conn.execute(
                commands.insert().values(
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
        token = cmd.signer.sign(claims)
        try:
            if offline_since is not None:
                self.client.post_signed(locker, token, self.reply_timeout_s)
                self._record(claims["jti"], "queued", "locker_offline", None)
                raise ActionError(
                    504,
                    "locker_offline",
                    f"locker {locker} is offline since {_utc(offline_since)} (its last status); "
                    f"the command waits for it until {_utc(claims['exp'])} and runs when it is "
                    "back",
                )
            reply = self.client.send_signed(locker, token, self.reply_timeout_s)
        except ReplyTimeoutError as err:
            self._record(claims["jti"], "timeout", "locker_timeout", None)
            raise ActionError(504, "locker_timeout", str(err)) from None
        except BrokerError as err:
            self._record(claims["jti"], "unsent", "broker_unavailable", None)
            raise ActionError(503, "broker_unavailable", str(err)) from None
        except FleetError as err:
            self._record(claims["jti"], "unsent", "broker_refused", None)
            raise ActionError(503, "broker_refused", str(err)) from None
        METRICS.command_seconds.labels(claims["act"]).observe(time.monotonic() - started)
        code = (reply.error or {}).get("code")
        self._record(claims["jti"], reply.status, code, reply.result)
        return reply

    def _offline_since(self, locker: str) -> float | None:
        """When the locker went offline, if its retained status says it is (else None: online,
        or never heard of, when only a wait can tell)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(lockers.c.online, lockers.c.offline_since, lockers.c.last_seen).where(
                    lockers.c.id == locker
                )
            ).first()
        if row is None or row.online:
            return None
        return float(row.offline_since or row.last_seen or 0.0)

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

    def in_fleet(self, locker: str) -> bool:
        """Whether ``locker`` is provisioned in this fleet (its device key is here)."""
        try:
            self._check_locker(locker)
        except ActionError:
            return False
        return True

    def _check_locker(self, locker: str) -> bytes:
        try:
            return self.fleet.device_key(locker)
        except (provision.ProvisionError, ValueError):  # ValueError: a NUL in the name
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
        cmd = self._prepare(user, locker, Action.ASSIGN, args)
        life = parcel_ledger.Life(
            parcel=parcel,
            locker=locker,
            kind=kind,
            size=size,
            user=user,
            dropoff_until=args["dropoff_until"],
            token_id=token_id.hex(),
            token_nb=nb,
            token_exp=exp,
        )
        try:
            with self.engine.begin() as conn:  # commit before acting: the pending record first
                refusal = parcel_ledger.begin_life(conn, life, time.time())
        except IntegrityError:  # the same id issued at the same moment by another request
            refusal = (PENDING, locker)
        if refusal is not None:
            state, where = refusal
            if state == PENDING:
                raise ActionError(
                    409,
                    "assign_pending",
                    f"an assign of parcel {parcel} waits for locker {where}, unanswered; its "
                    "codes came with its 504 and work if it runs. Cancel the parcel to issue it "
                    "again",
                )
            raise ActionError(409, "duplicate_parcel", _already_active(parcel, state, where))
        issued = Issued(parcel, locker, None, dropoff, pickup, token)
        try:
            reply = self._ok(self._dispatch(user, cmd, f"issue parcel {parcel}"))
        except ActionError as err:
            if err.code not in UNANSWERED:
                with self.engine.begin() as conn:
                    parcel_ledger.rejected(conn, parcel, user, err.code, time.time())
                raise
            with self.engine.begin() as conn:
                parcel_ledger.record_api(
                    conn, parcel, "issued, unanswered", user, time.time(), {"code": err.code}
                )
            raise ActionError(
                err.status,
                err.code,
                f"{err.message}. The assign of parcel {parcel} waits for locker {locker} until "
                f"{_utc(args['dropoff_until'])} and runs when it is back: these codes work if "
                f"it does (they are given only now). To withdraw it, cancel parcel {parcel}",
                issued,
            ) from None
        got = (reply.result or {}).get("compartment")
        placed = got if isinstance(got, str) else None
        with self.engine.begin() as conn:
            parcel_ledger.reserved(conn, parcel, placed, time.time())
        return Issued(parcel, locker, placed, dropoff, pickup, token)

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

    def _live_row(self, parcel: str, action: Action) -> Any:
        """The parcel's row, refused (409 ``invalid_state``, nothing signed or sent) when the
        parcel is in a final state: the locker no longer knows it."""
        row = self.parcel_row(parcel)
        if row.state in FINAL_STATES:
            raise ActionError(
                409,
                "invalid_state",
                f"parcel {parcel} is {row.state}, a final state: there is nothing to "
                f"{action.value} (nothing was sent to locker {row.locker})",
                state=row.state,
            )
        return row

    def parcel_command(
        self, user: str, parcel: str, action: Action, extra: dict[str, Any], reason: str
    ) -> Reply:
        row = self._live_row(parcel, action)
        return self._parcel_command(user, row, action, extra, reason)

    def _parcel_command(
        self, user: str, row: Any, action: Action, extra: dict[str, Any], reason: str
    ) -> Reply:
        parcel = row.parcel
        cmd = self._prepare(user, row.locker, action, {"parcel": parcel, **extra})
        withdrawing = row.state == PENDING and action is Action.CANCEL
        if withdrawing:  # commit before acting: the fleet gives the parcel up at once
            check_reason(reason)
            with self.engine.begin() as conn:
                withdrawing = parcel_ledger.withdraw(conn, parcel, user, time.time())
        try:
            reply = self._ok(self._dispatch(user, cmd, reason))
        except ActionError as err:
            if withdrawing and err.code in UNANSWERED:
                raise ActionError(
                    err.status,
                    err.code,
                    f"{err.message}. Parcel {parcel} is withdrawn for the fleet all the same "
                    f"(its id may be issued again, at any locker); the cancel waits for locker "
                    f"{row.locker} behind the assign",
                    state=parcel_ledger.WITHDRAWN,
                ) from None
            if row.state == PENDING and action is Action.CANCEL and err.code == "unknown_parcel":
                # Commands run in order: a cancel after the unanswered assign that finds no
                # parcel means the assign never ran and never will (it expired): withdrawn.
                with self.engine.begin() as conn:
                    parcel_ledger.withdrawn(conn, parcel, user, time.time())
            raise
        with self.engine.begin() as conn:
            detail = {k: v for k, v in extra.items() if not k.endswith("_tag")}
            parcel_ledger.record_api(conn, parcel, action.value, user, time.time(), detail)
        return reply

    def extend(self, user: str, parcel: str, pickup_until: int, reason: str) -> Reply:
        """Move the end of the parcel's pickup window to ``pickup_until`` (Unix s): only later
        than its current end (the ledger's, from the locker's events) and at most
        ``MAX_PICKUP_HOURS`` from now; else 422 naming ``pickup_until``. The locker checks the
        same against its own record (``remote._extend``)."""
        row = self._live_row(parcel, Action.EXTEND)
        now = time.time()
        latest = now + MAX_PICKUP_HOURS * 3600
        if pickup_until <= now:
            raise ActionError(422, "invalid_args", "pickup_until: is not in the future")
        if pickup_until > latest:
            raise ActionError(
                422,
                "invalid_args",
                f"pickup_until: at most {MAX_PICKUP_HOURS} h from now ({_utc(latest)}), the "
                "longest pickup window this service sets",
            )
        if row.pickup_until is not None and pickup_until <= row.pickup_until:
            raise ActionError(
                422,
                "invalid_args",
                f"pickup_until: {_utc(pickup_until)} is not later than the current end of the "
                f"window ({_utc(row.pickup_until)}); extend only makes the window longer",
            )
        return self._parcel_command(
            user, row, Action.EXTEND, {"pickup_until": pickup_until}, reason
        )

    def retrieve(self, user: str, parcel: str, valid_hours: int, reason: str) -> str:
        """Arm a courier code that takes the parcel back; returns the code (once)."""
        row = self._live_row(parcel, Action.RETRIEVE)
        code = credentials.generate_code(self.fleet.code_length(row.locker).digits)
        tag = credentials.code_tag(self._check_locker(row.locker), code)
        until = int(time.time()) + valid_hours * 3600
        self._parcel_command(
            user, row, Action.RETRIEVE, {"code_tag": tag, "valid_until": until}, reason
        )
        return code


def check_reason(reason: str | None) -> None:
    """A reason goes into the database and the audit trail: printable text only (the API's
    bodies check it already; the console and any other caller meet this).

    :raises ActionError: 422 ``invalid_args`` naming ``reason``.
    """
    if reason is not None and not reason.isprintable():
        raise ActionError(422, "invalid_args", "reason: must be printable text (no NUL)")


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
