"""The fleet console in a real browser (Debian's chromium driven by Playwright) and its CSRF.

A real lockerd and a light second locker (a paho client with that locker's certificate,
speaking the contract) report to the service. An operator logs in, sees the locker online,
then offline and online again without a reload, watches a keypad deposit appear in the locker
page's timeline without a reload, and acknowledges an alarm with a note. Screenshots go to
``tests/artifacts/console/``.
"""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import expect

from tests.conftest import wait_for
from tests.console_rig import (
    ARTIFACTS,
    Site,
    base_url,
    browser_login,
    console_page,
    console_site,
    door_forced,
    http_login,
    olga_ready,
)
from tests.fleet_rig import api, service_broker

_ = service_broker, console_site


def test_console_login_live_deposit_and_alarm_ack(console_site: Site) -> None:
    service, cab, _people, broker = console_site
    base, password, token = olga_ready(console_site)
    with api(service, token) as c:
        issued = c.post(
            "/api/v1/parcels", json={"locker": "SIM-0001", "parcel": "WEB-1", "size": "M"}
        ).json()
    with console_page({"width": 1100, "height": 800}) as page:
        browser_login(page, base, "olga", password)
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
        # the summary line follows the state too (it stayed at its page-load values)
        seq = int(deposit.get_attribute("data-seq") or 0)
        summary = page.locator("#summary")
        wait_for(lambda: int(summary.get_attribute("data-last-seq") or 0) >= seq, 10,
                 what="the summary's last seq, live")  # fmt: skip
        page.screenshot(path=str(ARTIFACTS / "locker.png"), full_page=True)
        door_forced(broker, "SIM-0002")
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
    with api(service, token) as c:
        acked = c.get("/api/v1/alarms?state=acked").json()
    assert [(a["kind"], a["acked_by"], a["note"]) for a in acked] == [
        ("door_forced", "olga", "checked on camera")
    ]


def test_console_forms_need_the_session_csrf_token_and_a_viewer_cannot_act(
    console_site: Site,
) -> None:
    service, _cab, people, _b = console_site
    base = base_url(service)
    # a forged login (no double-submit cookie) is refused
    r = httpx.post(base + "/login", data={"name": "olga", "password": people["olga"][0]})
    assert r.status_code == 403
    assert httpx.get(base + "/", timeout=10).headers["location"] == "/login"
    op, op_csrf = http_login(base, "olga", people["olga"][0])
    viewer, v_csrf = http_login(base, "vic", people["vic"][0])
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
        assert ok.status_code == 303 and ok.headers["location"] == "/lockers/SIM-0001"
        unlock = form | {"flag": "false", "csrf": op_csrf}
        assert op.post("/lockers/SIM-0001/actions", data=unlock).status_code == 303
    finally:
        op.close()
        viewer.close()


PHISH = "Session expired. Call support on 0800 555 0100 and read them your password"


def _flash(html: str) -> str | None:
    found = re.search(r'<p id="flash" class="flash (\w+)" role="status">([^<]*)</p>', html)
    return None if found is None else f"{found.group(1)}: {found.group(2)}"


def test_console_messages_come_from_the_server_never_from_the_link(console_site: Site) -> None:
    """The break-test's link no longer shows its text; an action's outcome is shown once, on
    the next page of the session that acted, and a flash cookie taken to another session or
    altered shows nothing."""
    service, _cab, people, _b = console_site
    base = base_url(service)
    op, csrf = http_login(base, "olga", people["olga"][0])
    viewer, _ = http_login(base, "vic", people["vic"][0])
    try:
        lured = op.get("/lockers/SIM-0001", params={"msg": PHISH, "kind": "ok"})
        assert lured.status_code == 200
        assert "Session expired" not in lured.text and _flash(lured.text) is None
        form = {"action": "lockdown", "flag": "true", "reason": "flash test", "csrf": csrf}
        sent = op.post("/lockers/SIM-0001/actions", data=form)
        assert sent.status_code == 303 and sent.headers["location"] == "/lockers/SIM-0001"
        cookie = op.cookies["fleet_flash"]
        payload, mac = cookie.split(".")
        for stolen in (  # another session's flash, then one whose text was changed
            f"fleet_session={viewer.cookies['fleet_session']}; fleet_flash={cookie}",
            f"fleet_session={op.cookies['fleet_session']}; fleet_flash={payload[:-2]}AA.{mac}",
        ):
            page = httpx.get(base + "/lockers/SIM-0001", headers={"Cookie": stolen}, timeout=20)
            assert page.status_code == 200 and _flash(page.text) is None
        assert _flash(op.get("/lockers/SIM-0001").text) == "ok: lockdown: done"
        assert _flash(op.get("/lockers/SIM-0001").text) is None  # once only
        empty = op.post("/lockers/SIM-0001/actions", data=form | {"reason": " "})
        assert empty.status_code == 422 and "A reason is required" in empty.text
        assert _flash(op.get("/lockers/SIM-0001").text) is None  # nothing was sent
        unlock = form | {"flag": "false"}
        assert op.post("/lockers/SIM-0001/actions", data=unlock).status_code == 303
        assert _flash(op.get("/lockers/SIM-0001").text) == "ok: lockdown: done"
    finally:
        op.close()
        viewer.close()
