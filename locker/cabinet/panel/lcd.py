"""The front panel on a character LCD (DESIGN section 12): the same messages, shortened.

``lcd_lines`` is pure: the message of a snapshot in its language, wrapped to the display. A 20x4
display gets the full text when it fits in four rows, a 16x2 one (or a text too long) the short
text. Letters the HD44780's A00 character ROM lacks (Polish ones, German umlauts in part) are
spelled in ASCII (``ascii_text``), since the controller shows a blank for them, silently.
"""

from __future__ import annotations

import textwrap
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Protocol

from locker.cabinet.panel import texts
from locker.cabinet.panel.follow import Follower
from locker.cabinet.panel.hub import PanelHub, Snapshot

# Letters without an ASCII base that NFKD would not decompose, and German spellings.
_SPELLED = str.maketrans(
    {
        "ł": "l",
        "Ł": "L",
        "ß": "ss",
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "Ä": "Ae",
        "Ö": "Oe",
        "Ü": "Ue",
    }
)


def ascii_text(text: str) -> str:
    """``text`` in plain ASCII: 'Błędny kod' -> 'Bledny kod', 'schließen' -> 'schliessen'."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPELLED))
    return "".join(ch for ch in decomposed if ord(ch) < 128 and not unicodedata.combining(ch))


def lcd_lines(snap: Snapshot, now: float, cols: int, rows: int) -> list[str]:
    """The rows to show, each at most ``cols`` characters, at most ``rows`` of them."""
    msg = snap.message(now)
    mask = "*" * snap.view.entry
    for short in (False, True) if rows >= 4 else (True,):
        text = ascii_text(texts.render(msg, snap.language_at(now), now, short=short, mask=mask))
        lines = textwrap.wrap(text, cols, break_on_hyphens=False) or [""]
        if len(lines) <= rows:
            return lines
    return lines[:rows]


class Display(Protocol):
    def show(self, lines: Sequence[str]) -> None: ...
    def close(self) -> None: ...


class LcdFollower(Follower):
    """Keeps the LCD showing the latest message (and its countdown)."""

    name = "panel-lcd"

    def __init__(
        self,
        hub: PanelHub,
        display: Display,
        cols: int,
        rows: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(hub, clock)
        self.display, self.cols, self.rows = display, cols, rows
        self._shown: list[str] | None = None

    def render(self, snap: Snapshot, now: float) -> None:
        lines = lcd_lines(snap, now, self.cols, self.rows)
        if lines != self._shown:
            self.display.show(lines)
            self._shown = lines

    def release(self) -> None:
        self.display.close()
