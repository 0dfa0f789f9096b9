"""How the controller logs each committed event: alarms one line each at WARNING, the rest one
line each at DEBUG and an INFO summary of counts at most once per ``SUMMARY_S`` (issue 10: a
formatted INFO line per event cost a tenth of the controller's time in a burst).

Kept apart from locker.cabinet.controller so that module stays small. Lines go out under the
controller's logger name, which operators filter on.
"""

from __future__ import annotations

import logging
from collections import Counter

from locker.cabinet.domain.model import Out

# The controller's logger: operators filter and tests capture these lines under that name.
logger = logging.getLogger("locker.cabinet.controller")

__all__ = ["ALARMS", "SUMMARY_S", "EventLog", "log_event"]

SUMMARY_S = 60.0  # seconds between two INFO summaries of the events that are not alarms

# Events that need a person (logged at WARNING; DESIGN section 5 lists them as alarms).
ALARMS = frozenset(
    {
        "door_forced",
        "door_jammed",
        "door_left_open",
        "unlock_outcome_unknown",
        "keypad_locked_out",
        "hardware_fault",
        "remote_open_limited",
        "clock_suspect",
        "storage_fault",
        "command_rejected",
        "item_left_behind",
        "deposit_empty",
    }
)


def log_event(ev: Out) -> None:
    """One line for ``ev``: an alarm at WARNING, any other event at DEBUG; refusals with their
    reason (never a code)."""
    level = logging.WARNING if ev.type in ALARMS else logging.DEBUG
    if not logger.isEnabledFor(level):
        return
    details = "".join(
        f" {k}={ev.data[k]}"
        for k in ("reason", "source", "count", "device", "detail")
        if k in ev.data and ev.type in ("access_denied", "hardware_fault", "storage_fault")
    )
    logger.log(
        level,
        "event %s%s%s%s",
        ev.type,
        f" compartment={ev.compartment}" if ev.compartment else "",
        f" parcel={ev.parcel}" if ev.parcel else "",
        details,
    )


class EventLog:
    """The controller's event lines (one instance, used on the controller thread only): each
    event through :func:`log_event`, and the events that are not alarms counted by type into
    one INFO line ``events in the last N s: type=count ...`` at most once per ``SUMMARY_S``
    (``now``: monotonic seconds)."""

    def __init__(self, every_s: float = SUMMARY_S) -> None:
        self._every = every_s
        self._counts: Counter[str] = Counter()
        self._since: float | None = None

    def log(self, ev: Out, now: float) -> None:
        log_event(ev)
        if ev.type not in ALARMS:
            self._counts[ev.type] += 1
            if self._since is None:
                self._since = now
        self.flush(now)

    def flush(self, now: float, force: bool = False) -> None:
        """The summary line, if one is due (or ``force``) and anything was counted."""
        if self._since is None or not (force or now - self._since >= self._every):
            return
        if logger.isEnabledFor(logging.INFO):
            counts = " ".join(f"{t}={n}" for t, n in sorted(self._counts.items()))
            logger.info("events in the last %.0f s: %s", now - self._since, counts)
        self._counts.clear()
        self._since = None
