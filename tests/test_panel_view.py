"""The front panel's pure parts: the projection of transitions into views, the texts in every
language (catalogs complete, compiled catalogs current, LCD texts that fit), the keypad's
language choice in the state machine, and the ``[panel]`` configuration."""

from __future__ import annotations

import dataclasses
import io
import re
import string
from pathlib import Path
from typing import Any

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from locker.cabinet.config import ConfigError, parse_config
from locker.cabinet.domain.draft import LanguageAction, Transition
from locker.cabinet.domain.model import KeypadEntry, Out, Throttle, fresh_state
from locker.cabinet.panel import texts
from locker.cabinet.panel.hub import PanelHub
from locker.cabinet.panel.lcd import ascii_text, lcd_lines
from locker.cabinet.panel.view import (
    DENIED_HOLD_S,
    IDLE,
    REASONS,
    STATES,
    Layer,
    Message,
    PanelView,
    project,
)
from locker.cabinet.panel.web import payload
from locker.ports import DoorState, KeyPressed, LineScanned
from tests.domain import T0, Sim

LANGS = ("en", "de", "pl")


def _denied(reason: str) -> Out:
    return Out("access_denied", data={"reason": reason, "source": "keypad"})


def _view(
    *events: Out, state: Any = None, prev: PanelView | None = None, now: float = T0
) -> PanelView:
    st = state or fresh_state({"A1": "S", "A2": "S"})
    return project(prev or PanelView(), Transition(st, events), now)


@pytest.mark.parametrize("reason", REASONS)
def test_every_refusal_reason_has_a_state_and_a_text(reason: str) -> None:
    state = fresh_state({"A1": "S"})
    if reason == "throttled":
        state = dataclasses.replace(state, throttle=Throttle(5, (), T0 + 30))
    msg = _view(_denied(reason), state=state).message(T0)
    assert msg.state in STATES
    assert msg.state == {
        "throttled": "throttled",
        "locked_out": "locked_out",
        "lockdown": "lockdown",
    }.get(reason, "denied")
    assert msg.reason == reason
    assert msg.key in texts.MESSAGES and msg.key != "denied.other"


def test_a_refusal_lapses_and_typing_clears_it() -> None:
    view = _view(_denied("unknown_code"))
    assert view.message(T0 + 1).state == "denied"
    assert view.message(T0 + DENIED_HOLD_S + 0.1).state == "idle"
    assert view.next_change(T0) == T0 + DENIED_HOLD_S
    typing = dataclasses.replace(fresh_state({"A1": "S"}), keypad=KeypadEntry("12", False, T0))
    after = project(view, Transition(typing), T0 + 1)
    assert after.message(T0 + 1) == Message("entry", "entry") and after.entry == 2


def test_throttle_counts_down_then_ends() -> None:
    state = dataclasses.replace(fresh_state({"A1": "S"}), throttle=Throttle(5, (), T0 + 30))
    view = _view(
        _denied("unknown_code"), Out("keypad_throttled", data={"delay_s": 30}), state=state
    )
    msg = view.message(T0)
    assert (msg.state, msg.reason, msg.deadline) == ("throttled", "throttled", T0 + 30)
    assert texts.remaining_s(msg, T0 + 10.2) == 20
    assert "20 s" in texts.render(msg, "en", T0 + 10.2)
    assert view.message(T0 + 30).state == "idle"


def test_standing_conditions_by_priority() -> None:
    base = fresh_state({"A1": "S"})
    locked = dataclasses.replace(base, throttle=Throttle(100, (), 0, True), lockdown=True)
    assert _view(state=locked).message(T0).state == "locked_out"
    assert _view(state=dataclasses.replace(base, lockdown=True)).message(T0).state == "lockdown"


def test_granted_then_left_open_then_closed() -> None:
    base = fresh_state({"A1": "S", "A2": "S"})
    v = _view(Out("access_granted", "A1"), state=base)
    # unlocked, not yet seen open (it may be jammed shut): never "Door A1 is open" yet
    assert v.message(T0) == Message("granted", "unlocked", "A1")
    opened = dataclasses.replace(
        base,
        compartments={
            **base.compartments,
            "A1": dataclasses.replace(base.compartments["A1"], door=DoorState.OPEN),
        },
    )
    v = project(v, Transition(opened, (Out("door_left_open", "A1"),)), T0 + 120)
    assert v.message(T0 + 120) == Message("close_door", "close_door", "A1")
    assert v.active_doors == ("A1",)
    v = project(v, Transition(base, (Out("door_closed", "A1"),)), T0 + 130)
    assert v.message(T0 + 130).state == "idle" and v.active_doors == ()


