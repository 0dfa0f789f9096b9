"""Buzzer and status LEDs: the GPIO :class:`~locker.ports.Indicator`.

Each :class:`~locker.ports.Feedback` maps to a :class:`Pattern` of bounded blinks run by
gpiozero's own background blink threads, so ``show`` returns at once and a new pattern simply
replaces the one still running on the same device. Every device is optional.

Quiet hours (DESIGN section 12): while ``quiet()`` is true, each pattern is played
``Pattern.quieted``: key clicks muted, other beeps cut to a short tick (a softer sound from a
plain buzzer without PWM), LED blinks turned into short flashes (a dimmer light). What is shown
never changes, only how loud and bright; alarms still reach the server at once (the indicator
only shows them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from gpiozero import LED, Buzzer, DigitalOutputDevice, Factory

from locker.ports import Feedback, Indicator

logger = logging.getLogger(__name__)

PinSpec = int | str

MAX_PATTERN_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Blink:
    """``n`` times: on for ``on_s``, then off for ``off_s``."""

    on_s: float
    off_s: float = 0.0
    n: int = 1

    def __post_init__(self) -> None:
        if self.on_s <= 0 or self.off_s < 0 or self.n < 1:
            raise ValueError(f"a blink needs on_s > 0, off_s >= 0 and n >= 1: {self}")
        if self.duration_s > MAX_PATTERN_S:
            raise ValueError(f"a blink may last at most {MAX_PATTERN_S}s: {self}")

    @property
    def duration_s(self) -> float:
        return (self.on_s + self.off_s) * self.n

    def scaled(self, factor: float) -> Blink:
        return replace(self, on_s=self.on_s * factor, off_s=self.off_s * factor)


@dataclass(frozen=True, slots=True)
class Pattern:
    """What each device does for one feedback; a None LED is switched off, unless ``leds`` is
    False (key clicks leave the LEDs as they are)."""

    beep: Blink | None = None
    ok_led: Blink | None = None
    error_led: Blink | None = None
    leds: bool = True

    def scaled(self, factor: float) -> Pattern:
        def s(b: Blink | None) -> Blink | None:
            return None if b is None else b.scaled(factor)

        return replace(self, beep=s(self.beep), ok_led=s(self.ok_led), error_led=s(self.error_led))


# One pattern per feedback, every refusal reason distinct on the buzzer alone (someone who
# cannot see the LEDs still hears why) and on the LEDs alone (someone who cannot hear). Rhythm
# families: short chirps = "check what you typed", long tones = "the locker will not accept
# anything for a while", a green blink = "your code is right, just not yet".
PATTERNS: Final[Mapping[Feedback, Pattern]] = {
    Feedback.KEY: Pattern(beep=Blink(0.03), leds=False),
    Feedback.ACCEPTED: Pattern(beep=Blink(0.15), ok_led=Blink(2.0)),
    Feedback.ALARM: Pattern(error_led=Blink(0.08, 0.08, n=20)),
    Feedback.REFUSED: Pattern(beep=Blink(0.12, 0.06, n=2), error_led=Blink(0.75, 0.25, n=2)),
    Feedback.MALFORMED: Pattern(beep=Blink(0.05), error_led=Blink(0.5)),
    Feedback.UNKNOWN_CODE: Pattern(beep=Blink(0.08, 0.08, n=2), error_led=Blink(1.5)),
    Feedback.BAD_SIGNATURE: Pattern(beep=Blink(0.08, 0.08, n=4), error_led=Blink(0.1, 0.1, n=4)),
    Feedback.WRONG_LOCKER: Pattern(beep=Blink(0.2, 0.1, n=3), error_led=Blink(0.3, 0.3, n=3)),
    Feedback.EXPIRED: Pattern(beep=Blink(0.4, 0.1, n=2), error_led=Blink(3.0)),
    Feedback.NOT_YET_VALID: Pattern(beep=Blink(0.08, 0.08, n=3), ok_led=Blink(0.3, 0.3, n=2)),
    Feedback.NOT_YET_AVAILABLE: Pattern(beep=Blink(0.08, 0.3, n=2), ok_led=Blink(0.5, 0.5, n=3)),
    Feedback.THROTTLED: Pattern(beep=Blink(1.0), error_led=Blink(0.25, 0.25, n=6)),
    Feedback.LOCKED_OUT: Pattern(beep=Blink(2.0), error_led=Blink(5.0)),
    Feedback.LOCKDOWN: Pattern(beep=Blink(0.5, 0.5, n=3), error_led=Blink(0.5, 0.5, n=3)),
    Feedback.COMPARTMENT_UNAVAILABLE: Pattern(
        beep=Blink(0.15, 0.15, n=2), error_led=Blink(0.15, 0.15, n=6)
    ),
    Feedback.OUT_OF_SERVICE: Pattern(
        beep=Blink(0.15, 0.15, n=3), error_led=Blink(1.0), ok_led=Blink(1.0)
    ),
    # a right code whose work is done: one long chirp, the green LED flickers "known"
    Feedback.ALREADY_USED: Pattern(beep=Blink(0.3), ok_led=Blink(0.15, 0.15, n=4)),
}


QUIET_TICK: Final = Blink(0.02)
QUIET_FLASH_S: Final = 0.05


def _dim(b: Blink | None) -> Blink | None:
    if b is None or b.on_s <= QUIET_FLASH_S:
        return b
    return Blink(QUIET_FLASH_S, b.off_s + b.on_s - QUIET_FLASH_S, b.n)


def quieted(pattern: Pattern, *, click: bool) -> Pattern:
    """``pattern`` for quiet hours: no beep for a key ``click``, a short tick for any other
    beep, LED blinks as short flashes within the same period."""
    beep = None if click or pattern.beep is None else QUIET_TICK
    return replace(
        pattern, beep=beep, ok_led=_dim(pattern.ok_led), error_led=_dim(pattern.error_led)
    )


class GpioIndicator(Indicator):
    """Buzzer, green (ok) and red (error) LED on GPIO pins; any of them may be None.

    :param patterns: feedback -> pattern; defaults to :data:`PATTERNS`.
    """

    def __init__(
        self,
        *,
        buzzer_pin: PinSpec | None = None,
        ok_led_pin: PinSpec | None = None,
        error_led_pin: PinSpec | None = None,
        pin_factory: Factory | None = None,
        patterns: Mapping[Feedback, Pattern] | None = None,
        quiet: Callable[[], bool] | None = None,
    ) -> None:
        self._patterns = dict(PATTERNS if patterns is None else patterns)
        self._quiet_patterns = {
            fb: quieted(p, click=fb is Feedback.KEY) for fb, p in self._patterns.items()
        }
        self._quiet = quiet
        missing = set(Feedback) - set(self._patterns)
        if missing:
            raise ValueError(f"no pattern for {', '.join(sorted(missing))}")
        self._lock = threading.Lock()
        self._closed = False
        self._buzzer: DigitalOutputDevice | None = None
        self._ok: DigitalOutputDevice | None = None
        self._error: DigitalOutputDevice | None = None
        try:
            if buzzer_pin is not None:
                self._buzzer = Buzzer(buzzer_pin, initial_value=False, pin_factory=pin_factory)
            if ok_led_pin is not None:
                self._ok = LED(ok_led_pin, initial_value=False, pin_factory=pin_factory)
            if error_led_pin is not None:
                self._error = LED(error_led_pin, initial_value=False, pin_factory=pin_factory)
        except BaseException:
            self._close_devices()
            raise

    def show(self, feedback: Feedback) -> None:
        quiet = self._quiet is not None and self._quiet()
        pattern = (self._quiet_patterns if quiet else self._patterns)[feedback]
        with self._lock:
            if self._closed:
                logger.debug("indicator closed, %s not shown", feedback)
                return
            try:
                _play(self._buzzer, pattern.beep)
                if pattern.leds:
                    _play(self._ok, pattern.ok_led)
                    _play(self._error, pattern.error_led)
            except Exception:
                # feedback is a courtesy: a broken LED must not stop the controller
                logger.exception("indicator failed to show %s", feedback)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_devices()

    def _close_devices(self) -> None:
        for device in (self._buzzer, self._ok, self._error):
            if device is not None:
                device.off()
                device.close()


def _play(device: DigitalOutputDevice | None, blink: Blink | None) -> None:
    if device is None:
        return
    if blink is None:
        device.off()
        return
    # blink() replaces a pattern still running; off() first so it restarts from dark
    device.off()
    device.blink(on_time=blink.on_s, off_time=blink.off_s, n=blink.n, background=True)
