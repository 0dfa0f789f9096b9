"""The front panel's other surfaces on a real daemon: the character LCD (RPLCD on a fake I2C
bus), voice prompts (espeak-ng writing WAV files), locator LEDs (gpiozero MockFactory pins);
and quiet hours on a fake clock."""

from __future__ import annotations

import datetime
import re
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import RPLCD.i2c
from gpiozero.pins.mock import MockFactory

from hardware.gpio.feedback import QUIET_FLASH_S, QUIET_TICK, GpioIndicator
from hardware.gpio.locator import LocatorLeds
from locker.cabinet.panel.follow import LocatorFollower
from locker.cabinet.panel.hub import PanelHub
from locker.cabinet.panel.lcd import LcdFollower
from locker.cabinet.panel.quiet import QuietHours
from locker.cabinet.panel.voice import VoiceFollower, espeak_argv
from locker.ports import Feedback
from tests.conftest import never_within, wait_for
from tests.daemon_rig import DaemonRig
from tests.fake_i2c import FakeBus

pytestmark = pytest.mark.timeout(120)
LED_PIN = 22


@pytest.fixture
def fake_i2c(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeBus]]:
    FakeBus.opened.clear()
    monkeypatch.setattr(RPLCD.i2c, "SMBus", FakeBus)
    yield FakeBus
    FakeBus.opened.clear()


@pytest.fixture
def rig(tmp_path: Path, mock_factory: MockFactory, fake_i2c: type[FakeBus]) -> Iterator[DaemonRig]:
    r = DaemonRig(
        tmp_path,
        mock_factory,
        security={"failures_before_backoff": 2},
        tables={
            "panel": {
                "voice": True,
                "languages": ["en", "de", "pl"],
                "lcd": {"i2c_address": 0x27, "cols": 20, "rows": 4},
            }
        },
        compartment_keys={"A1": {"led_pin": LED_PIN}},
    )
    r.start()
    try:
        yield r
    finally:
        r.close()


def _surface(r: DaemonRig, kind: type) -> object:
    assert r.locker is not None
    return next(s for s in r.locker.surfaces if isinstance(s, kind))


def _wav_argv(workdir: Path) -> object:
    counter = iter(range(1000))

    def argv(text: str, language: str) -> Sequence[str]:
        return espeak_argv(text, language, workdir / f"{next(counter):03d}-{language}.wav")

    return argv


def test_lcd_voice_and_locator_follow_the_flows(rig: DaemonRig, tmp_path: Path) -> None:
    bus = FakeBus.opened[0]
    voice = _surface(rig, VoiceFollower)
    assert isinstance(voice, VoiceFollower)
    wavs = tmp_path / "voice"
    wavs.mkdir()
    voice.argv = _wav_argv(wavs)  # type: ignore[assignment]

    def lcd() -> str:
        return " ".join(" ".join(bus.lines(20, 4)).split())

    wait_for(lambda: "Type your code" in lcd(), what="idle text on the LCD")
    comp, drop, _ = rig.assign("V1", "S", compartment="A1")
    led = rig.factory.pin(LED_PIN) if rig.factory else None
    assert led is not None and led.state == 0
    rig.press(drop + "#")
    # unlocked, not yet seen open: never "is open" before the sensor says so
    wait_for(lambda: "Door A1 is unlocked" in lcd(), what="granted on the LCD")
    wait_for(
        lambda: "Door A1 is unlocked. Please open it now." in voice.spoken, what="granted spoken"
    )
    # the locator LED of A1 blinks while its door is unlocked or open
    led.clear_states()
    wait_for(lambda: len(led.states) >= 3, 5, what="A1's locator LED blinking")
    rig.set_door(comp, opened=True)
    rig.wait_event("door_opened", compartment=comp)
    wait_for(lambda: "Door A1 is open" in lcd(), what="open on the LCD")
    wait_for(lambda: "Door A1 is open." in voice.spoken, what="open spoken")
    rig.set_door(comp, opened=False)
    rig.wait_event("parcel_deposited", parcel="V1")
    wait_for(lambda: led.state == 0 and "Type your code" in lcd(), what="LED off, LCD idle")
    led.clear_states()
    never_within(lambda: len(led.states) > 1, 1.0, "LED blinking with no door open")
    # a wrong code in German (keypad: * * 2), then a back-off with its countdown
    rig.press("**2")
    wait_for(lambda: "Code eingeben" in lcd(), what="German on the LCD")
    rig.press("11112222#")
    wait_for(lambda: "Falscher Code" in lcd(), what="refusal on the LCD")
    wait_for(
        lambda: "Falscher Code. Bitte prüfen und erneut versuchen." in voice.spoken, what="said"
    )
    rig.press("11113333#")
    wait_for(lambda: re.search(r"Zu viele falsche Codes\. Bitte in \d+ s", lcd()), what="wait")
    # Polish on the LCD is spelled in ASCII (the A00 ROM has no Polish letters)
    rig.press("**3")
    wait_for(lambda: "Zbyt wiele blednych kodow" in lcd(), what="Polish in ASCII")
    assert all(ch.isascii() for ch in lcd())
    assert voice.wait_idle(15)
    files = sorted(wavs.glob("*.wav"))
    assert {f.name.split("-")[1] for f in files} >= {"en.wav", "de.wav"}
    for f in files[-2:]:
        with wave.open(str(f)) as w:
            assert w.getnframes() > w.getframerate() // 4  # a quarter of a second at least