def test_a_jam_that_moves_the_parcel_names_the_new_door() -> None:
    v = _view(
        Out("door_jammed", "A1", "P", {"purpose": "dropoff"}),
        Out("compartment_out_of_service", "A1"),
        Out("parcel_reserved", "A2", "P", {"moved_from": "A1"}),
    )
    msg = v.message(T0)
    assert (msg.state, msg.key, msg.compartment, msg.other) == ("denied", "jam_moved", "A2", "A1")
    assert texts.render(msg, "en", T0) == (
        "Door A1 did not open. Your parcel goes in door A2: type your code again."
    )


def test_keypad_language_choice_is_not_a_guess() -> None:
    sim = Sim()
    for k in "**2":
        sim.feed(KeyPressed(k))
    assert any(isinstance(a, LanguageAction) and a.number == 2 for a in sim.actions)
    assert not [e for e in sim.events if e.type == "access_denied"]
    assert sim.state.throttle == Throttle() and sim.state.keypad.digits == ""
    # '*' once still just clears; digits after it are a code again
    for k in "12*34":
        sim.feed(KeyPressed(k))
    assert sim.state.keypad.digits == "34"
    # a lone '*' '*' long ago does not eat the first digit of the next code
    sim.feed(KeyPressed("*"))
    sim.feed(KeyPressed("*"))
    sim.advance(21)
    sim.feed(KeyPressed("5"))
    assert sim.state.keypad.digits == "5"


def test_hub_applies_a_keypad_language_choice_and_ignores_a_bad_one() -> None:
    hub = PanelHub(["en", "de"], "en")
    st = fresh_state({"A1": "S"})
    hub.observe(Transition(st, (), (LanguageAction(2),)), T0)
    assert hub.latest.language == "de"
    hub.observe(Transition(st, (), (LanguageAction(7),)), T0)
    assert hub.latest.language == "de"
    assert not hub.choose_language("fr") and hub.choose_language("en")
    assert hub.latest.language == "en"
    assert not hub.press("x") and not hub.press("12")  # no controller connected, and bad keys


def test_a_picked_language_goes_back_to_the_default_when_nobody_is_there() -> None:
    hub = PanelHub(["en", "de"], "en")
    st = fresh_state({"A1": "S"})
    hub.observe(Transition(st, (), (LanguageAction(2),)), T0)
    snap = hub.latest
    assert snap.language_at(T0 + 59) == "de" and snap.language_at(T0 + 61) == "en"
    hub.observe(Transition(st, (_denied("unknown_code"),)), T0 + 50)  # still there
    assert hub.latest.language_at(T0 + 109) == "de"
    assert hub.latest.language_at(T0 + 111) == "en"
    assert payload(hub.latest, T0 + 111)["lang"] == "en"
    hub.observe(Transition(st), T0 + 200)  # a tick long after: the default for good
    assert hub.latest.language == "en"


def _scanned(reason: str) -> Out:
    return Out("access_denied", data={"reason": reason, "source": "scanner"})


@pytest.mark.parametrize("lang", LANGS)
def test_every_refusal_is_worded_for_its_source(lang: str) -> None:
    """A refused scan never says "type the code" (the break-test: ``hello\\r`` on the
    scanner showed "Please type the whole code, then press #."); a refused typed code never
    speaks of a QR code (but for the lock-out, which says QR codes still work)."""
    state = dataclasses.replace(fresh_state({"A1": "S"}), throttle=Throttle(5, (), T0 + 30))
    for reason in REASONS:
        for source, make in (("scanner", _scanned), ("keypad", _denied)):
            msg = _view(make(reason), state=state).message(T0)
            assert msg.key in texts.MESSAGES, (source, reason, msg.key)
            assert msg.reason == reason
            english = texts.render(msg, "en", T0).lower()
            if source == "scanner" and reason != "locked_out":  # QR codes pass a lock-out
                assert not {"type", "press", "#", "keypad"} & set(english.split()), english
                assert "#" not in english
            elif reason not in ("bad_signature", "locked_out"):
                assert "qr" not in english, (reason, english)
            text = texts.render(msg, lang, T0)
            assert text and (lang == "en" or text != texts.render(msg, "en", T0)), (reason, lang)
    assert _view(_scanned("malformed")).message(T0).key == "denied.qr.malformed"
    assert texts.render(_view(_scanned("malformed")).message(T0), "en", T0) == (
        "This QR code is not valid."
    )


def _fault(device: str, recovered: bool = False) -> Out:
    kind = "hardware_recovered" if recovered else "hardware_fault"
    return Out(kind, data={"device": device, "detail": "cannot open: gone"})


