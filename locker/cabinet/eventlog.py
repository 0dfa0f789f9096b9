"""How the controller logs each committed event: one line per event, alarms at WARNING.

Kept apart from locker.cabinet.controller so that module stays small. Lines go out under the
controller's logger name, which operators filter on.
"""

from __future__ import annotations

import logging

from locker.cabinet.domain.model import Out

# The controller's logger: operators filter and tests capture these lines under that name.
logger = logging.getLogger("locker.cabinet.controller")

__all__ = ["ALARMS", "log_event"]

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
    """One line per event: alarms at WARNING, refusals with their reason (never a code)."""
    level = logging.WARNING if ev.type in ALARMS else logging.INFO
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
