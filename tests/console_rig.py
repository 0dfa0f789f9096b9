"""The web console's test rig: a fleet with an operator and a viewer, and how to log in.

- ``console_site``: fleet directory (plain HTTP cookies), users ``olga`` (operator) and
  ``vic`` (viewer), the service started and a real ``lockerd`` (SIM-0001) running. Yields
  ``(service, cabinet, {name: (password, token)}, broker)``.
- ``console_service``: the same without a locker, for tests of pages and logins alone.
- ``olga_ready``: what a browser test of ``console_site`` starts from (URL, olga's password and
  token, the locker online); ``console_page``: a page in Debian's chromium.
- ``browser_login`` / ``http_login``: log in through the form, in chromium or with httpx.
- ``door_forced``: a light second locker (SIM-0002, its own certificate) reports a forced
  door, which raises an alarm.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, ViewportSize, expect

from locker.fleet.service.app import FleetService
from locker.sim.broker import Broker
from locker.sim.cabinet import SimCabinet
from tests.broker import paho_client
from tests.fleet_rig import add_user, api, cabinet, fleet_dir, start_service, wait_online
from tests.panel_rig import browser

PLAIN_HTTP = "[http]\nsecure_cookies = false\n"  # the tests talk plain HTTP to 127.0.0.1
ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
PEOPLE = (("olga", "operator"), ("vic", "viewer"))

Site = tuple[FleetService, SimCabinet, dict[str, tuple[str, str]], Broker]


def _people(d: Path) -> dict[str, tuple[str, str]]:
    people = {}
    for name, role in PEOPLE:
        new = add_user(d, name, role)
        people[name] = (new.password, new.token)
    return people


@pytest.fixture
def console_site(tmp_path: Path, service_broker: Broker) -> Iterator[Site]:
    d = fleet_dir(tmp_path, service_broker, PLAIN_HTTP)
    people = _people(d)
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    cab.start()
    try:
        yield service, cab, people, service_broker
    finally:
        service.stop()
        cab.close()


@pytest.fixture
def console_service(
    tmp_path: Path, service_broker: Broker
) -> Iterator[tuple[FleetService, dict[str, tuple[str, str]]]]:
    d = fleet_dir(tmp_path, service_broker, PLAIN_HTTP)
    people = _people(d)
    service = start_service(d)
    try:
        yield service, people
    finally:
        service.stop()


def base_url(service: FleetService) -> str:
    return f"http://127.0.0.1:{service.port}"


def olga_ready(site: Site) -> tuple[str, str, str]:
    """The console's base URL, the operator olga's password and API token, once the site's
    locker is online; ``ARTIFACTS`` exists for screenshots."""
    service, _cab, people, _broker = site
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    password, token = people["olga"]
    with api(service, token) as c:
        wait_online(c)
    return base_url(service), password, token


@contextlib.contextmanager
def console_page(viewport: ViewportSize) -> Iterator[Page]:
    """A new page of that size in Debian's chromium, closed with the browser afterwards."""
    with browser() as b:
        yield b.new_page(viewport=viewport)


def browser_login(page: Page, base: str, name: str, password: str) -> None:
    page.goto(base + "/")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("#login button")
    expect(page.locator("#who")).to_contain_text(name)


def form_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def http_login(base: str, name: str, password: str) -> tuple[httpx.Client, str]:
    """A logged-in httpx client and its session's CSRF token."""
    client = httpx.Client(base_url=base, timeout=20)
    login_csrf = form_csrf(client.get("/login").text)
    r = client.post("/login", data={"name": name, "password": password, "csrf": login_csrf})
    assert r.status_code == 303, r.text
    return client, form_csrf(client.get("/").text)


def door_forced(broker: Broker, locker: str) -> None:
    """A light locker speaking the contract: one door_forced event with its own cert."""
    client = paho_client(broker.endpoint(locker), locker)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        body = {
            "v": 1,
            "epoch": "light-1",
            "seq": 1,
            "type": "door_forced",
            "compartment": "A1",
            "ts": "2026-11-29T10:00:00Z",
            "data": {},
        }
        info = client.publish(f"lockers/{locker}/evt/door_forced", json.dumps(body), qos=1)
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
