"""Quiet hours (DESIGN section 12, ``[panel] quiet_hours``): a local time-of-day window in which
the buzzer is softer and LEDs dim. Only how things are shown changes; every event, alarms
included, still goes to the server at once."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from locker.config.panel import in_window


def local_time(ts: float) -> datetime.time:
    return datetime.datetime.fromtimestamp(ts).time()  # naive on purpose: local wall time


class QuietHours:
    """``quiet()`` (now) or ``quiet(ts)``: whether that moment is within the window.

    :param window: (start, end) local times, or None for never quiet.
    :param clock: Unix seconds now. :param localtime: Unix seconds -> local time of day."""

    def __init__(
        self,
        window: tuple[datetime.time, datetime.time] | None,
        clock: Callable[[], float] = time.time,
        localtime: Callable[[float], datetime.time] = local_time,
    ) -> None:
        self.window = window
        self.clock = clock
        self.localtime = localtime

    def __call__(self, ts: float | None = None) -> bool:
        if self.window is None:
            return False
        return in_window(self.window, self.localtime(self.clock() if ts is None else ts))
