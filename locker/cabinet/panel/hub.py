"""The one path between the controller and the front panel's surfaces (DESIGN section 12).

Isolation: the panel is a view, never an owner. The controller thread calls ``observe`` after
each committed transition; it runs the pure projection and swaps the result into a latest-value
slot (a single reference assignment) and wakes readers only if it can take their condition's
lock at once: the controller never waits for a reader, however stuck. Readers (the web server's
threads, the LCD, voice and locator workers) take the latest view whenever they like and wait
with a time-out, so a missed wake-up costs them at most ``POLL_S``. The only way back is
``press``: a key from the on-screen keypad goes into the controller's queue exactly as a key
from the physical keypad does (same rules, same throttle).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence

from locker.cabinet.domain.draft import Transition
from locker.cabinet.panel.view import Message, PanelView, project
from locker.ports import HardwareFault, HardwareRecovered, KeyPressed

logger = logging.getLogger(__name__)

POLL_S = 0.5  # the longest a reader sleeps on a wake-up it missed
# A language a person picked goes back to the default this long after the last sign of them,
# so the next person is not greeted in the previous one's language.
LANGUAGE_RESET_S = 60.0
KEYS = frozenset("0123456789*#")


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What every surface renders: the view, the language picked (``language``, at
    ``chosen_at``), the default, and a version that grows with every change of either.
    Surfaces show ``language_at(now)``."""

    version: int
    view: PanelView
    language: str
    default_language: str = "en"
    chosen_at: float = 0.0

    def message(self, now: float) -> Message:
        return self.view.message(now)

    def language_at(self, now: float) -> str:
        last = max(self.chosen_at, self.view.person_at)
        if self.language == self.default_language or now - last < LANGUAGE_RESET_S:
            return self.language
        return self.default_language


class PanelHub:
    """Latest-value slot between the controller (writer) and the panel's surfaces (readers).

    :param languages: the languages a person may pick (``*`` ``*`` n picks the n-th).
    :param default_language: the language at start (and the one a bad choice leaves).
    :param submit: the controller's sink (``Controller.submit``), for on-screen keys.
    """

    def __init__(
        self,
        languages: Sequence[str],
        default_language: str,
        submit: Callable[[object], None] | None = None,
    ) -> None:
        self.languages = tuple(languages)
        self.default_language = default_language
        self._submit = submit
        self._versions = itertools.count(1)  # next() is atomic: writers on two threads
        self._cond = threading.Condition()
        # Held only around building and assigning a snapshot (no I/O, no wait under it), so the
        # controller and a language button never lose each other's change.
        self._write = threading.Lock()
        self._latest = Snapshot(0, PanelView(), default_language, default_language)

    def connect(self, submit: Callable[[object], None]) -> None:
        self._submit = submit

    # --- writer side: the controller thread ----------------------------------------------------

    def observe(self, tr: Transition, now: float) -> None:
        """The controller's observer: project, swap, wake. Never blocks."""
        # only this thread replaces the view
        view = project(self._latest.view, tr, now, len(self.languages))
        choice = view.language_choice
        with self._write:
            latest = self._latest
            language, chosen_at = latest.language_at(now), latest.chosen_at
            if choice is not None and 1 <= choice <= len(self.languages):
                language, chosen_at = self.languages[choice - 1], now
            self._swap(view, language, chosen_at)

    def choose_language(self, language: str, now: float | None = None) -> bool:
        """A language button on the page (``now``: Unix s, default the wall clock). False
        (and nothing changes) for a language that is not offered."""
        if language not in self.languages:
            return False
        with self._write:
            self._swap(self._latest.view, language, time.time() if now is None else now)
        return True

    def press(self, key: str) -> bool:
        """A key of the on-screen keypad, handed to the controller like a keypad key. False
        for anything but ``0-9 * #`` (or when no controller is connected)."""
        if not isinstance(key, str) or len(key) != 1 or key not in KEYS or self._submit is None:
            return False
        self._submit(KeyPressed(key))
        return True

    def report(self, event: HardwareFault | HardwareRecovered) -> None:
        """A surface's own fault or recovery (the web panel cannot listen), handed to the
        controller like a device's, so it is recorded and raised as a ``hardware_fault``."""
        if self._submit is not None:
            self._submit(event)

    def _swap(self, view: PanelView, language: str, chosen_at: float) -> None:
        # the caller holds _write
        self._latest = Snapshot(
            next(self._versions), view, language, self.default_language, chosen_at
        )
        # Wake readers only if nobody holds their lock right now; a reader that is stuck
        # holding it must never stall the controller (readers poll every POLL_S anyway).
        if self._cond.acquire(blocking=False):
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()

    # --- reader side ---------------------------------------------------------------------------

    @property
    def latest(self) -> Snapshot:
        return self._latest

    def wait_newer(self, version: int, timeout: float) -> Snapshot:
        """The latest snapshot once its version is above ``version``, or after ``timeout`` s
        (whichever is first)."""
        latest = self._latest
        if latest.version > version:
            return latest
        with self._cond:
            self._cond.wait(min(timeout, POLL_S))
        return self._latest
