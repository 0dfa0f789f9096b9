"""The web front panel that ``lockerd`` serves for the kiosk browser on the cabinet's screen.

Routes (all on ``[panel] listen``, meant for loopback):
  GET  /          the page, rendered on the server in the current language (complete without
                  JavaScript; with it, it follows the live updates below)
  GET  /events    server-sent events (WHATWG HTML, "Server-sent events"): one ``data:`` line of
                  JSON (``payload``) per change, an ``event: beat`` every ``HEARTBEAT_S`` s
                  (the page reconnects when they stop coming)
  POST /key       ``key=<0-9 * #>``: the on-screen keypad (only with ``touch_keypad``): 204
                  for the page's script, 303 back to ``/`` for a plain form (no JavaScript)
  POST /language  ``lang=<code>``: a language button (303 back to ``/``)
  GET  /healthz   ``ok``: the kiosk start script waits for it
  GET  /favicon.ico  204: no icon (the page names none; some browsers ask anyway)
  GET  /static/…  the page's stylesheet and script

Why the standard library's ``ThreadingHTTPServer``: a loopback kiosk has one or two clients, SSE
is a plain long response, and a Pi should not install a web framework for that. Its weak points
are bounded here: every connection has a socket time-out (a client that stops reading is
dropped after ``WRITE_TIMEOUT_S``, and only its own thread waited), at most ``MAX_STREAMS``
event streams at once (more get 503), request bodies are capped, handler threads are daemons.
A client that has gone away frees its stream slot within ``hub.POLL_S``: an SSE client sends
nothing after its request, so its socket turning readable means end of file (or a reset), seen
with a non-blocking peek on every wake-up; the heartbeat write catches the rest (issue: eight
``curl -m 1`` clients kept the kiosk page out for a minute).
The server runs in a supervised thread that starts it again if it dies; the locker waits for
none of it (``locker.cabinet.panel.hub``).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import select
import socket
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from typing import Any

from locker.cabinet.panel import texts
from locker.cabinet.panel.hub import PanelHub, Snapshot
from locker.ports import HardwareFault, HardwareRecovered, Surface

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "/static/panel.css": ("panel.css", "text/css; charset=utf-8"),
    "/static/panel.js": ("panel.js", "text/javascript; charset=utf-8"),
}
FAVICON = "/favicon.ico"
HEARTBEAT_S = 5.0  # panel.js reconnects after 3 heartbeats without a byte (BEAT_MISSED)
WRITE_TIMEOUT_S = 5.0
MAX_STREAMS = 8
MAX_BODY = 256
RESTART_S = 2.0  # first retry of a failed bind; doubles up to RESTART_MAX_S
RESTART_MAX_S = 60.0
REMIND_S = 3600.0  # a bind still failing is logged again this often
DEVICE = "panel"  # the device name of the web panel's hardware_fault / hardware_recovered
KEY_WAIT_S = 0.5  # a plain-form key press waits this long at most for the controller to take it
MASK_CHAR = "\u25cf"  # one dot per typed digit
COUNTDOWN = "\x00"  # stands in for the seconds while rendering; split off for the live countdown
DOOR_STATES = ("granted", "close_door")  # the door id is also shown in very large type


# With the on-screen keypad, a broken physical keypad still leaves codes to type on the page.
_WITH_TOUCH_KEYPAD = {"idle.no_keypad": "idle", "idle.out_of_order": "idle.no_scanner"}


def payload(snap: Snapshot, now: float, *, touch_keypad: bool = False) -> dict[str, Any]:
    """What the page shows, as sent in each event: ``state``, ``text`` (the whole message),
    ``before``/``seconds``/``after`` (the text around a live countdown), ``compartment``,
    ``other``, ``reason``, ``lang``, ``version``, ``out_of_order`` (the inputs out of order,
    space-separated, "" when none)."""
    msg = snap.message(now)
    if touch_keypad and msg.key in _WITH_TOUCH_KEYPAD:
        msg = dataclasses.replace(msg, key=_WITH_TOUCH_KEYPAD[msg.key])
    lang = snap.language_at(now)
    mask = MASK_CHAR * snap.view.entry
    seconds = texts.remaining_s(msg, now)
    text = texts.render(msg, lang, now, mask=mask)
    before, after = text, ""
    if seconds is not None:
        marked = texts.render(msg, lang, now, mask=mask, seconds_text=COUNTDOWN)
        before, found, after = marked.partition(COUNTDOWN)
        if not found:  # a deadline, but a text without a countdown in it
            before, after, seconds = text, "", None
    return {
        "version": snap.version,
        "state": msg.state,
        "text": text,
        "before": before,
        "after": after,
        "seconds": seconds,
        "compartment": msg.compartment,
        "other": msg.other,
        "reason": msg.reason,
        "lang": lang,
        "out_of_order": " ".join(sorted(snap.view.out_of_order)),
        # the door to show in very large type: the one open, to close, or to use now; under a
        # refusal, the door this person was just granted if it is still open (issue: a wrong
        # entry while B2 stood open left the courier without its number)
        "door": (
            msg.compartment
            if msg.state in DOOR_STATES or msg.key == "jam_moved"
            else snap.view.door_in_use(now)
        ),
    }


def render_page(
    snap: Snapshot, now: float, *, languages: tuple[str, ...], touch_keypad: bool
) -> str:
    """The whole page for ``snap`` (every visible text in its language)."""
    p = payload(snap, now, touch_keypad=touch_keypad)
    lang = p["lang"]
    attrs = f'data-state="{html.escape(p["state"])}"'
    for name in ("compartment", "reason", "out_of_order"):
        if p[name]:
            attrs += f' data-{name.replace("_", "-")}="{html.escape(str(p[name]))}"'
    if p["seconds"] is not None:
        message = (
            f'{html.escape(p["before"])}<span id="countdown">{p["seconds"]}</span>'
            f"{html.escape(p['after'])}"
        )
    else:
        message = html.escape(p["text"])
    buttons = "".join(
        f'<button type="submit" name="lang" value="{code}" lang="{code}"'
        f' aria-pressed="{"true" if code == lang else "false"}">'
        f"{n} {html.escape(texts.NATIVE_NAMES.get(code, code))}</button>"
        for n, code in enumerate(languages, start=1)
    )
    door = p["door"]
    return _template().substitute(
        lang=html.escape(lang),
        title=html.escape(texts.label("title", lang)),
        language=html.escape(texts.label("language", lang)),
        language_help=html.escape(texts.label("language_help", lang)),
        buttons=buttons,
        attrs=attrs,
        message=message,
        door=html.escape(door or ""),
        keypad=_keypad(lang) if touch_keypad else "",
        layout="with-keypad" if touch_keypad else "no-keypad",
        version=p["version"],
    )


def _keypad(lang: str) -> str:
    names = {"*": texts.label("clear", lang), "#": texts.label("enter", lang)}
    cells = []
    for k in [*"123456789", "*", "0", "#"]:
        name = names.get(k)
        small = f"<small>{html.escape(name)}</small>" if name else ""
        cells.append(
            f'<button type="submit" name="key" value="{html.escape(k)}" class="key"'
            f' data-key="{html.escape(k)}" aria-label="{html.escape(name or k)}">'
            f"{html.escape(k)}{small}</button>"
        )
    label = html.escape(texts.label("keypad", lang))
    # A form, so that the keys work without JavaScript too (POST /key, 303 back to the page);
    # panel.js sends the same request with fetch and stays on the page.
    return (
        f'<form id="keypad" method="post" action="/key" aria-label="{label}">'
        f"{''.join(cells)}</form>"
    )


def _navigation(accept: str) -> bool:
    """True for a browser's own form submission (its Accept names HTML; ``fetch`` and
    scripts send ``*/*``), which is answered with a redirect to the page."""
    return "text/html" in accept.lower()


_TEMPLATE: list[Template] = []


def _template() -> Template:
    if not _TEMPLATE:
        _TEMPLATE.append(Template((STATIC_DIR / "page.html").read_text(encoding="utf-8")))
    return _TEMPLATE[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], panel: PanelServer) -> None:
        self.panel = panel
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = WRITE_TIMEOUT_S  # socket time-out for every read and write of this connection
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("panel %s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        panel = self.server.panel
        path = urllib.parse.urlsplit(self.path).path
        if path == "/":
            page = render_page(
                panel.hub.latest,
                time.time(),
                languages=panel.hub.languages,
                touch_keypad=panel.touch_keypad,
            )
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        elif path == "/events":
            self._events()
        elif path == FAVICON:
            # the page names no icon (``data:``), but a kiosk browser may ask for this anyway:
            # nothing to show is not an error (a 404 here filled the browser's console)
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            self._send(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), ctype)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        panel = self.server.panel
        path = urllib.parse.urlsplit(self.path).path
        form = self._form()
        if form is None:
            return
        if path == "/key" and panel.touch_keypad:
            before = panel.hub.latest.version
            if not panel.hub.press(form.get("key", "")):
                self._send(HTTPStatus.BAD_REQUEST, b"bad key\n", "text/plain; charset=utf-8")
            elif _navigation(self.headers.get("Accept", "")):
                # A plain form (no JavaScript): show the page again once the key has been
                # taken (or after KEY_WAIT_S), so the masked digits or the outcome are on it.
                deadline = time.monotonic() + KEY_WAIT_S
                while panel.hub.latest.version == before and time.monotonic() < deadline:
                    panel.hub.wait_newer(before, KEY_WAIT_S)
                self._see_other()
            else:
                self._send(HTTPStatus.NO_CONTENT, b"", "text/plain; charset=utf-8")
        elif path == "/language":
            if not panel.hub.choose_language(form.get("lang", "")):
                self._send(HTTPStatus.BAD_REQUEST, b"no such language\n", "text/plain")
                return
            self._see_other()
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _see_other(self) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _form(self) -> dict[str, str] | None:
        """The url-encoded body (at most MAX_BODY bytes); None after answering a bad one."""
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != host:
            self._send(HTTPStatus.FORBIDDEN, b"cross-origin\n", "text/plain")  # no CSRF
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"bad body\n", "text/plain")
            return None
        body = self.rfile.read(length).decode("ascii", "replace")
        return {k: v[0] for k, v in urllib.parse.parse_qs(body, max_num_fields=4).items()}

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        panel = self.server.panel
        if not panel.streams.acquire(blocking=False):
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many streams\n", "text/plain")
            return
        panel.count_stream(+1)
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            # the browser's own reconnect delay after a dropped stream (panel.js handles a 503)
            self.wfile.write(b"retry: 1000\n\n")
            self._stream(panel)
        except (OSError, TimeoutError) as err:  # the client went away or stopped reading
            logger.debug("panel event stream ended: %s", err)
        finally:
            panel.count_stream(-1)
            panel.streams.release()

    def _stream(self, panel: PanelServer) -> None:
        sent_version, sent_state = -1, None
        beat = time.monotonic() + HEARTBEAT_S
        while not panel.stopping.is_set():
            snap = panel.hub.wait_newer(sent_version, HEARTBEAT_S)
            if self._peer_gone():
                logger.debug("panel event stream: client closed")
                return
            now = time.time()
            # A message can also change by itself (a refusal lapses, a countdown ends).
            state = (snap.version, snap.message(now), snap.language_at(now))
            if state != sent_state:
                data = json.dumps(
                    payload(snap, now, touch_keypad=panel.touch_keypad), ensure_ascii=False
                )
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()
                sent_version, sent_state = snap.version, state
                beat = time.monotonic() + HEARTBEAT_S
            elif time.monotonic() >= beat:
                self.wfile.write(b"event: beat\ndata:\n\n")
                self.wfile.flush()
                beat = time.monotonic() + HEARTBEAT_S

    def _peer_gone(self) -> bool:
        """True when the client closed or reset the connection. An event-stream client sends
        nothing after its request, so a readable socket is an end of file or an error; bytes it
        sends anyway are left unread (not ours to judge)."""
        sock: socket.socket = self.connection
        try:
            poller = select.poll()  # poll, not select: no limit on the descriptor's number
            poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            if not poller.poll(0):
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):  # reset, or already closed
            return True


class PanelServer(Surface):
    """The web panel: a supervised server thread that (re)binds ``host:port`` and serves.

    :param hub: where views come from and on-screen keys go.
    :param host, port: the listening address (port 0: any free port, see ``port``).
    :param touch_keypad: serve the on-screen keypad and accept ``POST /key``.
    """

    def __init__(self, hub: PanelHub, host: str, port: int, *, touch_keypad: bool) -> None:
        self.hub = hub
        self.host = host
        self.touch_keypad = touch_keypad
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.active_streams = 0  # event streams being served now
        self._count_lock = threading.Lock()
        self.stopping = threading.Event()
        self._requested_port = port
        self._server: _Server | None = None
        self._bound = threading.Event()
        self._first_attempt = threading.Event()  # bound, or the failure reported
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.bind_failures = 0  # attempts to listen that failed (tests, diagnostics)

    @property
    def port(self) -> int:
        server = self._server
        return int(server.server_address[1]) if server is not None else self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def count_stream(self, delta: int) -> None:
        with self._count_lock:
            self.active_streams += delta

    def start(self, wait_s: float = 2.0) -> None:
        """Start serving in the background; waits up to ``wait_s`` for the first attempt to
        bind (and logs, never raises, if it fails: the locker works without its panel)."""
        self.stopping.clear()
        self._thread = threading.Thread(target=self._supervise, name="panel-web", daemon=True)
        self._thread.start()
        if not self._first_attempt.wait(wait_s):
            logger.error("panel: not listening on %s:%s yet", self.host, self._requested_port)

    def _supervise(self) -> None:
        delay = RESTART_S
        faulted_at: float | None = None  # when the failure to listen was reported
        while not self.stopping.is_set():
            try:
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                _Server.address_family = family
                server = _Server((self.host, self._requested_port), self)
            except OSError as err:
                # Said once (a hardware_fault on "panel" and one ERROR line), then retried with
                # a back-off up to RESTART_MAX_S and reminded of every REMIND_S: a port that
                # another program holds does not fill the journal (nor stop the locker).
                now = time.monotonic()
                self.bind_failures += 1
                where = f"{self.host}:{self._requested_port}"
                if faulted_at is None:
                    faulted_at = now
                    logger.error("panel: cannot listen on %s: %s; retrying", where, err)
                    self.hub.report(HardwareFault(DEVICE, f"cannot listen on {where}: {err}"))
                elif now - faulted_at >= REMIND_S:
                    faulted_at = now
                    logger.error("panel: still cannot listen on %s: %s", where, err)
                self._first_attempt.set()
                self.stopping.wait(delay)
                delay = min(delay * 2, RESTART_MAX_S)
                continue
            self._server = server
            # Keep the port we got, so a restarted server is found at the same address.
            self._requested_port = int(server.server_address[1])
            self._bound.set()
            self._first_attempt.set()
            if faulted_at is not None:
                faulted_at, delay = None, RESTART_S
                self.hub.report(HardwareRecovered(DEVICE))
            logger.info("panel: serving %s", self.url)
            try:
                server.serve_forever(poll_interval=0.2)
            except Exception:
                logger.exception("panel: web server died; starting it again")
            finally:
                server.server_close()
            if not self.stopping.is_set():
                self.restarts += 1
                self.stopping.wait(RESTART_S / 4)

    def kill(self) -> None:
        """Take the server down as a crash would (tests; the supervisor starts it again)."""
        server = self._server
        if server is not None:
            server.shutdown()

    def close(self) -> None:
        self.stopping.set()
        server = self._server
        if server is not None:
            server.shutdown()
        if self._thread is not None:
            self._thread.join(5.0)
