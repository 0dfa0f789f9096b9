"""A fake I2C bus with an HD44780 behind a PCF8574 backpack, for RPLCD (``RPLCD.i2c.SMBus`` is
replaced by ``FakeBus``). It decodes what the driver writes into the display's memory.

PCF8574 wiring as RPLCD drives it: bit 0 RS, bit 2 E, bit 3 backlight, bits 4-7 D4-D7. A
nibble is latched on the falling edge of E; bytes go high nibble first (RPLCD sends even the
initial 0x03 commands as two nibbles, so plain pairing works from the first byte). Commands
handled: 0x01 clear, 0x02 home, 0x80|addr set the DDRAM address; data bytes are written at the
address, which then increments. Rows start at 0x00, 0x40, 0x14, 0x54 (HD44780 data sheet).
"""

from __future__ import annotations

import threading
from typing import ClassVar

ROW_OFFSETS = (0x00, 0x40, 0x14, 0x54)
E, RS = 0x04, 0x01


class FakeBus:
    """Stands in for ``smbus2.SMBus(port)``; every bus opened is kept in ``opened``."""

    opened: ClassVar[list[FakeBus]] = []

    def __init__(self, port: int) -> None:
        self.port = port
        self.ddram: dict[int, int] = {}
        self.address = 0
        self._last = 0
        self._high: int | None = None
        self._lock = threading.Lock()
        self.writes = 0
        FakeBus.opened.append(self)

    def write_byte(self, addr: int, value: int) -> None:
        with self._lock:
            self.writes += 1
            if self._last & E and not value & E:  # falling edge of E: latch the nibble
                nibble = (self._last >> 4) & 0x0F
                if self._high is None:
                    self._high = nibble
                else:
                    self._byte((self._high << 4) | nibble, bool(self._last & RS))
                    self._high = None
            self._last = value

    def _byte(self, byte: int, data: bool) -> None:
        if data:
            self.ddram[self.address] = byte
            self.address += 1
        elif byte == 0x01:
            self.ddram.clear()
            self.address = 0
        elif byte == 0x02:
            self.address = 0
        elif byte & 0x80:
            self.address = byte & 0x7F

    def close(self) -> None:
        pass

    def lines(self, cols: int, rows: int) -> list[str]:
        with self._lock:
            return [
                "".join(chr(self.ddram.get(ROW_OFFSETS[r] + c, 0x20)) for c in range(cols))
                for r in range(rows)
            ]
