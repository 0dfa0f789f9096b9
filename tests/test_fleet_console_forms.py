"""The console's action forms validate every field, and its live stream ends with its session.

Reported by a newcomer: ``action=set_service compartment=A5 flag=maybe`` took A5 out of
service and showed "done"; ``action=lockdown`` without a flag lifted the lockdown; a reason
was cut at 200 characters and an alarm note at 500 without a word; the lockdown form offered
"on" when the locker was already locked down; the fleet page counted reserved compartments as
occupied; /console/events kept streaming after logout. A real lockerd answers the commands.
"""

from __future__ import annotations

import queue
import re
import threading
import time

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select, update

from locker.fleet.service.console import SESSION_CHECK_S
from locker.fleet.service.console_forms import NOTE_MAX, REASON_MAX, reply_note
from locker.fleet.service.db import commands, sessions
from tests.conftest import wait_for
from tests.console_rig import (
    Site,
    browser_login,
    console_site,
    door_forced,
    http_login,
    olga_ready,
)
from tests.domain import Sim, command
from tests.fleet_rig import api, service_broker
from tests.panel_rig import browser

_ = service_broker, console_site

ACTIONS = "/lockers/SIM-0001/actions"


def _sent(site: Site) -> int:
    with site[0].engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(commands)).scalar_one())


def _problems(html: str) -> list[str]:
    block = re.search(r'<ul id="problems">(.*?)</ul>', html, re.S)
    assert block, html[:800]
    return re.findall(r"<li>(.*?)</li>", block.group(1))


def _selected(html: str, action: str, name: str) -> str:
    form = re.search(rf'data-action="{action}">(.*?)</form>', html, re.S)
    assert form
    sel = re.search(rf'<select name="{name}">(.*?)</select>', form.group(1), re.S)
    assert sel
    chosen = re.search(r'<option value="([^"]+)" selected>', sel.group(1))
    assert chosen, sel.group(1)
    return chosen.group(1)


def test_bad_fields_are_refused_on_one_page_and_nothing_is_sent(console_site: Site) -> None:
    base, password, token = olga_ready(console_site)
    op, csrf = http_login(base, "olga", password)
    try:
        before = _sent(console_site)
        for form, expected in (
            ({"action": "set_service", "compartment": "A5", "flag": "maybe"}, ["maybe"]),
            ({"action": "lockdown"}, ["missing"]),
            ({"action": "lockdown", "flag": "TRUE"}, ["'TRUE'"]),
            ({"action": "open", "compartment": "Z9"}, ["'Z9'"]),
            ({"action": "explode"}, ["Unknown action"]),
            ({"action": "reset_lockout", "flag": "true"}, ["do not belong"]),
            (
                {"action": "set_service", "compartment": "Q", "flag": "x", "reason": " "},
                ["'Q'", "'x'", "reason is required"],
            ),
            ({"action": "reset_lockout", "reason": "r" * (REASON_MAX + 1)}, [f"{REASON_MAX}"]),
            # a NUL was a 500 on PostgreSQL (text columns cannot hold it): the API's own check
            ({"action": "reset_lockout", "reason": "x\x00y"}, ["printable"]),
        ):
            data = {"reason": "break test", **form, "csrf": csrf}
            r = op.post(ACTIONS, data=data)
            assert r.status_code == 422, (form, r.status_code)
            assert "Nothing was sent" in r.text
            lines = _problems(r.text)
            assert len(lines) == len(expected), lines
            for line, word in zip(lines, expected, strict=True):
                assert word in line.replace("&#39;", "'"), (line, word)
        assert _sent(console_site) == before  # nothing reached the locker
        with api(console_site[0], token) as c:
            a5 = next(
                x
                for x in c.get("/api/v1/lockers/SIM-0001").json()["compartments"]
                if x["id"] == "A5"
            )
        assert a5["in_service"] is True
        # the longest allowed reason goes through whole
        ok = op.post(
            ACTIONS, data={"action": "reset_lockout", "reason": "r" * REASON_MAX, "csrf": csrf}
        )
        assert ok.status_code == 303
        with console_site[0].engine.connect() as conn:
            kept = conn.execute(select(commands.c.reason)).scalars().all()
        assert kept == ["r" * REASON_MAX]
    finally:
        op.close()


def test_forms_default_to_the_change_the_state_calls_for(console_site: Site) -> None:
    base, password, token = olga_ready(console_site)
    op, csrf = http_login(base, "olga", password)
    try:
        page = op.get("/lockers/SIM-0001").text
        assert _selected(page, "lockdown", "flag") == "true"  # not locked down: offer on
        assert _selected(page, "set_service", "flag") == "false"  # all in service: take out
        for data in (
            {"action": "lockdown", "flag": "true"},
            {"action": "set_service", "compartment": "A5", "flag": "false"},
        ):
            r = op.post(ACTIONS, data=data | {"reason": "defaults", "csrf": csrf})
            assert r.status_code == 303
        with api(console_site[0], token) as c:

            def changed() -> bool:
                doc = c.get("/api/v1/lockers/SIM-0001").json()
                a5 = next(x for x in doc["compartments"] if x["id"] == "A5")
                return bool(doc["lockdown"]) and a5["in_service"] is False

            wait_for(changed, 15, what="lockdown on and A5 out of service in the fleet")
        page = op.get("/lockers/SIM-0001").text
        assert _selected(page, "lockdown", "flag") == "false"
        assert _selected(page, "set_service", "compartment") == "A5"
        assert _selected(page, "set_service", "flag") == "true"
    finally:
        op.close()