def test_voice_speaks_only_the_newest_prompt(tmp_path: Path) -> None:
    """A prompt still playing is stopped when the message changes; only the latest counts."""
    hub = PanelHub(["en"], "en")
    started: list[str] = []

    def slow(text: str, language: str) -> Sequence[str]:
        started.append(text)
        return ["sleep", "30"]

    voice = VoiceFollower(hub, argv=slow)
    from locker.cabinet.domain.draft import Transition  # noqa: PLC0415
    from locker.cabinet.domain.model import Out, fresh_state  # noqa: PLC0415

    state = fresh_state({"A1": "S"})
    voice.start()
    try:
        hub.observe(Transition(state, (Out("access_granted", "A1"),)), 1e12)
        wait_for(lambda: len(voice.spoken) == 1, what="first prompt")
        first = voice._proc
        assert first is not None
        hub.observe(Transition(state, (Out("access_denied", data={"reason": "expired"}),)), 1e12)
        wait_for(lambda: len(voice.spoken) == 2, what="second prompt")
        wait_for(lambda: first.poll() is not None, what="stale prompt stopped")
    finally:
        voice.close()
    assert voice.spoken == [
        "Door A1 is unlocked. Please open it now.",
        "This code has expired. Please contact the sender.",
    ]


class _FakeClock:
    def __init__(self, hhmm: str) -> None:
        self.now = datetime.time.fromisoformat(hhmm)

    def localtime(self, ts: float) -> datetime.time:
        return self.now


def test_quiet_hours_soften_the_buzzer_and_dim_leds(mock_factory: MockFactory) -> None:
    clock = _FakeClock("12:00")
    quiet = QuietHours(
        (datetime.time(22, 0), datetime.time(7, 0)), clock=lambda: 0.0, localtime=clock.localtime
    )
    ind = GpioIndicator(buzzer_pin=18, ok_led_pin=23, error_led_pin=24, quiet=quiet)
    buzzer, ok = mock_factory.pin(18), mock_factory.pin(23)
    try:
        ind.show(Feedback.KEY)
        wait_for(lambda: len(buzzer.states) >= 3, what="a key click by day")
        for hhmm, is_quiet in (
            ("21:59", False),
            ("22:00", True),
            ("03:00", True),
            ("07:00", False),
        ):
            clock.now = datetime.time.fromisoformat(hhmm)
            assert quiet() is is_quiet, hhmm
        clock.now = datetime.time(23, 30)
        buzzer.clear_states()
        ind.show(Feedback.KEY)
        never_within(lambda: len(buzzer.states) > 1, 0.2, "a key click in quiet hours")
        ok.clear_states()
        buzzer.clear_states()
        ind.show(Feedback.ACCEPTED)
        wait_for(lambda: len(buzzer.states) >= 3 and len(ok.states) >= 3, what="quiet tick + flash")
        beep = buzzer.states[2].timestamp  # the length of the high level
        flash = ok.states[2].timestamp
        assert beep < QUIET_TICK.on_s + 0.05
        assert flash < QUIET_FLASH_S + 0.05
    finally:
        ind.close()


