"""Which error format a request gets: JSON under ``/api`` (and ``/metrics``), HTML elsewhere.

:mod:`.api` installs JSON handlers (``{"error": {"code", "message"}}``) for every error.
:func:`install`, called after it, wraps them: a request to the REST API still gets that
JSON from the very same handler, while a browser on any other path (an unknown page, a bad
path parameter, an internal error) gets an HTML page in the console's layout with the same
status code, saying what happened and where to go next.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/metrics")

Handler = Callable[[Request, Exception], Response | Awaitable[Response]]


class ErrorPage(Protocol):
    def __call__(
        self,
        request: Request,
        status: int,
        title: str,
        text: str,
        links: tuple[tuple[str, str], ...] = (),
        *,
        lookup: bool = True,
    ) -> Response: ...


_TITLES = {
    404: ("Page not found", "There is no console page at this address."),
    405: ("Not possible here", "This page cannot be used that way (wrong request method)."),
}


def is_api(request: Request) -> bool:
    path = request.url.path
    return path == "/api" or path.startswith(API_PREFIXES)


async def _call(handler: Handler, request: Request, err: Exception) -> Response:
    resp = handler(request, err)
    return await resp if inspect.isawaitable(resp) else resp


def install(app: FastAPI, page: ErrorPage) -> None:
    """Route errors of non-API paths to ``page``; the JSON handlers already installed keep
    the API's. Call after :func:`locker.fleet.service.api.install`.

    :raises KeyError: the API's handlers are not installed yet.
    """
    json_http: Handler = app.exception_handlers[StarletteHTTPException]
    json_invalid: Handler = app.exception_handlers[RequestValidationError]
    json_internal: Handler = app.exception_handlers[Exception]

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        if is_api(request):
            return await _call(json_http, request, err)
        title, text = _TITLES.get(
            err.status_code, ("Request refused", f"The server answered {err.status_code}.")
        )
        resp = page(request, err.status_code, title, text)
        if err.headers:
            resp.headers.update(err.headers)
        return resp

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        if is_api(request):
            return await _call(json_invalid, request, err)
        # a console path with a malformed part (e.g. /alarms/abc/ack): no such page
        return page(request, 404, *_TITLES[404])

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> Response:
        if is_api(request):
            return await _call(json_internal, request, err)
        logger.error("console internal error: %s", type(err).__name__, exc_info=err)
        return page(
            request,
            500,
            "Something went wrong",
            "The server could not finish this request (the error is logged). "
            "Try again in a moment; if it keeps happening, tell the fleet's administrator.",
            lookup=False,  # the database may be what failed
        )
