"""Console errors are pages with a way back; the API keeps JSON; logins are throttled.

Against a running service (real broker, SQLite, uvicorn) over plain HTTP with httpx:

- a login form whose cookie expired (left open more than an hour) gets a 403 login page with
  a fresh form that works, not bare text; a stale action form a 403 page linking back;
- unknown console paths, malformed ones and ``/lockers/NOPE`` get 404 pages in the console's
  layout, while ``/api/...`` still answers ``{"error": {...}}``;
- 25 wrong passwords for one user: the first 5 are checked, the rest answered 429 with
  ``Retry-After`` and a log line; even the right password waits; after the lock-out (the
  throttle's clock moved on, no sleep) it works. Many names from one address lock the
  address. A parallel burst cannot slip more than the limit past the check.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from locker.fleet.service import login_throttle
from locker.fleet.service.app import FleetService
from locker.fleet.service.login_throttle import LoginThrottle, Refused
from tests.console_rig import base_url, console_service, form_csrf, http_login
from tests.fleet_rig import service_broker

_ = service_broker, console_service
Served = tuple[FleetService, dict[str, tuple[str, str]]]


def _is_page(r: httpx.Response, status: int, title: str) -> None:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("text/html")
    assert f"<h1>{title}</h1>" in r.text, r.text[:500]
    assert '<link rel="stylesheet" href="/static/console.css">' in r.text  # the layout


def _links(r: httpx.Response) -> list[str]:
    return re.findall(r'<li><a href="([^"]+)">', r.text)


def test_console_errors_are_pages_with_a_way_back(console_service: Served) -> None:
    service, people = console_service
    base = base_url(service)
    with httpx.Client(base_url=base, timeout=20) as anon:
        login_form = anon.get("/login").text
        anon.cookies.clear()  # the login cookie lasts an hour: this form was left open
        stale = anon.post(
            "/login",
            data={"name": "olga", "password": people["olga"][0], "csrf": form_csrf(login_form)},
        )
        assert stale.status_code == 403 and "login form had expired" in stale.text
        assert '<form method="post" action="/login" id="login">' in stale.text
        again = anon.post(  # the fresh form on that page works
            "/login",
            data={"name": "olga", "password": people["olga"][0], "csrf": form_csrf(stale.text)},
        )
        assert again.status_code == 303 and again.headers["location"] == "/"
        anon.cookies.clear()
        lost = anon.get("/no/such/page")
        _is_page(lost, 404, "Page not found")
        assert _links(lost) == ["/login"]
        api = anon.get("/api/v1/no/such/thing")
        assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
        assert anon.get("/api/v1/lockers").json()["error"]["code"] == "unauthenticated"
    op, csrf = http_login(base, "olga", people["olga"][0])
    viewer, v_csrf = http_login(base, "vic", people["vic"][0])
    try:
        nope = op.get("/lockers/NOPE")
        _is_page(nope, 404, "Unknown locker")
        assert "&#39;NOPE&#39;" in nope.text and _links(nope) == ["/"]
        _is_page(op.get("/no/such/page"), 404, "Page not found")
        _is_page(op.post("/alarms/abc/ack", data={"csrf": csrf}), 404, "Page not found")
        _is_page(op.get("/logout"), 405, "Not possible here")
        form = {"action": "lockdown", "flag": "true", "reason": "stale form"}
        old = op.post("/lockers/SIM-0001/actions", data=form | {"csrf": "an-earlier-session"})
        _is_page(old, 403, "This form has expired")
        assert _links(old) == ["/lockers/SIM-0001", "/"]
        old_ack = op.post("/alarms/1/ack", data={"note": "x"})
        _is_page(old_ack, 403, "This form has expired")
        assert _links(old_ack) == ["/alarms", "/"]
        refused = viewer.post("/lockers/SIM-0001/actions", data=form | {"csrf": v_csrf})
        _is_page(refused, 403, "Not allowed")
        assert "may not act on lockers" in refused.text
        for r in (nope, old):  # still logged in on the error page: the header says who
            assert '<span id="who">olga (operator)</span>' in r.text
    finally:
        op.close()
        viewer.close()


def _try(client: httpx.Client, name: str, password: str) -> httpx.Response:
    csrf = form_csrf(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "csrf": csrf})


def test_console_login_is_throttled_per_user_and_per_address(
    console_service: Served, caplog: pytest.LogCaptureFixture
) -> None:
    service, people = console_service
    clock = [1000.0]
    throttle: LoginThrottle = service.app.state.login_throttle
    throttle.clock = lambda: clock[0]
    caplog.set_level(logging.INFO, "locker.fleet.service.console")
    with httpx.Client(base_url=base_url(service), timeout=20) as c:
        codes = [_try(c, "olga", f"wrong-{n}").status_code for n in range(25)]
        assert codes == [401] * 5 + [429] * 20  # the break-test's 25 guesses
        locked = _try(c, "olga", people["olga"][0])
        assert locked.status_code == 429 and "Too many failed log-ins" in locked.text
        assert int(locked.headers["Retry-After"]) == login_throttle.BASE_LOCK_S
        assert "lock" in caplog.text and "user:olga" in caplog.text
        assert people["olga"][0] not in caplog.text
        clock[0] += login_throttle.BASE_LOCK_S
        assert _try(c, "olga", people["olga"][0]).status_code == 303  # lock-out over
        c.cookies.clear()
        # the next lock-out of a user is longer: a right password forgot the history, so
        # five more wrong ones lock for the base time again, and five after that for twice it
        for lock_s in (login_throttle.BASE_LOCK_S, 2 * login_throttle.BASE_LOCK_S):
            assert [_try(c, "olga", "bad").status_code for _ in range(6)] == [401] * 5 + [429]
            assert int(_try(c, "olga", "bad").headers["Retry-After"]) == lock_s
            clock[0] += lock_s
        clock[0] += login_throttle.WINDOW_S + 1  # everything forgotten
        names = [f"guess{n}" for n in range(login_throttle.ADDR_LIMIT)]
        assert {_try(c, name, "x").status_code for name in names} == {401}
        by_address = _try(c, "vic", people["vic"][0])  # a new name, the same address
        assert by_address.status_code == 429 and "addr:127.0.0.1" in caplog.text
        clock[0] += login_throttle.BASE_LOCK_S
        assert _try(c, "vic", people["vic"][0]).status_code == 303


def test_a_parallel_burst_gets_no_more_checks_than_the_limit(console_service: Served) -> None:
    service, _people = console_service
    base = base_url(service)

    def one(n: int) -> int:
        with httpx.Client(base_url=base, timeout=30) as c:
            return _try(c, "olga", f"burst-{n}").status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(24)))
    assert sorted(set(codes)) == [401, 429]
    assert codes.count(401) == login_throttle.USER_LIMIT


def test_throttle_bounds_its_memory_and_refusals_add_no_keys() -> None:
    clock = [0.0]
    t = LoginThrottle(clock=lambda: clock[0])
    for _ in range(login_throttle.USER_LIMIT):
        assert not isinstance(t.admit(t.keys("olga", "10.0.0.1")), Refused)
    refused = t.admit(t.keys("olga", "10.0.0.1"))
    assert refused == Refused("user:olga", int(login_throttle.BASE_LOCK_S))
    for n in range(login_throttle.MAX_KEYS + 10):  # refused attempts: no keys, no eviction
        assert isinstance(t.admit(("user:olga", f"addr:{n}")), Refused)
    assert len(t._keys) == 2
    for n in range(login_throttle.MAX_KEYS + 10):
        t.admit((f"user:n{n}",))
    assert len(t._keys) == login_throttle.MAX_KEYS


def test_an_internal_error_is_a_page_on_the_console_and_json_on_the_api(
    console_service: Served,
) -> None:
    """A real fault (the alarms table gone from the database) behind both front doors."""
    service, people = console_service
    base = base_url(service)
    op, _csrf = http_login(base, "olga", people["olga"][0])
    with service.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE alarms RENAME TO alarms_gone")
    try:
        _is_page(op.get("/alarms"), 500, "Something went wrong")
        with httpx.Client(base_url=base, timeout=20) as c:
            r = c.get("/api/v1/alarms", headers={"Authorization": f"Bearer {people['olga'][1]}"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
    finally:
        op.close()
