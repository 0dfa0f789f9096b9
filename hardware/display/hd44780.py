"""A character LCD (Hitachi HD44780, 16x2 or 20x4) on a PCF8574 I2C backpack, through RPLCD
(https://rplcd.readthedocs.io; ``RPLCD.i2c.CharLCD``, which opens ``smbus2.SMBus(bus)``).

``show(lines)`` rewrites only the rows that changed: every character costs two 4-bit transfers
with ~100 us settling each, so a full 20x4 screen takes tens of milliseconds. The caller hands
plain ASCII (the common A00 character ROM has no Polish letters and silently shows a blank
for them, see ``locker.cabinet.panel.lcd``). One thread only: the bus is not thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Hd44780I2c:
    """:param address: the backpack's 7-bit I2C address (0x27 or 0x3F usually).
    :param bus: the I2C bus number (/dev/i2c-N). :param cols, rows: 16x2 or 20x4.
    Raises OSError when the bus or the device cannot be reached."""

    def __init__(self, address: int, *, bus: int, cols: int, rows: int) -> None:
        from RPLCD.i2c import CharLCD  # noqa: PLC0415 - optional dependency (extra "lcd")

        self.cols, self.rows = cols, rows
        self._lcd: Any = CharLCD(
            "PCF8574",
            address,
            port=bus,
            cols=cols,
            rows=rows,
            charmap="A00",
            auto_linebreaks=False,
        )
        self._lcd.clear()
        self._shown: list[str] = [" " * cols] * rows

    def show(self, lines: Sequence[str]) -> None:
        """Show ``lines`` (cut or padded to the display's size)."""
        wanted = [(list(lines)[r] if r < len(lines) else "")[: self.cols] for r in range(self.rows)]
        wanted = [line.ljust(self.cols) for line in wanted]
        for row, line in enumerate(wanted):
            if line != self._shown[row]:
                self._lcd.cursor_pos = (row, 0)
                self._lcd.write_string(line)
                self._shown[row] = line

    def close(self) -> None:
        self._lcd.close(clear=True)
