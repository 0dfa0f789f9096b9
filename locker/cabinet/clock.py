"""The locker's idea of the time: a wall clock it trusts only so far (DESIGN section 6).

Expiry is judged against ``DomainClock.now()``, which never runs backwards and which one bad
reading cannot poison. A Raspberry Pi has no RTC: it has come up in 1970 and in 2069, and a
bad NTP answer can step the clock by decades for a second. So the trusted time is an
*anchor* (a wall reading we accepted, and the monotonic clock at that moment) carried forward
by the monotonic clock. A wall reading moves the anchor only when it is

- plausible: no further ahead of the anchor's estimate than the monotonic clock's advance
  allows, plus a small slack (``slack_s`` + ``DRIFT`` of the elapsed time), or
- synchronised (timesyncd, chrony or ntpd says so) and it has held steady, relative to the
  monotonic clock, for ``CONFIRM_S`` (a one-second blip never moves it), or
- at start-up, ahead of the stored mark by less than ``MAX_OFFLINE_S`` (the locker was off;
  we cannot know for how long, but not for decades).

Anything else is suspect: not used, reported once per episode (``take_suspect``), and the
locker carries on with the estimate; it recovers by itself as soon as a reading is plausible
again. A wall clock behind the estimate is suspect too, but harmless: time never runs back.
A validly signed command's ``iat`` is the server's time and may re-anchor a suspect clock
forward (``reanchor``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

SLACK_S = 5.0
DRIFT = 1e-3  # 1000 ppm: far beyond a crystal's drift or NTP's slew rate (500 ppm)
CONFIRM_S = 30.0
MAX_OFFLINE_S = 366 * 86400.0
FLOOR = 1_700_000_000.0  # 2023-11-14: no locker runs before this software existed


@dataclasses.dataclass(frozen=True, slots=True)
class Suspect:
    """A wall reading the locker refused to trust (seconds since the epoch)."""

    reading: float
    trusted: float
    synced: bool


class DomainClock:
    """Time for the domain: never backwards, moved by a wall reading only when plausible.

    :param start_mark: the durable high-water mark stored by the last run (0: none).
    :param wall: the wall clock (``time.time``), seconds since the epoch.
    :param mono: a monotonic clock in seconds (``time.monotonic``).
    :param synced: whether a time service has synchronised the wall clock.
    """

    def __init__(
        self,
        start_mark: float = 0.0,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        synced: Callable[[], bool] = lambda: False,
    ) -> None:
        self._wall = wall
        self._mono = mono
        self._synced = synced
        self._suspect = False
        self._pending: Suspect | None = None
        self._candidate: tuple[float, float] | None = None  # (wall - mono, mono at first sight)
        m = mono()
        w = wall()
        base = max(start_mark, FLOOR) if start_mark else FLOOR
        if start_mark and base - SLACK_S <= w <= base + MAX_OFFLINE_S:
            self._anchor = (max(w, base), m)
        elif not start_mark and w >= FLOOR:
            self._anchor = (w, m)  # a new locker: nothing to compare with but the floor
        else:
            self._anchor = (base, m)
            self._flag(w, base)

    @property
    def suspect(self) -> bool:
        """Whether the last wall reading was refused."""
        return self._suspect

    def estimate(self, m: float | None = None) -> float:
        aw, am = self._anchor
        return aw + ((self._mono() if m is None else m) - am)

    def now(self) -> float:
        """Trusted time in seconds since the epoch: never less than a previous result."""
        m, w = self._mono(), self._wall()
        est = self.estimate(m)
        am = self._anchor[1]
        slack = SLACK_S + DRIFT * max(0.0, m - am)
        if est - slack <= w <= est + slack:
            self._candidate = None
            self._suspect = False
            if w > est:
                self._anchor = (w, m)
            return max(w, est)
        if w > est and self._synced() and self._confirmed(w, m):
            self._anchor = (w, m)
            self._suspect = False
            return w
        self._flag(w, est)
        return est

    def _confirmed(self, w: float, m: float) -> bool:
        """A synchronised jump is taken once it has held steady for ``CONFIRM_S``."""
        offset = w - m
        if self._candidate is None or abs(self._candidate[0] - offset) > SLACK_S:
            self._candidate = (offset, m)
            return False
        return m - self._candidate[1] >= CONFIRM_S

    def _flag(self, reading: float, trusted: float) -> None:
        if not self._suspect:
            self._suspect = True
            self._pending = Suspect(reading, trusted, self._synced())

    def take_suspect(self) -> Suspect | None:
        """The start of a suspect episode not yet reported (once per episode)."""
        pending, self._pending = self._pending, None
        return pending

    def reanchor(self, server_time: float) -> bool:
        """A validly signed command's ``iat``: move a suspect clock forward to it. Returns
        whether the anchor moved (never backwards, never when the clock is trusted)."""
        m = self._mono()
        if not self._suspect or server_time <= self.estimate(m):
            return False
        self._anchor = (server_time, m)
        return True
