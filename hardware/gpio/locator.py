"""Locator LEDs: one optional LED per compartment that blinks while its door is unlocked or
open, so a person finds the right door among 64 (DESIGN section 7, ``led_pin``).

``show(active)`` switches every LED in one call: those named blink (gpiozero's background blink
thread), the others go off. ``dimmed`` (quiet hours) makes a blink a short flash, which reads
as a dimmer light on a plain LED without PWM.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Final

from gpiozero import LED, Factory

logger = logging.getLogger(__name__)

BLINK_ON_S: Final = 0.4
BLINK_OFF_S: Final = 0.4
DIM_ON_S: Final = 0.08  # quiet hours: a short flash per period instead of half of it
DIM_OFF_S: Final = 0.72


class LocatorLeds:
    """:param pins: compartment id -> BCM GPIO of its LED. :param pin_factory: gpiozero's."""

    def __init__(self, pins: Mapping[str, int], *, pin_factory: Factory | None = None) -> None:
        self._leds = {cid: LED(pin, pin_factory=pin_factory) for cid, pin in pins.items()}
        self._active: frozenset[str] = frozenset()
        self._dimmed = False

    @property
    def compartments(self) -> tuple[str, ...]:
        return tuple(self._leds)

    def show(self, active: Collection[str], *, dimmed: bool = False) -> None:
        """Blink the LEDs of ``active`` (unknown ids are ignored), switch the others off."""
        wanted = frozenset(c for c in active if c in self._leds)
        if wanted == self._active and dimmed == self._dimmed:
            return
        on_s, off_s = (DIM_ON_S, DIM_OFF_S) if dimmed else (BLINK_ON_S, BLINK_OFF_S)
        for cid, led in self._leds.items():
            if cid in wanted and (cid not in self._active or dimmed != self._dimmed):
                led.blink(on_time=on_s, off_time=off_s, background=True)
            elif cid not in wanted and cid in self._active:
                led.off()
        self._active, self._dimmed = wanted, dimmed

    def close(self) -> None:
        for led in self._leds.values():
            try:
                led.off()
                led.close()
            except Exception:  # closing must go on for the other LEDs
                logger.exception("locator LED would not close")
