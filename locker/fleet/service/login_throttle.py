"""Console login throttle: per user name and per client address (NIST SP 800-63B 5.2.2).

Every login attempt is counted against two keys, ``user:<name>`` and ``addr:<ip>``, when it
is *admitted* (before the ~90 ms argon2 check), so parallel guesses cannot all slip in
before the first failure is recorded. A key that reaches its limit within ``WINDOW_S``
(``USER_LIMIT`` attempts for a name, ``ADDR_LIMIT`` for an address, which may be a NAT
shared by many operators) is locked for ``BASE_LOCK_S``, doubling with each further
lock-out of that key up to ``MAX_LOCK_S``; while locked, attempts are refused without
checking the password (the console answers 429 with ``Retry-After``). A right password
forgets the user key (its count and its lock-out history); the address key only decays, so
one valid account cannot reset the count of an address guessing at others.

A per-user lock-out lets anyone delay that user's next login by the lock time: the short,
growing lock (30 s doubling, at most 15 min) bounds that, while 5 guesses per 30 s+ keep
online guessing of an argon2 password far from useful.

State is in memory, per service process (several workers behind one balancer each count
on their own); it holds at most ``MAX_KEYS`` keys, dropping the least recently used, so
attempts with many names or addresses cannot grow it without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

USER_LIMIT = 5
ADDR_LIMIT = 20
WINDOW_S = 15 * 60.0  # attempts older than this (since a key's last one) are forgotten
BASE_LOCK_S = 30.0
MAX_LOCK_S = 15 * 60.0
MAX_KEYS = 10_000


@dataclass
class _Key:
    attempts: int = 0
    lockouts: int = 0
    locked_until: float = 0.0
    last_at: float = 0.0


@dataclass(frozen=True)
class Refused:
    """An attempt refused: ``key`` is locked for ``retry_after_s`` more seconds (>= 1)."""

    key: str
    retry_after_s: int


@dataclass(frozen=True)
class Locked:
    """An admitted attempt that locked ``key`` for ``lock_s`` seconds (for the log)."""

    key: str
    lock_s: float


class LoginThrottle:
    """Counts login attempts per key; thread-safe (logins run in worker threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(name: str, address: str) -> tuple[str, str]:
        return f"user:{name}", f"addr:{address}"

    def admit(self, keys: Iterable[str]) -> Refused | list[Locked]:
        """Count one attempt against every key, or refuse it if any key is locked.

        :returns: :class:`Refused` (nothing counted), or the keys this attempt locked.
        """
        now = self.clock()
        keys = list(keys)
        with self._lock:
            # look before creating: refused attempts add no keys (they cost no argon2, so
            # letting them in would let a flood of names push locked keys out)
            waits = [(self._keys[k].locked_until - now, k) for k in keys if k in self._keys]
            wait, key = max(waits, default=(0.0, ""))
            if wait > 0:
                return Refused(key, max(1, math.ceil(wait)))
            locked = []
            for key in keys:
                state = self._get(key, now)
                state.attempts += 1
                state.last_at = now
                if state.attempts >= self._limit(key):
                    lock_s = min(MAX_LOCK_S, BASE_LOCK_S * 2**state.lockouts)
                    state.locked_until = now + lock_s
                    state.lockouts += 1
                    state.attempts = 0
                    locked.append(Locked(key, lock_s))
            return locked

    def succeeded(self, user_key: str, addr_key: str) -> None:
        """A right password: the user key starts afresh; the address key takes this attempt
        back (so an office behind one address is not locked by its own good logins)."""
        with self._lock:
            self._keys.pop(user_key, None)
            state = self._keys.get(addr_key)
            if state is not None and state.attempts > 0:
                state.attempts -= 1

    @staticmethod
    def _limit(key: str) -> int:
        return USER_LIMIT if key.startswith("user:") else ADDR_LIMIT

    def _get(self, key: str, now: float) -> _Key:
        state = self._keys.pop(key, None)
        if state is None or (now - state.last_at > WINDOW_S and now >= state.locked_until):
            # idle for a window and not locked: its count and lock-out history are over
            state = _Key(last_at=now)
        self._keys[key] = state  # most recently used last
        while len(self._keys) > MAX_KEYS:
            self._keys.popitem(last=False)
        return state
