"""The fleet console in a real browser (Debian's chromium driven by Playwright) and its CSRF.

A real lockerd and a light second locker (a paho client with that locker's certificate,
speaking the contract) report to the service. An operator logs in, sees the locker online,
then offline and online again without a reload, watches a keypad deposit appear in the locker
page's timeline without a reload, and acknowledges an alarm with a note. Screenshots go to
``tests/artifacts/console/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from locker.fleet.service.app import FleetService
from locker.sim.broker import Broker
from locker.sim.cabinet import SimCabinet
from tests.broker import paho_client
from tests.conftest import wait_for
from tests.fleet_rig import add_user, api, cabinet, fleet_dir, service_broker, start_service
from tests.panel_rig import CHROMIUM, CHROMIUM_ARGS

_ = service_broker
ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
PLAIN_HTTP = "[http]\nsecure_cookies = false\n"  # the test talks plain HTTP to 127.0.0.1


@pytest.fixture
def site(
    tmp_path: Path, service_broker: Broker
) -> Iterator[tuple[FleetService, SimCabinet, dict[str, tuple[str, str]], Broker]]:
    d = fleet_dir(tmp_path, service_broker, PLAIN_HTTP)
    people = {}
    for name, role in (("olga", "operator"), ("vic", "viewer")):
        new = add_user(d, name, role)
        people[name] = (new.password, new.token)
    cab = cabinet(d, service_broker, tmp_path / "cab")
    service = start_service(d)
    cab.start()
    try:
        yield service, cab, people, service_broker
    finally:
        service.stop()
        cab.close()


def _login(page: Page, base: str, name: str, password: str) -> None:
    page.goto(base + "/")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("#login button")
    expect(page.locator("#who")).to_contain_text(name)


def _door_forced(broker: Broker, locker: str) -> None:
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


def test_console_login_live_deposit_and_alarm_ack(
    site: tuple[FleetService, SimCabinet, dict[str, tuple[str, str]], Broker],
) -> None:
    service, cab, people, broker = site
    base = f"http://127.0.0.1:{service.port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    password, token = people["olga"]
    with api(service, token) as c:
        wait_for(
            lambda: [x["online"] for x in c.get("/api/v1/lockers").json()] == [True],
            20,
            what="locker online",
        )
        issued = c.post(
            "/api/v1/parcels", json={"locker": "SIM-0001", "parcel": "WEB-1", "size": "M"}
        ).json()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            _login(page, base, "olga", password)
            row = page.locator('tr[data-locker="SIM-0001"]')
            expect(row).to_have_attribute("data-online", "true")
            page.wait_for_selector("body[data-sse=open]")
            cab.stop()  # a clean stop publishes offline: the row turns without a reload
            expect(row).to_have_attribute("data-online", "false", timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "fleet-offline.png"), full_page=True)
            cab.start()
            expect(row).to_have_attribute("data-online", "true", timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)
            page.click('a[href="/lockers/SIM-0001"]')
            page.wait_for_selector("body[data-sse=open]")
            cab.press(issued["dropoff_code"] + "#")
            deposit = page.locator('#timeline li[data-type="parcel_deposited"]')
            expect(deposit).to_have_count(1, timeout=20_000)
            expect(deposit).to_have_class(re.compile("new"))  # arrived live, not by reload
            cell = page.locator(f'#grid [data-compartment="{issued["compartment"]}"]')
            expect(cell).to_have_attribute("data-state", "occupied", timeout=10_000)
            page.screenshot(path=str(ARTIFACTS / "locker.png"), full_page=True)
            _door_forced(broker, "SIM-0002")
            with api(service, token) as c:
                wait_for(lambda: c.get("/api/v1/alarms").json(), 15, what="alarm raised")
            page.goto(base + "/alarms")
            alarm = page.locator('tr.alarm[data-kind="door_forced"]')
            expect(alarm).to_have_count(1)
            page.screenshot(path=str(ARTIFACTS / "alarms.png"), full_page=True)
            alarm.locator("input[name=note]").fill("checked on camera")
            alarm.locator("button").click()
            expect(page.locator('tr.alarm[data-kind="door_forced"]')).to_have_count(0)
            page.goto(base + "/parcels?q=WEB-1")
            expect(page.locator("#history li[data-what=parcel_deposited]")).to_have_count(1)
            page.screenshot(path=str(ARTIFACTS / "parcel.png"), full_page=True)
        finally:
            browser.close()
    with api(service, token) as c:
        acked = c.get("/api/v1/alarms?state=acked").json()
    assert [(a["kind"], a["acked_by"], a["note"]) for a in acked] == [
        ("door_forced", "olga", "checked on camera")
    ]


def _http_login(base: str, name: str, password: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=20)
    form = client.get("/login").text
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert login_csrf
    r = client.post(
        "/login", data={"name": name, "password": password, "csrf": login_csrf.group(1)}
    )
    assert r.status_code == 303, r.text
    page = client.get("/").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    return client, csrf.group(1)


def test_console_forms_need_the_session_csrf_token_and_a_viewer_cannot_act(
    site: tuple[FleetService, SimCabinet, dict[str, tuple[str, str]], Broker],
) -> None:
    service, _cab, people, _b = site
    base = f"http://127.0.0.1:{service.port}"
    # a forged login (no double-submit cookie) is refused
    r = httpx.post(base + "/login", data={"name": "olga", "password": people["olga"][0]})
    assert r.status_code == 403
    assert httpx.get(base + "/", timeout=10).headers["location"] == "/login"
    op, op_csrf = _http_login(base, "olga", people["olga"][0])
    viewer, v_csrf = _http_login(base, "vic", people["vic"][0])
    try:
        form = {"action": "lockdown", "flag": "true", "reason": "csrf test"}
        assert op.post("/lockers/SIM-0001/actions", data=form).status_code == 403
        bad = op.post("/lockers/SIM-0001/actions", data=form | {"csrf": "x" + op_csrf})
        assert bad.status_code == 403
        assert (
            viewer.post("/lockers/SIM-0001/actions", data=form | {"csrf": v_csrf}).status_code
            == 403
        )
        assert "Actions" not in viewer.get("/lockers/SIM-0001").text
        ok = op.post("/lockers/SIM-0001/actions", data=form | {"csrf": op_csrf})
        assert ok.status_code == 303 and "lockdown%3A+done" in ok.headers["location"]
        unlock = form | {"flag": "false", "csrf": op_csrf}
        assert op.post("/lockers/SIM-0001/actions", data=unlock).status_code == 303
    finally:
        op.close()
        viewer.close()
