"""Surfaces that follow the hub on a thread of their own: locator LEDs (and the base the LCD
and voice workers share). Each takes the latest view when it is ready for one; however slow it
is, the controller never waits (``locker.cabinet.panel.hub``)."""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

from locker.cabinet.panel.hub import PanelHub, Snapshot
from locker.ports import Surface

logger = logging.getLogger(__name__)

WAKE_S = 1.0  # look at the clock at least this often (a message may lapse by itself)


class Follower(Surface):
    """Calls ``render`` on its own thread for each new snapshot (and at least every
    ``WAKE_S``); an exception in ``render`` is logged and the follower goes on."""

    name = "panel-follower"

    def __init__(self, hub: PanelHub, clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rendered = 0  # how many snapshots were rendered (tests wait on it)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = -1
        while not self._stop.is_set():
            snap = self.hub.wait_newer(seen, WAKE_S)
            seen = snap.version
            try:
                self.render(snap, self.clock())
                self.rendered += 1
            except Exception:
                logger.exception("%s failed to render; going on", self.name)

    @abc.abstractmethod
    def render(self, snap: Snapshot, now: float) -> None: ...

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.release()

    def release(self) -> None:
        """Free the device after the thread has stopped."""


class Leds(Protocol):
    def show(self, active: Collection[str], *, dimmed: bool = False) -> None: ...
    def close(self) -> None: ...


class LocatorFollower(Follower):
    """Blinks the locator LED of every door that is unlocked or open."""

    name = "panel-locator"

    def __init__(
        self,
        hub: PanelHub,
        leds: Leds,
        quiet: Callable[[float], bool] = lambda now: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(hub, clock)
        self.leds = leds
        self.quiet = quiet

    def render(self, snap: Snapshot, now: float) -> None:
        self.leds.show(snap.view.active_doors, dimmed=self.quiet(now))

    def release(self) -> None:
        self.leds.close()