def test_inputs_out_of_order_change_the_instructions() -> None:
    v = _view(_fault("scanner"))
    assert v.message(T0) == Message("idle", "idle.no_scanner")
    v = _view(_fault("keypad"), prev=v)
    assert v.message(T0) == Message("idle", "idle.out_of_order")
    assert v.out_of_order == {"keypad", "scanner"}
    v = _view(_fault("scanner", recovered=True), prev=v)
    assert v.message(T0) == Message("idle", "idle.no_keypad")
    v = _view(_fault("door:A1"), prev=v)  # not an input: no change
    assert v.message(T0).key == "idle.no_keypad"
    v = _view(_fault("keypad", recovered=True), prev=v)
    assert v.message(T0).key == "idle"
    # "QR codes still work" is not said while the scanner is out of order
    locked = dataclasses.replace(fresh_state({"A1": "S"}), throttle=Throttle(9, (), 0, True))
    v = _view(_fault("scanner"), state=locked)
    assert v.message(T0).key == "locked_out.no_scanner"
    # with the on-screen keypad, codes can still be typed on the page
    hub = PanelHub(["en"], "en")
    hub.observe(Transition(fresh_state({"A1": "S"}), (_fault("keypad"),)), T0)
    assert payload(hub.latest, T0)["text"] == texts.render(
        Message("idle", "idle.no_keypad"), "en", T0
    )
    assert payload(hub.latest, T0, touch_keypad=True)["text"] == texts.render(IDLE, "en", T0)
    assert payload(hub.latest, T0)["out_of_order"] == "keypad"


def test_a_bad_scan_repeated_within_a_burst_is_shown_again() -> None:
    """The second of two bad scans makes no event (it is counted into the burst), yet the
    person who scanned again is told again; the burst's count, reported later, is not shown."""
    sim = Sim()
    hub = PanelHub(["en"], "en")
    tr = sim.feed(LineScanned("hello"))
    hub.observe(tr, sim.now)
    assert hub.latest.message(sim.now).key == "denied.qr.malformed"
    sim.advance(DENIED_HOLD_S + 1)
    assert hub.latest.message(sim.now).key == "idle"
    before = len([e for e in sim.events if e.type == "access_denied"])
    tr = sim.feed(LineScanned("hello"))
    assert len([e for e in sim.events if e.type == "access_denied"]) == before  # counted only
    hub.observe(tr, sim.now)
    assert hub.latest.message(sim.now).key == "denied.qr.malformed"
    tr = sim.advance(120)  # the burst ends: one aggregated access_denied with its count
    assert any(e.data.get("aggregated") for e in tr.events)
    hub.observe(tr, sim.now)
    assert hub.latest.message(sim.now).key == "idle"


# --- texts and catalogs ------------------------------------------------------------------------


LOCALE = Path(texts.__file__).parent / "locale"


