"""The console on a 360 px phone and for assistive technology, in a real chromium.

Every page is loaded at a 360x740 viewport with real content (a live lockerd with a parcel,
an alarm from a second locker): no page may scroll sideways
(``document.documentElement.scrollWidth <= 360``) and the alarm's Acknowledge button must
lie inside the screen. Every form control must have a computed accessible name from
chromium's own accessibility tree (CDP ``Accessibility.getFullAXTree``) that does not come
from a placeholder, every visible input and select must be labelled (a ``<label>`` or ARIA),
and no two buttons on a page may share a name (the break-test found four "Send"). The
break-test measured ``/alarms`` 722 px, ``/`` 528 px and ``/parcels`` 424 px wide.
Screenshots go to ``tests/artifacts/console/phone-*.png``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from playwright.sync_api import Page, ViewportSize, expect

from tests.conftest import wait_for
from tests.console_rig import (
    ARTIFACTS,
    Site,
    browser_login,
    console_page,
    console_site,
    door_forced,
    olga_ready,
)
from tests.fleet_rig import api, service_broker

_ = service_broker, console_site
PHONE: ViewportSize = {"width": 360, "height": 740}
CONTROL_ROLES = {"button", "textbox", "searchbox", "combobox", "checkbox", "radio", "listbox"}

# inputs and selects a person can see that have neither a <label> nor an ARIA name
_UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter((el) => el.type !== 'hidden')
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !el.getAttribute('aria-labelledby'))
  .map((el) => el.outerHTML)"""


def _controls(page: Page) -> list[tuple[str, str, list[str]]]:
    """(role, accessible name, where the name came from) of every control chromium sees."""
    cdp = page.context.new_cdp_session(page)
    try:
        tree: dict[str, Any] = cdp.send("Accessibility.getFullAXTree")
    finally:
        cdp.detach()
    out = []
    for node in tree["nodes"]:
        role = node.get("role", {}).get("value", "")
        if node.get("ignored") or role not in CONTROL_ROLES:
            continue
        name = node.get("name", {})
        sources = [
            s.get("type", "") + ":" + str(s.get("attribute", ""))
            for s in name.get("sources", [])
            if "value" in s and not s.get("superseded")
        ]
        out.append((role, str(name.get("value", "")).strip(), sources))
    return out


def _check(page: Page, what: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{what} is {width} px wide at {PHONE['width']} px"
    assert page.evaluate(_UNLABELLED) == [], f"{what}: unlabelled controls"
    controls = _controls(page)
    assert controls, f"{what}: no controls found (the check would be empty)"
    nameless = [c for c in controls if not c[1] or any("placeholder" in s for s in c[2])]
    assert nameless == [], f"{what}: controls without a real name: {nameless}"
    buttons = Counter(name for role, name, _s in controls if role == "button")
    assert [n for n, k in buttons.items() if k > 1] == [], f"{what}: same-named buttons"
    slug = what.strip("/").replace("/", "-").replace("?", "-").replace("=", "-") or "fleet"
    page.screenshot(path=str(ARTIFACTS / f"phone-{slug}.png"), full_page=True)


def test_console_fits_a_phone_and_names_every_control(console_site: Site) -> None:
    service, _cab, _people, broker = console_site
    base, password, token = olga_ready(console_site)
    with api(service, token) as c:
        door_forced(broker, "SIM-0002")
        wait_for(lambda: c.get("/api/v1/alarms").json(), 15, what="alarm raised")
        for n in (1, 2):
            issued = c.post(
                "/api/v1/parcels",
                json={"locker": "SIM-0001", "parcel": f"PHONE-LONG-PARCEL-ID-{n}", "size": "M"},
            )
            assert issued.status_code in (200, 201), issued.text
    with console_page(PHONE) as page:
        page.goto(base + "/login")
        _check(page, "/login")
        browser_login(page, base, "olga", password)
        for path in (
            "/",
            "/lockers/SIM-0001",
            "/alarms",
            "/alarms?state=all",
            "/parcels",
            "/parcels?q=PHONE",
            "/parcels?q=PHONE-LONG-PARCEL-ID-1",
            "/lockers/NOPE",
            "/no/such/page",
        ):
            page.goto(base + path)
            _check(page, path)
        page.goto(base + "/alarms")
        ack = page.locator('tr.alarm[data-kind="door_forced"] button')
        expect(ack).to_have_accessible_name("Acknowledge alarm #1")
        box = ack.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        page.get_by_label("Note on alarm #1").fill("seen on the phone")
        ack.click()
        expect(page.locator("#flash")).to_have_text("Alarm #1 acknowledged.")
        expect(page.locator('tr.alarm[data-kind="door_forced"]')).to_have_count(0)
        page.goto(base + "/lockers/SIM-0001")
        expect(page.get_by_role("button", name="Send open")).to_be_visible()
        expect(page.get_by_role("button", name="Send lockdown")).to_be_visible()
