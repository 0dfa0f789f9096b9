"""The REST API of DESIGN 13 (FastAPI; OpenAPI document at ``/api/v1/openapi.json``).

Every endpoint but ``/metrics`` needs ``Authorization: Bearer <token>``; what each role may
do is the table ``PERMISSIONS`` (the security test walks it). Errors are JSON
``{"error": {"code", "message"}}`` with the HTTP status: 401 ``unauthenticated``, 403
``forbidden``, 404, 409 (a locker's rejection carries the locker's own code; ``invalid_state``
for a parcel in a final state adds ``"state"`` beside ``error``), 422 ``invalid_args``, 503,
504 ``locker_timeout`` or ``locker_offline`` (an assign's codes under ``issued``).

Input is strict (``bodies``): every text is bounded and printable (a NUL was a 500 on
PostgreSQL), a JSON body's values must have the declared JSON type (``"yes"`` is not a
boolean, ``true`` is not a number: 422 naming the field, pydantic's strict mode), and every
integer in a path, query or body is bounded, at most by the database's signed 64-bit range
(``numbers.MAX_INT64``) and by the contract's where it goes to a locker (uint32 seconds), so no
number can reach the database driver out of range (an ``OverflowError`` there was a 500).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import and_, func, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from locker import errors
from locker.contract import numbers
from locker.contract.actions import Action
from locker.fleet import qr
from locker.fleet.service import alarms as alarm_rules
from locker.fleet.service import parcel_ledger, users
from locker.fleet.service.actions import ActionError, Actions, Issued
from locker.fleet.service.bodies import (
    AckIn,
    CommandIn,
    Epoch,
    ExtendIn,
    LockerId,
    ParcelId,
    ParcelIn,
    ReasonIn,
    RetrieveIn,
)
from locker.fleet.service.db import alarms, events, lockers, streams

logger = logging.getLogger(__name__)

READ = frozenset({"viewer", "operator", "admin"})
PARCELS = frozenset({"carrier", "operator", "admin"})
ACT = frozenset({"operator", "admin"})
ALL = READ | PARCELS

PERMISSIONS: dict[str, frozenset[str]] = {
    "GET /api/v1/lockers": ALL,
    "GET /api/v1/lockers/{id}": ALL,
    "GET /api/v1/lockers/{id}/events": READ,
    "POST /api/v1/lockers/{id}/commands": ACT,
    "POST /api/v1/parcels": PARCELS,
    "GET /api/v1/parcels/{parcel}": ALL,
    "GET /api/v1/parcels/{parcel}/qr.svg": PARCELS,
    "GET /api/v1/parcels/{parcel}/qr.png": PARCELS,
    "POST /api/v1/parcels/{parcel}/cancel": PARCELS,
    "POST /api/v1/parcels/{parcel}/extend": PARCELS,
    "POST /api/v1/parcels/{parcel}/retrieve": PARCELS,
    "GET /api/v1/alarms": READ,
    "POST /api/v1/alarms/{id}/ack": ACT,
}
"""Endpoint -> roles allowed. An endpoint missing here is a bug (the tests check both ways)."""
UNKNOWN_KID_FIX = (
    "The locker does not know the signer's command key: a user added after the locker was "
    "provisioned needs keys/users/NAME.pub added to the locker's [security.command_keys] and "
    "lockerd restarted there"
)


class ApiError(errors.UsageError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _issued_doc(issued: Issued) -> dict[str, Any]:
    """``POST /api/v1/parcels``'s 201 body (DESIGN 13), also under ``issued`` in its 504."""
    doc: dict[str, Any] = {
        "parcel": issued.parcel,
        "locker": issued.locker,
        "compartment": issued.compartment,
        "dropoff_code": issued.dropoff_code,
        "pickup_code": issued.pickup_code,
        "pickup_token": issued.pickup_token,
    }
    if issued.pickup_token:
        doc["qr_svg"] = qr.to_svg(issued.pickup_token)
        doc["qr_png_base64"] = base64.b64encode(qr.png_bytes(issued.pickup_token)).decode()
    return doc


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """``{"error": {"code", "message"}}``, and ``extra`` beside ``error``."""
    body = {"error": {"code": code, "message": message}, **extra}
    return JSONResponse(body, status_code=status)


AlarmId = Annotated[int, Path(ge=1, le=numbers.MAX_INT64, description="alarm id")]
"""An alarm's id in a path (the API's and the console's): a database row id."""


def _bearer(request: Request) -> users.User:
    header = request.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthenticated", "Authorization: Bearer <token> required")
    with request.app.state.engine.connect() as conn:
        user = users.by_token(conn, token.strip())
    if user is None:
        raise ApiError(401, "unauthenticated", "unknown token")
    return user


def allow(endpoint: str) -> Callable[[Request], users.User]:
    roles = PERMISSIONS[endpoint]

    def check(request: Request) -> users.User:
        user = _bearer(request)
        if user.role not in roles:
            raise ApiError(403, "forbidden", f"role {user.role} may not {endpoint}")
        return user

    return check