def test_locator_leds_dim_in_quiet_hours(mock_factory: MockFactory) -> None:
    hub = PanelHub(["en"], "en")
    leds = LocatorLeds({"A1": 22}, pin_factory=mock_factory)
    quiet_now = [True]
    follower = LocatorFollower(hub, leds, quiet=lambda now: quiet_now[0])
    from locker.cabinet.domain.draft import Transition  # noqa: PLC0415
    from locker.cabinet.domain.model import fresh_state  # noqa: PLC0415
    from locker.ports import DoorState  # noqa: PLC0415

    state = fresh_state({"A1": "S"})
    opened = state.compartments["A1"].__class__(id="A1", size="S", door=DoorState.OPEN)
    state = state.__class__(compartments={"A1": opened})
    pin = mock_factory.pin(22)
    follower.start()
    try:
        hub.observe(Transition(state), 0.0)
        wait_for(lambda: len(pin.states) >= 4, what="dimmed blink")
        on_times = [s.timestamp for s in pin.states[2:4] if s.state == 0]
        assert on_times and all(t < 0.2 for t in on_times)
    finally:
        follower.close()
    assert pin.state == 0


def test_lcd_follower_writes_only_what_changed(fake_i2c: type[FakeBus]) -> None:
    from hardware.display.hd44780 import Hd44780I2c  # noqa: PLC0415

    display = Hd44780I2c(0x27, bus=1, cols=16, rows=2)
    bus = FakeBus.opened[0]
    hub = PanelHub(["en", "pl"], "pl")
    follower = LcdFollower(hub, display, 16, 2)
    follower.start()
    try:
        wait_for(
            lambda: (
                follower.rendered >= 1
                and [x.rstrip() for x in bus.lines(16, 2)] == ["Wpisz kod i #", "albo pokaz QR"]
            ),
            what="idle",
        )
        writes = bus.writes
        hub.choose_language("pl")  # same text: nothing is written
        never_within(lambda: bus.writes != writes, 0.3, "an LCD rewrite of the same text")
    finally:
        follower.close()
    assert bus.lines(16, 2) == [" " * 16] * 2  # cleared on close


def test_in_quiet_hours_an_alarm_still_reaches_the_outbox_at_once(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    """Quiet hours change how loud and bright, never what is reported."""
    now = datetime.datetime.now()
    window = (
        f"{(now - datetime.timedelta(hours=1)):%H:%M}-{(now + datetime.timedelta(hours=1)):%H:%M}"
    )
    rig = DaemonRig(
        tmp_path,
        mock_factory,
        tables={
            "panel": {"quiet_hours": window},
            "feedback": {"buzzer_pin": 18, "error_led_pin": 24},
        },
    )
    rig.start()
    try:
        buzzer, error_led = mock_factory.pin(18), mock_factory.pin(24)
        buzzer.clear_states()
        error_led.clear_states()
        rig.set_door("A1", opened=True)  # forced: nothing unlocked it
        rig.wait_event("door_forced", compartment="A1", timeout=2)  # reported at once
        rig.set_door("A1", opened=False)
        # a refusal lights the error LED for 1.5 s by day; in quiet hours a short flash
        error_led.clear_states()
        buzzer.clear_states()
        rig.press("12345678#")
        rig.wait_event("access_denied", reason="unknown_code")
        wait_for(
            lambda: len(error_led.states) >= 3 and len(buzzer.states) >= 3, what="flash and tick"
        )
        on = [s.timestamp for s in error_led.states[1:] if s.state == 0]
        assert on and max(on) < 0.5, error_led.states
        beeps = [s.timestamp for s in buzzer.states[1:] if s.state == 0]
        assert beeps and max(beeps) < QUIET_TICK.on_s + 0.05, buzzer.states
    finally:
        rig.close()
