"""The front panel recovers by itself and tells the truth about what works (a newcomer's
break-test of the panel; DESIGN section 12), in a real browser against a real daemon:

- event-stream clients that went away free their slots within a second or two, and a page that
  met ``503 too many streams`` (or any stream error) reconnects by itself, with a bounded
  back-off, and shows the live state;
- with the keypad or the scanner (or both) missing at start, the page says what still works,
  in every language, and the normal instructions come back with the device;
- bad scans are refused in the scanner's words, never "type the whole code";
- the on-screen keypad works without JavaScript (a form), and keyboard focus is clearly visible.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from playwright.sync_api import Browser, expect

from locker.cabinet.panel import texts
from locker.cabinet.panel.view import Message
from locker.cabinet.panel.web import MAX_STREAMS, PanelServer
from tests.conftest import wait_for
from tests.panel_rig import PanelCabinet, cabinet, chromium, expect_message, screenshot

pytestmark = pytest.mark.timeout(180)
_ = cabinet, chromium  # fixtures


def _stream(server: PanelServer) -> socket.socket:
    """``curl -N http://PANEL/events``: a client that has its stream's headers."""
    s = socket.create_connection((server.host, server.port), timeout=5)
    s.sendall(f"GET /events HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "the server closed the stream"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    return s


def _text(key: str, lang: str = "en") -> str:
    return texts.render(Message("idle", key), lang, 0.0)


def test_slots_of_clients_that_went_away_are_freed_and_a_new_page_is_live(
    cabinet: PanelCabinet, chromium: Browser
) -> None:
    """The break-test's input: eight ``curl -N -m 1 /events`` (each gone a second later),
    then the kiosk page. The slots are free again within ~1 s and the page follows the
    locker at once."""
    server = cabinet.server
    dead = [_stream(server) for _ in range(MAX_STREAMS)]
    wait_for(lambda: server.active_streams == MAX_STREAMS, what="all stream slots taken")
    for s in dead:
        s.close()
    wait_for(lambda: server.active_streams == 0, 3.0, what="slots of closed clients freed")
    page = cabinet.open(chromium)  # waits for data-sse=open
    expect_message(page, "idle")
    cabinet.rig.press("12")
    expect_message(page, "entry", timeout=2_000)


def test_a_page_turned_away_with_503_reconnects_by_itself(
    cabinet: PanelCabinet, chromium: Browser
) -> None:
    """Every slot held by a live client: the page gets 503 and says it is retrying; once the
    clients leave, it reconnects within its back-off bound (8 s, jittered) without a reload
    and shows what happened meanwhile."""
    server = cabinet.server
    held = [_stream(server) for _ in range(MAX_STREAMS)]
    page = chromium.new_page(viewport={"width": 800, "height": 480})
    try:
        page.goto(cabinet.url)
        expect(page.locator("body")).to_have_attribute("data-sse", "retrying", timeout=5_000)
        cabinet.rig.press("34")  # the server has it; the page cannot know yet
    finally:
        for s in held:
            s.close()
    expect(page.locator("body")).to_have_attribute("data-sse", "open", timeout=15_000)
    expect_message(page, "entry", timeout=2_000)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
    page.close()


@pytest.mark.parametrize(
    ("unplugged", "key"),
    [
        (("scanner",), "idle.no_scanner"),
        (("keypad",), "idle.no_keypad"),
        (("keypad", "scanner"), "idle.out_of_order"),
    ],
)
def test_missing_inputs_the_page_says_what_still_works(
    tmp_path: Path,
    mock_factory: MockFactory,
    chromium: Browser,
    unplugged: tuple[str, ...],
    key: str,
) -> None:
    cab = PanelCabinet(tmp_path, mock_factory, panel={"touch_keypad": False}, unplugged=unplugged)
    try:
        rig = cab.rig
        for device in unplugged:
            rig.wait_event("hardware_fault", device=device)
        page = cab.open(chromium)
        msg = page.locator("#message")
        expect_message(page, "idle")
        expect(msg).to_have_text(_text(key))
        expect(msg).to_have_attribute("data-out-of-order", " ".join(sorted(unplugged)))
        screenshot(page, key.replace(".", "-"))
        for lang in ("de", "pl"):
            page.locator(f'#languages button[value="{lang}"]').click()
            expect(page.locator("html")).to_have_attribute("lang", lang)
            expect(msg).to_have_text(_text(key, lang))
        page.locator('#languages button[value="en"]').click()
        for device in unplugged:  # each is reported once, however often it is retried
            getattr(rig, device).plug()
            rig.wait_event("hardware_recovered", device=device)
            assert len(rig.matching("hardware_fault", device=device)) == 1
        expect(msg).to_have_text(_text("idle"))
        assert msg.get_attribute("data-out-of-order") is None
    finally:
        cab.close()


@pytest.mark.parametrize("scan", [b"hello", b"LK1:AAAA", b"\x00\xff\xfe\x81binary"])
def test_a_bad_scan_is_refused_in_the_scanners_words(
    cabinet: PanelCabinet, chromium: Browser, scan: bytes
) -> None:
    page = cabinet.open(chromium)
    cabinet.rig.scanner.write(scan + b"\r")
    expect_message(page, "denied", reason="malformed")
    msg = page.locator("#message")
    expect(msg).to_have_text("This QR code is not valid.")
    assert "type" not in (msg.text_content() or "").lower()


def test_the_on_screen_keypad_works_without_javascript(
    cabinet: PanelCabinet, chromium: Browser
) -> None:
    rig = cabinet.rig
    comp, drop, _ = rig.assign("P9", "S")
    page = cabinet.open(chromium, javascript=False)
    try:
        assert page.locator("body").get_attribute("data-sse") is None  # no script ran
        for k in drop[:3]:
            page.locator(f'#keypad .key[data-key="{k}"]').click()
            page.wait_for_load_state()
        expect_message(page, "entry")
        expect(page.locator("#message")).to_contain_text("\u25cf" * 3)
        for k in [*drop[3:], "#"]:
            page.locator(f'#keypad .key[data-key="{k}"]').click()
            page.wait_for_load_state()
        rig.wait_event("access_granted", parcel="P9")
        page.goto(cabinet.url)
        expect_message(page, "granted", compartment=comp)
    finally:
        page.context.close()


def test_keyboard_focus_is_clearly_visible(cabinet: PanelCabinet, chromium: Browser) -> None:
    """WCAG 2.4.7 / 2.4.11: the focused control has a thick, bright ring outside it."""
    page = cabinet.open(chromium)
    page.locator("#keypad .key").first.focus()
    page.keyboard.press("Tab")  # keyboard focus: :focus-visible applies
    focused = page.evaluate(
        """() => { const e = document.activeElement; const s = getComputedStyle(e);
                   return [e.className, s.outlineStyle, s.outlineWidth, s.outlineColor,
                           s.outlineOffset]; }"""
    )
    cls, style, width, color, offset = focused
    assert cls == "key"
    assert style == "solid"
    assert float(width.removesuffix("px")) >= 3
    assert color == "rgb(255, 221, 0)"  # yellow on the black page: contrast about 15:1
    assert float(offset.removesuffix("px")) >= 2
    screenshot(page, "focus")


def test_a_panel_port_already_taken_is_said_once_and_the_locker_serves(
    tmp_path: Path, mock_factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``[panel] listen`` on a port another program holds: one ERROR line and one
    ``hardware_fault`` on ``panel`` (not a line every 2 s), and codes still open doors."""
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        caplog.set_level("INFO", logger="locker.cabinet.panel.web")
        cab = PanelCabinet(tmp_path, mock_factory, panel={"listen": f"127.0.0.1:{port}"})
        try:
            rig = cab.rig
            fault = rig.wait_event("hardware_fault", device="panel")
            assert "cannot listen" in fault["data"]["detail"]
            server = cab.server
            wait_for(lambda: server.bind_failures >= 2, 10, what="a second bind attempt")
            comp, drop, _ = rig.assign("P1", "S")
            rig.press(drop + "#")
            rig.wait_event("access_granted", parcel="P1")
            errors = [
                r
                for r in caplog.records
                if r.name == "locker.cabinet.panel.web" and "cannot listen" in r.getMessage()
            ]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            assert len(rig.matching("hardware_fault", device="panel")) == 1
            rig.set_door(comp, opened=True)
            rig.wait_event("door_opened", parcel="P1")
            rig.set_door(comp, opened=False)
            rig.wait_event("parcel_deposited", parcel="P1")
            taken.close()  # the other program lets go: the panel comes up at its address
            rig.wait_event("hardware_recovered", device="panel", timeout=15)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                assert r.read() == b"ok\n"
        finally:
            cab.close()