def _actions(request: Request) -> Actions:
    actions: Actions = request.app.state.actions
    return actions


def locker_doc(row: Any, open_alarms: int) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": None,
        "online": row.online,
        "last_seen": row.last_seen,
        "epoch": row.epoch,
        "last_seq": row.last_seq,
        "outbox_depth": row.outbox_depth,
        "lockdown": row.lockdown,
        "keypad_locked": row.keypad_locked,
        "open_alarms": open_alarms,
        "compartments": row.compartments or [],
    }


def fleet_lockers(conn: Any, locker: str | None = None) -> list[dict[str, Any]]:
    q = select(lockers).order_by(lockers.c.id)
    if locker is not None:
        q = q.where(lockers.c.id == locker)
    counts = dict(
        conn.execute(
            select(alarms.c.locker, func.count())
            .where(alarms.c.state == "open")
            .group_by(alarms.c.locker)
        ).all()
    )
    return [locker_doc(r, counts.get(r.id, 0)) for r in conn.execute(q)]


def parcel_doc(conn: Any, row: Any) -> dict[str, Any]:
    return {
        "parcel": row.parcel,
        "locker": row.locker,
        "kind": row.kind,
        "size": row.size,
        "compartment": row.compartment,
        "state": row.state,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "pickup_until": row.pickup_until,
        "life": row.life,
        "history": parcel_ledger.history(conn, row.parcel),
        "earlier_lives": parcel_ledger.earlier_lives(conn, row.parcel),
    }


def alarm_doc(row: Any) -> dict[str, Any]:
    return {
        k: getattr(row, k)
        for k in (
            "id",
            "locker",
            "kind",
            "compartment",
            "state",
            "first_at",
            "last_at",
            "count",
            "detail",
            "acked_by",
            "acked_at",
            "note",
        )
    }


