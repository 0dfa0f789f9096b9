"""The controller's inbox: two lanes, one bounded, so no input flood starves the rest.

Every adapter hands its events to ``Inbox.put`` (thread-safe, never blocks, never raises).
People's input (keys, scans, rejected bytes: ``PEOPLE``) goes to a bounded lane; when that
lane is full the event is shed right there, before it costs the controller anything, and
counted per source. The gap is marked in band: the next event accepted from that source is
preceded by ``InputRejected(source, "overload")``, so the machine drops a keypad entry that
lost keys instead of reading what is left of it as a code (a flood of ``1#`` with some ``#``
shed must not become 8-digit guesses).

Everything else (commands, acks, link changes, door and item sensors, unlock results,
faults, ticks) goes to the urgent lane, which the controller always empties first. That lane
is not bounded here because each of its producers is: the broker delivers at most
``max_inflight`` unacknowledged commands, and a sensor reports a change at most once per
debounce interval.

``get`` and ``get_nowait`` raise ``queue.Empty`` like ``queue.Queue``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from typing import Any, Final

from locker.ports import InputRejected, InputSource, KeyPressed, LineScanned

PEOPLE: Final = (KeyPressed, LineScanned, InputRejected)
DEFAULT_INPUT_LIMIT: Final = 256  # about 25 s of honest typing; far below a second of flood
OVERLOAD: Final = "overload"  # the reason of the in-band mark where input was shed


class Inbox:
    """Two-lane queue: ``urgent`` first, then ``inputs`` (bounded, shedding when full)."""

    def __init__(self, input_limit: int = DEFAULT_INPUT_LIMIT) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._urgent: deque[Any] = deque()
        self._inputs: deque[Any] = deque()
        self._limit = input_limit
        self._shed: Counter[InputSource] = Counter()
        self._gap: set[InputSource] = set()

    def put(self, event: object) -> None:
        with self._cond:
            if isinstance(event, PEOPLE):
                if len(self._inputs) >= self._limit:
                    self._shed[event.source] += 1
                    self._gap.add(event.source)
                    return
                if event.source in self._gap:
                    self._gap.discard(event.source)
                    self._inputs.append(InputRejected(event.source, OVERLOAD))
                self._inputs.append(event)
            else:
                self._urgent.append(event)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Any:
        """The next event, urgent ones first; ``queue.Empty`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._urgent or self._inputs):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._cond.wait(left)
            return self._urgent.popleft() if self._urgent else self._inputs.popleft()

    def get_nowait(self) -> Any:
        with self._cond:
            if self._urgent:
                return self._urgent.popleft()
            if self._inputs:
                return self._inputs.popleft()
        raise queue.Empty

    def take_shed(self) -> dict[InputSource, int]:
        """How many people's events were shed per source since the last call."""
        with self._cond:
            shed, self._shed = dict(self._shed), Counter()
        return shed

    def qsize(self) -> int:
        with self._cond:
            return len(self._urgent) + len(self._inputs)