def _forms(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (text,) if isinstance(text, str) else tuple(text)


def _key(text: Any) -> str | tuple[str, ...]:
    """A catalog id or string: plural forms (a list in a .mo, a tuple in a .po) as a tuple."""
    return text if isinstance(text, str) else tuple(text)


@pytest.mark.parametrize("lang", ["de", "pl"])
def test_catalog_is_complete_and_compiled(lang: str) -> None:
    po_path = LOCALE / lang / "LC_MESSAGES" / "panel.po"
    with po_path.open("rb") as f:
        po = read_po(f, locale=lang)
    ids: set[str | tuple[str, str]] = {m for pair in texts.MESSAGES.values() for m in pair}
    ids |= set(texts.LABELS.values()) | set(texts.SPOKEN.values())
    ids.add(("{n} second", "{n} seconds"))  # the voice's countdown, with plural forms
    entries = {_key(m.id): m for m in po if m.id}
    assert set(entries) == ids, "run make i18n: the .po does not match texts.py"
    for msgid, m in entries.items():
        assert m.string and all(m.string) and not m.fuzzy, f"{lang}: {msgid!r} untranslated"
        fields = {f for _, f, _, _ in string.Formatter().parse(" ".join(_forms(msgid))) if f}
        for form in _forms(m.string):
            got = {f for _, f, _, _ in string.Formatter().parse(form) if f}
            assert fields == got, f"{lang}: {msgid!r} fields {fields} != {got}"
    with (LOCALE / lang / "LC_MESSAGES" / "panel.mo").open("rb") as f:
        mo = read_mo(io.BytesIO(f.read()))
    compiled = {_key(m.id): _key(m.string) for m in mo if m.id}
    assert compiled == {k: _key(m.string) for k, m in entries.items()}, (
        "panel.mo is stale: run make i18n"
    )


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize(("cols", "rows"), [(16, 2), (20, 4)])
def test_every_message_fits_the_lcd(lang: str, cols: int, rows: int) -> None:
    hub = PanelHub([lang], lang)
    for key in texts.MESSAGES:
        msg = Message("denied", key, "XL12", "unknown_code", T0 + 3600, "XL11")
        view = PanelView(outcome=Layer(msg))
        snap = dataclasses.replace(hub.latest, view=view)
        lines = lcd_lines(snap, T0, cols, rows)
        assert len(lines) <= rows and all(len(x) <= cols for x in lines)
        shown = " ".join(" ".join(lines).split())
        whole = [
            " ".join(ascii_text(texts.render(msg, lang, T0, short=short)).split())
            for short in (False, True)
        ]
        assert shown in whole, f"{lang} {key} cut on {cols}x{rows}: {lines}"
        assert shown.isascii()


def test_ascii_spelling() -> None:
    assert ascii_text("Błędny kod. Skrytkę zamknąć") == "Bledny kod. Skrytke zamknac"
    assert ascii_text("Bitte Fach schließen, außer Betrieb, Tür") == (
        "Bitte Fach schliessen, ausser Betrieb, Tuer"
    )


# --- configuration -------------------------------------------------------------------------------


def _config(tmp_path: Path, panel: dict[str, Any], **comp: Any) -> Any:
    key = tmp_path / "device.key"
    key.write_bytes(b"k" * 32)
    data = {
        "locker": {"id": "L1", "state_dir": str(tmp_path)},
        "security": {"device_key_file": str(key)},
        "compartments": [{"id": "A1", "size": "S", "lock_pin": 17, "door_pin": 27, **comp}],
        "panel": panel,
    }
    return parse_config(data, source="locker.toml")


def test_panel_config_defaults_and_keys(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        {"listen": "127.0.0.1:8088", "quiet_hours": "22:00-07:00", "lcd": {"cols": 20, "rows": 4}},
        led_pin=22,
        accessible=True,
    )
    p = cfg.panel
    assert p.host_port == ("127.0.0.1", 8088) and p.languages == ["en", "de", "pl"]
    assert p.default_language == "en" and not p.touch_keypad and not p.voice
    assert p.lcd.i2c_address == 0x27 and p.lcd.i2c_bus == 1
    assert cfg.compartments[0].led_pin == 22 and cfg.compartments[0].accessible
    assert _config(tmp_path, {"listen": "[::1]:0"}).panel.host_port == ("::1", 0)


@pytest.mark.parametrize(
    ("panel", "comp", "error"),
    [
        ({"listen": "kiosk:80"}, {}, "panel.listen: 'kiosk:80' is not IP:port"),
        ({"listen": "127.0.0.1"}, {}, "panel.listen: '127.0.0.1' is not IP:port"),
        ({"listen": "127.0.0.1:99999"}, {}, "panel.listen: '127.0.0.1:99999' has no valid port"),
        ({"languages": ["en", "fr"]}, {}, "panel.languages[1]: 'fr' has no catalog"),
        ({"languages": []}, {}, "panel.languages: must name at least one language"),
        ({"languages": ["en", "en"]}, {}, "panel.languages: names a language twice"),
        ({"languages": ["en"], "default_language": "de"}, {}, "default_language 'de' is not in"),
        ({"quiet_hours": "22:00"}, {}, "panel.quiet_hours: '22:00' is not a window"),
        ({"voice": "yes"}, {}, "panel.voice: expected true or false, got a string"),
        ({"lcd": {"cols": 40}}, {}, "panel.lcd.cols: must be 16 or 20"),
        ({"lcd": {"i2c_address": 0x80}}, {}, "panel.lcd.i2c_address: 128 is outside"),
        ({"lcd": {"backlight": True}}, {}, "panel.lcd.backlight: unknown key"),
        (
            {"touchkeypad": True},
            {},
            "panel.touchkeypad: unknown key (typo?); did you mean 'touch_keypad'",
        ),
        (
            {},
            {"led_pin": 27},
            "compartments[0].led_pin: GPIO27 is already used by compartments[0].door_pin",
        ),
        ({}, {"accessible": 1}, "compartments[0].accessible: expected true or false"),
    ],
)
def test_panel_config_errors_name_the_key(
    tmp_path: Path, panel: dict[str, Any], comp: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, panel, **comp)
    assert any(error in line for line in err.value.errors), err.value.errors
    assert all(re.match(r"locker\.toml: \S", line) for line in err.value.errors)
