"""One-time flash messages of the console, kept server-side of the link (never in a URL).

After a POST (an action, an acknowledgement) the console redirects to a page that shows the
outcome once. The message travels in the ``fleet_flash`` cookie, set by the server on the
redirect and deleted by the page that shows it, and is signed with HMAC-SHA256 under the
session's own secret (its CSRF token, stored only in the database): a link or another site
cannot make the console show text of its choosing, and a flash set for one session is
ignored by another. Query strings are never read for messages.

Cookie value: ``base64url(JSON [kind, message]) "." hex(HMAC-SHA256(secret, first part))``;
``kind`` is ``"ok"`` or ``"error"``; the message is cut to ``MAX_CHARS`` characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from fastapi import Request
from fastapi.responses import Response

COOKIE = "fleet_flash"
MAX_CHARS = 300
MAX_AGE_S = 120  # the redirect is followed at once; a flash never shown goes stale
KINDS = ("ok", "error")


def _mac(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def put(resp: Response, secret: str, message: str, kind: str, *, secure: bool) -> None:
    """Make the next console page ``resp`` leads to show ``message`` once."""
    doc = [kind if kind in KINDS else "error", message[:MAX_CHARS]]
    payload = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    resp.set_cookie(
        COOKIE,
        f"{payload}.{_mac(secret, payload)}",
        max_age=MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def take(request: Request, secret: str) -> tuple[str, str] | None:
    """The ``(message, kind)`` this request carries if its signature holds under ``secret``,
    else None (missing, forged, another session's, malformed). The caller deletes the
    cookie (:func:`clear`) on the response either way."""
    raw = request.cookies.get(COOKIE, "")
    payload, _dot, mac = raw.partition(".")
    if not payload or not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] in KINDS):
        return None
    if not isinstance(doc[1], str):
        return None
    return doc[1][:MAX_CHARS], doc[0]


def clear(request: Request, resp: Response) -> None:
    """Delete the flash cookie if the request had one (a flash is shown at most once)."""
    if COOKIE in request.cookies:
        resp.delete_cookie(COOKIE)
