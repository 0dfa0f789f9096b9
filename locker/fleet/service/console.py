"""The operators' web console at ``/`` (DESIGN 13): server-rendered Jinja2, live by SSE.

Pages: fleet overview, locker page (compartment grid, live event timeline, actions with a
reason: open, set service, lockdown, reset lockout), alarm inbox (acknowledge with a note),
parcel search with history. Plain HTML forms work without JavaScript; ``static/console.js``
adds the live layer (``EventSource`` on ``/console/events``).

Sessions: login with name and password (argon2, :func:`users.check_password`); the session
id is 256 random bits in the ``fleet_session`` cookie (HttpOnly, SameSite=Strict, Secure
unless ``[http] secure_cookies = false``), stored only as its SHA-256 with the user, an
expiry and the session's CSRF token. CSRF: every form carries that token (synchronizer token
pattern) and every POST compares it in constant time; the login form uses a double-submit
cookie (``fleet_login``) so a forged login is refused too. A viewer sees no action and any
action it posts is refused with 403.

Outcomes of a POST are shown once on the next page by a signed flash cookie
(:mod:`.flash`), never from the query string. Logins are throttled per user name and per
client address (:mod:`.login_throttle`; refused with 429 and ``Retry-After``). Errors on
console paths are HTML pages in the console's layout saying what to do next
(:mod:`.console_errors`); the REST API under ``/api`` keeps its JSON errors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import delete, desc, insert, select

from locker.fleet.service import alarms as alarm_rules
from locker.fleet.service import api, console_errors, console_forms, flash, parcel_ledger, users
from locker.fleet.service.actions import ActionError, Actions
from locker.fleet.service.db import alarms, events, parcels, sessions
from locker.fleet.service.db import users as user_table
from locker.fleet.service.live import Hub, Item
from locker.fleet.service.login_throttle import LoginThrottle, Refused

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "fleet_session"
LOGIN_COOKIE = "fleet_login"
SESSION_S = 12 * 3600
TIMELINE = 50
CAN_ACT = api.ACT
KEEPALIVE_S = 15.0
SESSION_CHECK_S = 2.0  # a live stream ends this soon after its session does

templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals |= {
    "reason_max": console_forms.REASON_MAX,
    "note_max": console_forms.NOTE_MAX,
}
templates.env.filters["utc"] = lambda ts: (
    dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else ""
)


class _Session:
    def __init__(self, user: users.User, csrf: str) -> None:
        self.user, self.csrf = user, csrf


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _session(request: Request) -> _Session | None:
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        return None
    with request.app.state.engine.connect() as conn:
        row = conn.execute(
            select(sessions.c.user, sessions.c.csrf, sessions.c.expires).where(
                sessions.c.id_hash == _hash(sid)
            )
        ).first()
        if row is None or row.expires < time.time():
            return None
        role = conn.execute(select(user_table.c.role).where(user_table.c.name == row.user))
        return _Session(users.User(row.user, role.scalar_one()), row.csrf)


def _page(request: Request, name: str, s: _Session | None, **ctx: Any) -> HTMLResponse:
    """Render a console page; a logged-in page shows (and consumes) a pending flash."""
    base = {"user": s.user if s else None, "csrf": s.csrf if s else "", "live_url": None}
    shown = flash.take(request, s.csrf) if s is not None and "message" not in ctx else None
    if shown is not None:
        base |= {"message": shown[0], "message_kind": shown[1]}
    resp = templates.TemplateResponse(request, name, base | ctx)
    flash.clear(request, resp)
    return resp


def error_page(
    request: Request,
    status: int,
    title: str,
    text: str,
    links: tuple[tuple[str, str], ...] = (),
    s: _Session | None = None,
    *,
    lookup: bool = True,
    problems: list[str] | None = None,
) -> HTMLResponse:
    """An HTML error page in the console's layout: what happened (``title``, ``text``) and
    where to go next (``links``, (href, label) pairs; "Back to the fleet" or "Log in"
    always last, depending on the session); status ``status``. ``lookup=False`` does not
    look the session up (for errors of the database itself); ``problems``: a list of
    sentences shown under the text (a form's bad fields)."""
    if s is None and lookup and request.cookies.get(SESSION_COOKIE):
        s = _session(request)
    last = ("/", "Back to the fleet") if s is not None else ("/login", "Log in")
    links = (*(link for link in links if link != last), last)
    resp = _page(
        request,
        "error.html",
        s,
        title=title,
        text=text,
        links=links,
        status=status,
        problems=problems or [],
    )
    resp.status_code = status
    return resp


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


def _csrf_ok(s: _Session, form: Any) -> bool:
    return hmac.compare_digest(str(form.get("csrf", "")), s.csrf)


async def _acting(
    request: Request, refusal: str, back: tuple[str, str]
) -> tuple[_Session, Any] | Response:
    """The session and form of a POST that acts, or the response refusing it: login page
    without a session, a 403 page without the session's CSRF token (a form from an earlier
    session: reload and send again) or for a role that may not act. ``back`` is the
    (href, label) of the page the form was on."""
    s = _session(request)
    if s is None:
        return _to_login()
    form = await request.form()
    if not _csrf_ok(s, form):
        return error_page(
            request,
            403,
            "This form has expired",
            "It was sent from a page of an earlier session (you logged out or in again "
            "since it was loaded), so nothing was done. Go back, reload the page and send "
            "it again.",
            (back,),
            s,
        )
    if s.user.role not in CAN_ACT:
        return error_page(request, 403, "Not allowed", refusal, (back,), s)
    return s, form


def install(app: FastAPI) -> None:  # noqa: PLR0915 - the console's routes, flat
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def cookie(resp: Response, name: str, value: str, max_age: int) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=bool(app.state.secure_cookies),
        )

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        resp = _page(request, "login.html", None, login_csrf=token)
        cookie(resp, LOGIN_COOKIE, token, 3600)
        return resp

    def login_page(request: Request, status: int, message: str) -> Response:
        token = secrets.token_urlsafe(24)
        resp = _page(
            request, "login.html", None, login_csrf=token, message=message, message_kind="error"
        )
        resp.status_code = status
        cookie(resp, LOGIN_COOKIE, token, 3600)
        return resp

    throttle = app.state.login_throttle = LoginThrottle()

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(str(form.get("csrf", "")), expected):
            # the form outlived its cookie (an hour) or was not ours: a fresh form, say why
            return login_page(
                request,
                403,
                "This login form had expired (they last an hour), so nothing was sent. "
                "Please log in again.",
            )
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:256]
        address = request.client.host if request.client else "unknown"
        user_key, addr_key = throttle.keys(name, address)
        admitted = throttle.admit((user_key, addr_key))
        if isinstance(admitted, Refused):
            logger.warning(
                "console login refused, throttled: %r (%s) for %d s more",
                name,
                address,
                admitted.retry_after_s,
            )
            resp = login_page(
                request,
                429,
                f"Too many failed log-ins. Try again in {admitted.retry_after_s} s.",
            )
            resp.headers["Retry-After"] = str(admitted.retry_after_s)
            return resp
        for locked in admitted:
            logger.warning(
                "console login: %s locked for %.0f s after repeated attempts",
                locked.key.encode("unicode_escape").decode(),  # no newlines from a form
                locked.lock_s,
            )
        engine = request.app.state.engine

        def check() -> users.User | None:  # argon2 costs ~90 ms: off the event loop
            with engine.connect() as conn:
                return users.check_password(conn, name, password)

        user = await to_thread.run_sync(check)
        if user is None:
            logger.info("console login failed: %r (%s)", name, address)
            return login_page(request, 401, "Wrong name or password")
        throttle.succeeded(user_key, addr_key)
        sid = secrets.token_urlsafe(32)
        with engine.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires < time.time()))
            conn.execute(
                insert(sessions).values(
                    id_hash=_hash(sid),
                    user=user.name,
                    csrf=secrets.token_urlsafe(24),
                    expires=time.time() + SESSION_S,
                )
            )
        done = RedirectResponse("/", status_code=303)
        cookie(done, SESSION_COOKIE, sid, SESSION_S)
        done.delete_cookie(LOGIN_COOKIE)
        return done

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        s = _session(request)
        form = await request.form()
        if s is not None and _csrf_ok(s, form):
            with request.app.state.engine.begin() as conn:
                sid = request.cookies.get(SESSION_COOKIE, "")
                conn.execute(delete(sessions).where(sessions.c.id_hash == _hash(sid)))
        resp = _to_login()
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    @app.get("/", include_in_schema=False)
    def fleet_page(request: Request) -> Response:
        s = _session(request)
        if s is None:
            return _to_login()
        with request.app.state.engine.connect() as conn:
            docs = api.fleet_lockers(conn)
        return _page(request, "fleet.html", s, lockers=docs, live_url="/console/events")

    @app.get("/lockers/{locker_id}", include_in_schema=False)
    def locker_page(request: Request, locker_id: str) -> Response:
        s = _session(request)
        if s is None:
            return _to_login()
        with request.app.state.engine.connect() as conn:
            found = api.fleet_lockers(conn, locker_id)
            if not found:
                return error_page(
                    request,
                    404,
                    "Unknown locker",
                    f"No locker called {locker_id[:64]!r} has reported to this fleet. "
                    "Check the name, or pick the locker from the fleet.",
                    s=s,
                )
            rows = conn.execute(
                select(events.c.body)
                .where(events.c.locker == locker_id)
                .where(events.c.epoch == found[0]["epoch"])
                .order_by(desc(events.c.seq))
                .limit(TIMELINE)
            )
            evs = [r.body for r in rows]
        return _page(
            request,
            "locker.html",
            s,
            locker=found[0],
            events=evs,
            can_act=s.user.role in CAN_ACT,
            live_url=f"/console/events?locker={locker_id}",
        )

    @app.post("/lockers/{locker_id}/actions", include_in_schema=False)
    async def locker_action(request: Request, locker_id: str) -> Response:
        where = "/lockers/" + urllib.parse.quote(locker_id, safe="")
        back = (where, f"Back to {locker_id[:64]}")
        checked = await _acting(request, "Your role may not act on lockers.", back)
        if isinstance(checked, Response):
            return checked
        s, form = checked
        with request.app.state.engine.connect() as conn:
            found = api.fleet_lockers(conn, locker_id)
        if not found:
            return error_page(
                request,
                404,
                "Unknown locker",
                f"No locker called {locker_id[:64]!r} has reported to this fleet; nothing was "
                "sent.",
                s=s,
            )
        checked_form = console_forms.locker_action(
            form, {str(c["id"]) for c in found[0]["compartments"]}
        )
        if isinstance(checked_form, console_forms.Problems):
            return error_page(
                request,
                422,
                "Nothing was sent",
                "The form has these problems. Go back, correct them and send it again.",
                (back,),
                s,
                problems=checked_form.lines,
            )
        action, args, reason = checked_form.action, checked_form.args, checked_form.reason
        actions: Actions = request.app.state.actions
        try:
            reply = await to_thread.run_sync(
                actions.command, s.user.name, locker_id, action, args, reason
            )
            note = console_forms.reply_note(action, reply.result)
            msg, kind = f"{action}: {reply.status}{note}", "ok"
        except ActionError as err:
            msg, kind = f"{action}: {err.code}: {err.message}", "error"
            if err.code == "unknown_kid":  # the way out, not just the refusal
                msg += ". " + users.unknown_kid_hint(s.user.name, locker_id)
        done = RedirectResponse(where, status_code=303)
        flash.put(done, s.csrf, msg, kind, secure=bool(app.state.secure_cookies))
        return done

    @app.get("/alarms", include_in_schema=False)
    def alarm_inbox(request: Request, state: str = "open") -> Response:
        s = _session(request)
        if s is None:
            return _to_login()
        q = select(alarms).order_by(desc(alarms.c.id)).limit(200)
        if state != "all":
            q = q.where(alarms.c.state == "open")
        with request.app.state.engine.connect() as conn:
            rows = conn.execute(q).all()
        return _page(request, "alarms.html", s, alarms=rows, can_act=s.user.role in CAN_ACT)

    @app.post("/alarms/{alarm_id}/ack", include_in_schema=False)
    async def alarm_ack(request: Request, alarm_id: api.AlarmId) -> Response:
        back = ("/alarms", "Back to the alarms")
        checked = await _acting(request, "Your role may not acknowledge alarms.", back)
        if isinstance(checked, Response):
            return checked
        s, form = checked
        note = str(form.get("note", "")).strip()
        too_long = console_forms.note_problem(note)
        if too_long:
            return error_page(
                request,
                422,
                "Nothing was sent",
                f"Alarm #{alarm_id} was not acknowledged.",
                (back,),
                s,
                problems=[too_long],
            )
        with request.app.state.engine.begin() as conn:
            acked = alarm_rules.acknowledge(conn, alarm_id, s.user.name, note, time.time())
        done = RedirectResponse("/alarms", status_code=303)
        msg = f"Alarm #{alarm_id} acknowledged." if acked else f"Alarm #{alarm_id} was not open."
        kind = "ok" if acked else "error"
        flash.put(done, s.csrf, msg, kind, secure=bool(app.state.secure_cookies))
        return done

    @app.get("/parcels", include_in_schema=False)
    def parcel_search(request: Request, q: str = "") -> Response:
        s = _session(request)
        if s is None:
            return _to_login()
        q = q.strip()[:128]
        with request.app.state.engine.connect() as conn:
            exact = conn.execute(select(parcels).where(parcels.c.parcel == q)).first()
            if exact is not None:
                hist = parcel_ledger.history(conn, exact.parcel)
                return _page(request, "parcels.html", s, q=q, parcel=exact, history=hist)
            like = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            found = conn.execute(
                select(parcels)
                .where(parcels.c.parcel.like(f"%{like}%", escape="\\"))
                .order_by(desc(parcels.c.updated_at))
                .limit(100)
            ).all()
        return _page(request, "parcels.html", s, q=q, parcel=None, parcels=found)

    @app.get("/console/events", include_in_schema=False)
    async def live(request: Request, locker: str | None = None) -> Response:
        if _session(request) is None:
            return Response(status_code=401)
        hub: Hub = request.app.state.hub
        row = templates.env.get_template("event_row.html")

        async def ended() -> bool:
            """Whether the stream's session is gone (logged out, expired, user removed)."""
            return await to_thread.run_sync(_session, request) is None

        async def stream() -> AsyncIterator[str]:
            q = hub.subscribe()
            checked = keepalive = time.monotonic()
            try:
                yield ": connected\n\n"
                while not hub.closed:
                    item: Item | Literal[False] | None
                    try:
                        item = await asyncio.wait_for(q.get(), SESSION_CHECK_S)
                    except TimeoutError:
                        item = False  # nothing arrived: time to check and keep alive
                    now = time.monotonic()
                    if now - checked >= SESSION_CHECK_S:
                        # a stream outlives its request: the session is checked again every
                        # SESSION_CHECK_S, so logout or expiry ends it within that
                        checked = now
                        if await ended():
                            yield "event: session_ended\ndata: {}\n\n"
                            return
                    if item is False:
                        if now - keepalive >= KEEPALIVE_S:
                            keepalive = now
                            if await request.is_disconnected():
                                return
                            yield ": keepalive\n\n"
                        continue
                    if item is None:
                        return
                    if locker is not None and item.locker != locker:
                        continue
                    if item.kind == "event":
                        html = row.render(e=item.data).replace("\n", " ")
                        yield f"event: event\ndata: {html}\n\n"
                    else:
                        yield f"event: {item.kind}\ndata: {json.dumps(item.data)}\n\n"
            finally:
                hub.unsubscribe(q)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    console_errors.install(app, error_page)
