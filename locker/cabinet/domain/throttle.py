"""Device-wide guessing throttle (DESIGN section 6; NIST SP 800-63B 5.2.2).

Per device, not per code: a guesser needs *any* live code, so every failed attempt at the
keypad or scanner counts against one counter. After ``failures_before_backoff`` consecutive
failures each further failure blocks input for 30 s, doubling up to 1 h; ``hard_lockout``
consecutive failures, or more than ``max_per_hour`` within an hour, lock the keypad until a
signed ``reset_lockout``. Pure functions over ``Throttle``; the state is persisted with the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from locker.cabinet.domain.model import Throttle

HOUR_S = 3600.0
BASE_DELAY_S = 30.0
MAX_DELAY_S = 3600.0

Verdict = Literal["refused", "throttled", "locked_out"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    # No defaults: security.* of the config model are the only ones (via the assembly).
    failures_before_backoff: int
    hard_lockout: int
    max_per_hour: int


def gate(t: Throttle, now: float) -> Literal["locked_out", "throttled"] | None:
    """Why input is refused without being evaluated right now, if it is."""
    if t.locked_out:
        return "locked_out"
    if now < t.blocked_until:
        return "throttled"
    return None


def delay_after(consecutive: int, limits: Limits) -> float:
    """Back-off imposed after the ``consecutive``-th failure in a row (0 below the threshold)."""
    over = consecutive - limits.failures_before_backoff
    if over < 0:
        return 0.0
    return float(min(BASE_DELAY_S * 2 ** min(over, 20), MAX_DELAY_S))


def record_failure(t: Throttle, now: float, limits: Limits) -> tuple[Throttle, Verdict, float]:
    """Count one failure. Returns the new throttle, what the person is told, and the delay."""
    consecutive = t.consecutive + 1
    recent = (*(x for x in t.recent if x > now - HOUR_S), now)
    if consecutive >= limits.hard_lockout or len(recent) > limits.max_per_hour:
        return Throttle(consecutive, recent, t.blocked_until, True), "locked_out", 0.0
    delay = delay_after(consecutive, limits)
    if delay:
        return Throttle(consecutive, recent, now + delay, False), "throttled", delay
    return dataclasses.replace(t, consecutive=consecutive, recent=recent), "refused", 0.0


def record_success(t: Throttle) -> Throttle:
    """A correct credential ends the run of consecutive failures (the hourly count stays)."""
    return dataclasses.replace(t, consecutive=0)


def reset(t: Throttle) -> Throttle:
    """Signed ``reset_lockout``: everything cleared."""
    return Throttle()
