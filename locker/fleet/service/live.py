"""Fan-out of newly stored events to live views (the console's server-sent events).

The ingest worker calls ``publish`` on its own thread after each commit; each subscriber is
an asyncio queue in the web server's loop, fed with ``call_soon_threadsafe``. A subscriber
that does not keep up loses items (bounded queue): a live view is a convenience, the
database is the record.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from locker.fleet.service.ingest import Outcome

QUEUE_MAX = 1000


@dataclass(frozen=True)
class Item:
    kind: str  # "event" | "status" | "state"
    locker: str
    data: dict[str, Any]


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Item | None]]] = []
        self.closed = False

    def subscribe(self) -> asyncio.Queue[Item | None]:
        q: asyncio.Queue[Item | None] = asyncio.Queue(QUEUE_MAX)
        with self._lock:
            self._subs.append((asyncio.get_running_loop(), q))
        return q

    def unsubscribe(self, q: asyncio.Queue[Item | None]) -> None:
        with self._lock:
            self._subs = [(lp, s) for lp, s in self._subs if s is not q]

    def _put(self, item: Item | None) -> None:
        with self._lock:
            subs = list(self._subs)
        for loop, q in subs:

            def put(q: asyncio.Queue[Item | None] = q) -> None:
                if not q.full():
                    q.put_nowait(item)

            try:
                loop.call_soon_threadsafe(put)
            except RuntimeError:  # that loop is closed
                self.unsubscribe(q)

    def publish(self, out: Outcome) -> None:
        for ev in out.stored:
            self._put(Item("event", str(ev["locker"]), ev))
        for locker in out.states:
            self._put(Item("state", locker, {"locker": locker}))
        for locker, online in out.statuses:
            self._put(Item("status", locker, {"locker": locker, "online": online}))

    def close(self) -> None:
        self.closed = True
        self._put(None)
