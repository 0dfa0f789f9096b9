"""Guessing throttle and the scanner's work bound (DESIGN section 6; NIST SP 800-63B 5.2.2).

Keypad: per device, not per code (a guesser needs *any* live code). Only a keypad entry that
could be a code (``code_length`` digits) and matches no live tag is a failure. After
``failures_before_backoff`` consecutive failures each further failure blocks the keypad for
30 s, doubling up to 1 h; ``hard_lockout`` consecutive failures, or more than ``max_per_hour``
within an hour, lock the keypad until ``lockout_s`` has passed or a signed ``reset_lockout``
arrives, whichever comes first. The counters are persisted with the rest of the state.

Scanner: a signed QR token cannot be guessed, so keypad guessing never refuses it. The
scanner's own limit only bounds work: more than ``SCAN_BURST`` refused scans within
``SCAN_WINDOW_S`` refuse further scans unread for ``SCAN_COOL_S`` (volatile state).

Pure functions over ``Throttle`` and ``ScanLimit``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from locker.cabinet.domain.model import ScanLimit, Throttle

HOUR_S = 3600.0
BASE_DELAY_S = 30.0
MAX_DELAY_S = 3600.0

SCAN_BURST = 10  # refused scans tolerated within SCAN_WINDOW_S ...
SCAN_WINDOW_S = 10.0
SCAN_COOL_S = 5.0  # ... before the scanner is ignored (cheaply refused) for this long

Verdict = Literal["refused", "throttled", "locked_out"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    # No defaults: security.* of the config model are the only ones (via the assembly).
    failures_before_backoff: int
    hard_lockout: int
    max_per_hour: int
    lockout_s: float  # a hard lock-out ends by itself after this (security.lockout_s)


def gate(t: Throttle, now: float) -> Literal["locked_out", "throttled"] | None:
    """Why keypad input is refused without being evaluated right now, if it is."""
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


def last_hour(recent: tuple[tuple[int, int], ...]) -> int:
    """Failures counted in the per-minute buckets of the last hour."""
    return sum(n for _, n in recent)


def _add_failure(recent: tuple[tuple[int, int], ...], now: float) -> tuple[tuple[int, int], ...]:
    """One more failure in ``now``'s minute; buckets older than an hour are dropped (the
    window is therefore 60-61 minutes: a minute's granularity, never less than an hour)."""
    minute = int(now // 60)
    kept = [(m, n) for m, n in recent if m > minute - 61 and m != minute]
    here = next((n for m, n in recent if m == minute), 0)
    return (*kept, (minute, here + 1))


def record_failure(t: Throttle, now: float, limits: Limits) -> tuple[Throttle, Verdict, float]:
    """Count one failed guess. Returns the new throttle, what the person is told, and the
    delay (for a lock-out: how long it lasts at most)."""
    consecutive = t.consecutive + 1
    recent = _add_failure(t.recent, now)
    if consecutive >= limits.hard_lockout or last_hour(recent) > limits.max_per_hour:
        locked = Throttle(consecutive, recent, t.blocked_until, True, now + limits.lockout_s)
        return locked, "locked_out", limits.lockout_s
    delay = delay_after(consecutive, limits)
    if delay:
        return Throttle(consecutive, recent, now + delay, False), "throttled", delay
    return dataclasses.replace(t, consecutive=consecutive, recent=recent), "refused", 0.0


def lockout_over(t: Throttle, now: float) -> bool:
    """Whether a hard lock-out has run its course (``lockout_s`` after it began)."""
    return t.locked_out and now >= t.locked_until


def record_success(t: Throttle) -> Throttle:
    """A correct code ends the run of consecutive failures (the hourly count stays)."""
    return dataclasses.replace(t, consecutive=0)


def reset(t: Throttle) -> Throttle:
    """Signed ``reset_lockout``, or a lock-out that ran its course: everything cleared."""
    return Throttle()


def scan_gate(s: ScanLimit, now: float) -> bool:
    """True when the scanner is cooling off: refuse the scan without reading it."""
    return now < s.blocked_until


def record_bad_scan(s: ScanLimit, now: float) -> ScanLimit:
    """Count one refused scan; past ``SCAN_BURST`` in ``SCAN_WINDOW_S``, cool off."""
    failures = (*(x for x in s.failures if x > now - SCAN_WINDOW_S), now)
    if len(failures) > SCAN_BURST:
        return ScanLimit((), now + SCAN_COOL_S)
    return ScanLimit(failures, s.blocked_until)