def test_alarm_note_has_the_api_limit_and_is_never_cut(console_site: Site) -> None:
    service, _cab, _people, broker = console_site
    base, password, token = olga_ready(console_site)
    door_forced(broker, "SIM-0002")
    with api(service, token) as c:
        wait_for(lambda: c.get("/api/v1/alarms").json(), 15, what="alarm raised")
        alarm_id = c.get("/api/v1/alarms").json()[0]["id"]
    op, csrf = http_login(base, "olga", password)
    try:
        long = op.post(f"/alarms/{alarm_id}/ack", data={"note": "n" * (NOTE_MAX + 1), "csrf": csrf})
        assert long.status_code == 422
        assert str(NOTE_MAX) in _problems(long.text)[0]
        nul = op.post(f"/alarms/{alarm_id}/ack", data={"note": "a\x00b", "csrf": csrf})
        assert nul.status_code == 422 and "printable" in _problems(nul.text)[0]
        with api(service, token) as c:
            assert [a["state"] for a in c.get("/api/v1/alarms").json()] == ["open"]
        ok = op.post(f"/alarms/{alarm_id}/ack", data={"note": "n" * NOTE_MAX, "csrf": csrf})
        assert ok.status_code == 303
        with api(service, token) as c:
            acked = c.get("/api/v1/alarms?state=acked").json()
        assert [len(a["note"]) for a in acked] == [NOTE_MAX]
    finally:
        op.close()


def test_fleet_page_counts_reserved_apart_from_occupied(console_site: Site) -> None:
    service, _cab, _people, _broker = console_site
    base, password, token = olga_ready(console_site)
    with api(service, token) as c:
        r = c.post("/api/v1/parcels", json={"locker": "SIM-0001", "parcel": "RES-1", "size": "M"})
        assert r.status_code == 201, r.text
        wait_for(
            lambda: any(
                x["state"] == "reserved"
                for x in c.get("/api/v1/lockers/SIM-0001").json()["compartments"]
            ),
            15,
            what="the reservation in the fleet",
        )
    op, _csrf = http_login(base, "olga", password)
    try:
        html = op.get("/").text
    finally:
        op.close()
    occupied = re.search(r'class="occupied">(\d+) / (\d+)<', html)
    reserved = re.search(r'class="reserved">(\d+)<', html)
    assert occupied and reserved
    assert occupied.group(1) == "0" and int(occupied.group(2)) > 1
    assert reserved.group(1) == "1"


@pytest.mark.parametrize("end", ["logout", "expiry"])
def test_live_stream_ends_soon_after_logout_or_expiry(console_site: Site, end: str) -> None:
    base, password, _token = olga_ready(console_site)
    op, csrf = http_login(base, "olga", password)
    lines: queue.Queue[str | None] = queue.Queue()
    cookies = dict(op.cookies)

    def read() -> None:
        try:
            with httpx.stream(
                "GET", base + "/console/events", cookies=cookies, timeout=30
            ) as stream:
                for line in stream.iter_lines():
                    lines.put(line)
        finally:
            lines.put(None)  # the server ended the stream

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert lines.get(timeout=10) == ": connected"
    if end == "logout":
        assert op.post("/logout", data={"csrf": csrf}).status_code == 303
    else:  # the 12 h are over: the session row says so, nothing else changes
        with console_site[0].engine.begin() as conn:
            conn.execute(update(sessions).values(expires=time.time() - 1))
    ended_at = time.monotonic()
    seen = []
    while (line := lines.get(timeout=10)) is not None:  # a hang fails with queue.Empty
        seen.append(line)
    assert "event: session_ended" in seen
    assert time.monotonic() - ended_at < SESSION_CHECK_S + 3
    reader.join(5)
    assert httpx.get(base + "/console/events", cookies=cookies, timeout=10).status_code == 401
    op.close()


def test_browser_stream_ends_when_the_session_is_logged_out_elsewhere(console_site: Site) -> None:
    base, password, _token = olga_ready(console_site)
    with browser() as b:
        context = b.new_context(viewport={"width": 1000, "height": 700})
        page = context.new_page()
        browser_login(page, base, "olga", password)
        page.wait_for_selector("body[data-sse=open]")
        other = context.new_page()  # same cookies: the same session
        other.goto(base + "/")
        other.click('form[action="/logout"] button')
        expect(other).to_have_url(re.compile("/login$"))
        expect(page.locator("body")).to_have_attribute("data-sse", "ended", timeout=10_000)
        context.close()


def test_a_set_service_reply_says_what_the_compartment_still_holds() -> None:
    """The flash after ``set_service`` said only "done" while the compartment kept a parcel;
    the note is built from the locker's own reply (the real state machine's result)."""
    sim = Sim()
    cid, _, _ = sim.assign("P1", "M")
    sim.feed(command("set_service", sim.now, compartment=cid, in_service=False, reason="x"))
    moved = sim.last.actions[-1].reply["result"]  # type: ignore[union-attr]
    assert reply_note("set_service", moved) == (
        f"; reservation P1 moved from {cid} to {moved['moved']['to']}"
    )
    xl, _ = sim.deposit("P2", "XL")
    sim.feed(command("set_service", sim.now, compartment=xl, in_service=False, reason="x"))
    holds = sim.last.actions[-1].reply["result"]  # type: ignore[union-attr]
    assert reply_note("set_service", holds).startswith(f"; {xl} still holds parcel P2 (deposited)")
    sim.feed(command("set_service", sim.now, compartment="A1", in_service=False, reason="x"))
    assert reply_note("set_service", sim.last.actions[-1].reply["result"]) == ""  # type: ignore[union-attr]
    assert reply_note("lockdown", holds) == ""
