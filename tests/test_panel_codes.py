"""What a person at a real cabinet reads when a code has been used, when a wrong code is typed
while their door stands open, when an operator lifts a back-off, and for a language number
that does not exist: a real lockerd (pty keypad, GPIO doors) with its web panel, in Debian's
chromium (DESIGN 12's test contract: ``#message`` ``data-state`` / ``data-reason`` /
``data-compartment``).

Reported inputs: the courier re-typing their code while B2 stood open got "Wrong code", and
four or five re-types throttled the keypad for everyone; after ``reset_lockout`` the page kept
counting down; ``**4`` with three languages did nothing; the page asked for a favicon (404).
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from playwright.sync_api import Browser, Response, expect

from tests.conftest import wait_for
from tests.panel_rig import PanelCabinet, chromium, expect_message, screenshot
from tests.panel_rig import quick_backoff_cabinet as cabinet

pytestmark = pytest.mark.timeout(120)
_ = chromium, cabinet  # fixtures


def test_a_used_code_names_its_open_door_and_is_never_a_guess(
    cabinet: PanelCabinet, chromium: Browser
) -> None:
    rig = cabinet.rig
    comp, drop, _ = rig.assign("P1", "M")
    page = cabinet.open(chromium)
    failed: list[str] = []

    def watch(r: Response) -> None:
        if r.status >= 400:
            failed.append(f"{r.status} {r.url}")

    page.on("response", watch)
    page.reload()  # every resource of the page seen by ``watch``
    page.wait_for_selector("body[data-sse=open]")
    message = page.locator("#message")
    rig.press(drop + "#")
    expect_message(page, "granted", compartment=comp)
    expect(message).to_have_text(re.compile(f"Door {comp} is unlocked"))  # not seen open yet
    rig.set_door(comp, opened=True)
    rig.wait_event("door_opened", compartment=comp)
    expect(message).to_have_text(re.compile(f"Door {comp} is open"))
    # the courier types their code again while the door stands open: that door, no guess
    for _ in range(5):
        rig.press(drop + "#")
    rig.wait_event("access_denied", reason="already_used", compartment=comp)
    expect_message(page, "granted", compartment=comp)
    expect(message).to_have_text(re.compile(f"Door {comp} is open"))
    screenshot(page, "already-used-door-open")
    # someone types a wrong code meanwhile: refused, and the open door stays on show
    rig.press("12345678#")
    expect_message(page, "denied", reason="unknown_code")
    expect(page.locator("#door")).to_have_text(comp)
    rig.set_door(comp, opened=False)
    rig.wait_event("parcel_deposited", parcel="P1")
    # after the deposit the code is used up: said so, still no guess
    rig.press(drop + "#")  # counted into the running burst of already_used refusals
    expect_message(page, "denied", reason="already_used")
    expect(message).to_have_text(re.compile("already been used"))
    screenshot(page, "already-used")
    assert not rig.matching("keypad_throttled")
    wait_for(lambda: rig.controller.state.throttle.consecutive == 1, what="one guess only")
    assert [e["compartment"] for e in rig.matching("access_granted")] == [comp]
    assert not failed, failed
    # what the page links to, and the icon a kiosk browser asks for by itself: none is missing
    links = page.evaluate(
        "() => [...document.querySelectorAll('link[href], script[src]')].map(e => e.href || e.src)"
    )
    for url in [*links, cabinet.url + "favicon.ico"]:
        if url.startswith("data:"):
            continue
        with urllib.request.urlopen(url, timeout=5) as r:  # the panel's own http URL
            assert r.status in (200, 204), url


def test_reset_lockout_ends_the_countdown_and_a_missing_language_is_answered(
    cabinet: PanelCabinet, chromium: Browser
) -> None:
    rig = cabinet.rig
    page = cabinet.open(chromium)
    for _ in range(3):
        rig.press("87654321#")
    expect_message(page, "throttled", reason="throttled")
    assert int(page.locator("#message #countdown").inner_text()) <= 30
    rig.command("reset_lockout")
    rig.wait_event("keypad_unlocked")
    expect_message(page, "idle", timeout=3_000)  # at once, not when the 30 s run out
    # three languages offered: * * 4 is answered, never a guess
    rig.press("**4")
    expect_message(page, "denied", reason="malformed")
    expect(page.locator("#message")).to_have_text(re.compile("1 to 3"))
    expect(page.locator("html")).to_have_attribute("lang", "en")
    screenshot(page, "language-unknown")
