"""A simulated person at the cabinet, for mock pins: opens a door when its lock is pulsed and
closes it again a little later.

Used by the simulator and by tests that run the real daemon as a separate process on
gpiozero's ``MockFactory`` (where nothing else could move a door). It only watches lock pins
and drives door pins, exactly as a person and a reed switch would; it never touches locker
state. Refused for any pin factory but the mock one.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from gpiozero.pins.mock import MockFactory

from locker.ports import guarded

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimDoor:
    lock_pin: int
    door_pin: int
    closed_level: str = "low"  # the level the door pin reads when the door is closed


class DoorActor:
    """Watches lock pins; a pulse makes the door open after ``open_after_s`` and close again
    ``close_after_s`` later (never, if None). Compartments in ``jammed`` do not open."""

    def __init__(
        self,
        factory: object,
        doors: Mapping[str, SimDoor],
        *,
        open_after_s: float = 0.3,
        close_after_s: float | None = 1.5,
        poll_s: float = 0.005,
    ) -> None:
        if not isinstance(factory, MockFactory):
            raise TypeError("simulated doors need gpiozero's MockFactory (pin_factory = 'mock')")
        self.factory = factory
        self.doors = dict(doors)
        self.open_after_s = open_after_s
        self.close_after_s = close_after_s
        self.poll_s = poll_s
        self.jammed: set[str] = set()
        self._plan: list[tuple[float, str, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-doors", daemon=True)

    def start(self) -> None:
        for cid in self.doors:
            self.set_door(cid, opened=False)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def set_door(self, cid: str, *, opened: bool) -> None:
        door = self.doors[cid]
        pin = self.factory.pin(door.door_pin)
        high = (door.closed_level == "low") == opened
        if high:
            pin.drive_high()
        else:
            pin.drive_low()

    def schedule(self, cid: str, at: float, *, opened: bool) -> None:
        with self._lock:
            heapq.heappush(self._plan, (at, cid, opened))

    def _run(self) -> None:
        was_on = {cid: False for cid in self.doors}
        while not self._stop.wait(self.poll_s):
            self._tick(was_on)

    @guarded(logger)
    def _tick(self, was_on: dict[str, bool]) -> None:
        now = time.monotonic()
        for cid, door in self.doors.items():
            on = bool(self.factory.pin(door.lock_pin).state)
            if on and not was_on[cid] and cid not in self.jammed:
                self.schedule(cid, now + self.open_after_s, opened=True)
                if self.close_after_s is not None:
                    self.schedule(cid, now + self.open_after_s + self.close_after_s, opened=False)
            was_on[cid] = on
        while True:
            with self._lock:
                if not self._plan or self._plan[0][0] > now:
                    break
                _, cid, opened = heapq.heappop(self._plan)
            self.set_door(cid, opened=opened)