def _reply_doc(reply: Any) -> dict[str, Any]:
    return {
        "cmd_id": reply.cmd_id,
        "status": reply.status,
        "result": reply.result,
        "error": reply.error,
    }


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")

    @r.get("/lockers")
    def list_lockers(
        request: Request, _u: Annotated[users.User, Depends(allow("GET /api/v1/lockers"))]
    ) -> list[dict[str, Any]]:
        with request.app.state.engine.connect() as conn:
            return fleet_lockers(conn)

    @r.get("/lockers/{locker_id}")
    def get_locker(
        locker_id: LockerId,
        request: Request,
        _u: Annotated[users.User, Depends(allow("GET /api/v1/lockers/{id}"))],
    ) -> dict[str, Any]:
        with request.app.state.engine.connect() as conn:
            found = fleet_lockers(conn, locker_id)
        if not found:
            raise ApiError(404, "unknown_locker", f"no locker {locker_id!r} has reported")
        return found[0]

    @r.get("/lockers/{locker_id}/events")
    def locker_events(
        locker_id: LockerId,
        request: Request,
        _u: Annotated[users.User, Depends(allow("GET /api/v1/lockers/{id}/events"))],
        after_seq: Annotated[int, Query(ge=0, le=numbers.MAX_COUNT)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        epoch: Epoch = None,
    ) -> list[dict[str, Any]]:
        """The locker's events in ``seq`` order, of one epoch (by default its current one)."""
        with request.app.state.engine.connect() as conn:
            current = conn.execute(select(lockers.c.epoch).where(lockers.c.id == locker_id)).first()
            heard = current is not None or (
                conn.execute(select(streams.c.epoch).where(streams.c.locker == locker_id)).first()
                is not None
            )
            if not heard and not _actions(request).in_fleet(locker_id):
                raise ApiError(404, "unknown_locker", f"no locker {locker_id!r} in this fleet")
            if epoch is None and current is not None:
                epoch = current.epoch or None  # "" until its state names one
            q = (
                select(events.c.body)
                .where(and_(events.c.locker == locker_id, events.c.seq > after_seq))
                .order_by(events.c.seq)
                .limit(limit)
            )
            if epoch is not None:
                q = q.where(events.c.epoch == epoch)
            return [row.body for row in conn.execute(q)]

    @r.post("/lockers/{locker_id}/commands")
    def send_command(
        locker_id: LockerId,
        body: CommandIn,
        request: Request,
        user: Annotated[users.User, Depends(allow("POST /api/v1/lockers/{id}/commands"))],
    ) -> dict[str, Any]:
        reply = _actions(request).command(user.name, locker_id, body.action, body.args, body.reason)
        return _reply_doc(reply)

    @r.post("/parcels", status_code=201)
    def issue_parcel(
        body: ParcelIn,
        request: Request,
        user: Annotated[users.User, Depends(allow("POST /api/v1/parcels"))],
    ) -> dict[str, Any]:
        issued = _actions(request).issue(
            user.name,
            body.locker,
            body.parcel,
            body.size,
            body.kind,
            body.compartment,
            body.pickup_hours,
            accessible=body.accessible,
        )
        return _issued_doc(issued)

    @r.get("/parcels/{parcel}")
    def get_parcel(
        parcel: ParcelId,
        request: Request,
        _u: Annotated[users.User, Depends(allow("GET /api/v1/parcels/{parcel}"))],
    ) -> dict[str, Any]:
        row = _actions(request).parcel_row(parcel)
        with request.app.state.engine.connect() as conn:
            return parcel_doc(conn, row)

    @r.get("/parcels/{parcel}/qr.svg")
    def parcel_svg(
        parcel: ParcelId,
        request: Request,
        _u: Annotated[users.User, Depends(allow("GET /api/v1/parcels/{parcel}/qr.svg"))],
    ) -> Response:
        svg = qr.to_svg(_actions(request).token(parcel))
        return Response(svg, media_type="image/svg+xml")

    @r.get("/parcels/{parcel}/qr.png")
    def parcel_png(
        parcel: ParcelId,
        request: Request,
        _u: Annotated[users.User, Depends(allow("GET /api/v1/parcels/{parcel}/qr.png"))],
    ) -> Response:
        return Response(qr.png_bytes(_actions(request).token(parcel)), media_type="image/png")

    @r.post("/parcels/{parcel}/cancel")
    def cancel(
        parcel: ParcelId,
        request: Request,
        user: Annotated[users.User, Depends(allow("POST /api/v1/parcels/{parcel}/cancel"))],
        body: ReasonIn | None = None,
    ) -> dict[str, Any]:
        reason = body.reason if body else ""
        reply = _actions(request).parcel_command(user.name, parcel, Action.CANCEL, {}, reason)
        return _reply_doc(reply)

    @r.post("/parcels/{parcel}/extend")
    def extend(
        parcel: ParcelId,
        body: ExtendIn,
        request: Request,
        user: Annotated[users.User, Depends(allow("POST /api/v1/parcels/{parcel}/extend"))],
    ) -> dict[str, Any]:
        reply = _actions(request).extend(user.name, parcel, body.pickup_until, body.reason)
        return _reply_doc(reply)

    @r.post("/parcels/{parcel}/retrieve")
    def retrieve(
        parcel: ParcelId,
        request: Request,
        user: Annotated[users.User, Depends(allow("POST /api/v1/parcels/{parcel}/retrieve"))],
        body: RetrieveIn | None = None,
    ) -> dict[str, Any]:
        body = body or RetrieveIn()
        code = _actions(request).retrieve(user.name, parcel, body.valid_hours, body.reason)
        return {"parcel": parcel, "retrieve_code": code}

    @r.get("/alarms")
    def list_alarms(
        request: Request,
        _u: Annotated[users.User, Depends(allow("GET /api/v1/alarms"))],
        state: Literal["open", "acked", "resolved", "all"] = "open",
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        q = select(alarms).order_by(alarms.c.id.desc()).limit(limit)
        if state != "all":
            q = q.where(alarms.c.state == state)
        with request.app.state.engine.connect() as conn:
            return [alarm_doc(row) for row in conn.execute(q)]

    @r.post("/alarms/{alarm_id}/ack")
    def ack_alarm(
        alarm_id: AlarmId,
        request: Request,
        user: Annotated[users.User, Depends(allow("POST /api/v1/alarms/{id}/ack"))],
        body: AckIn | None = None,
    ) -> dict[str, Any]:
        note = body.note if body else ""
        with request.app.state.engine.begin() as conn:
            if not alarm_rules.acknowledge(conn, alarm_id, user.name, note, time.time()):
                raise ApiError(404, "unknown_alarm", f"no open alarm {alarm_id}")
            row = conn.execute(select(alarms).where(alarms.c.id == alarm_id)).one()
        return alarm_doc(row)

    return r


def install(app: FastAPI) -> None:
    """Routes and the JSON error handlers."""
    app.include_router(router())

    @app.exception_handler(ApiError)
    def _api_error(_r: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(ActionError)
    def _action_error(_r: Request, err: ActionError) -> JSONResponse:
        if err.issued is not None:
            # An assign that may still run: its codes now or never (they are not stored).
            issued = _issued_doc(err.issued)
            return error_response(err.status, err.code, err.message, issued=issued)
        if err.state is not None:  # refused because of the parcel's state: which
            return error_response(err.status, err.code, err.message, state=err.state)
        if err.code == "unknown_kid":  # the way out, as the console says it
            return error_response(err.status, err.code, f"{err.message}. {UNKNOWN_KID_FIX}")
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RequestValidationError)
    def _invalid(_r: Request, err: RequestValidationError) -> JSONResponse:
        parts = [".".join(str(p) for p in e["loc"]) + ": " + str(e["msg"]) for e in err.errors()]
        return error_response(422, "invalid_args", "; ".join(parts))

    @app.exception_handler(Exception)
    def _internal(_r: Request, err: Exception) -> JSONResponse:
        logger.error("internal error: %s", type(err).__name__, exc_info=err)
        return error_response(500, "internal", "internal error (logged)")

    @app.exception_handler(StarletteHTTPException)
    def _http(_r: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return error_response(err.status_code, code, str(err.detail))
