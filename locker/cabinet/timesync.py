"""Is the system clock synchronised? Asked of the kernel, whichever time service runs.

systemd-timesyncd, chrony and ntpd all discipline the clock through adjtimex(2), and the kernel
keeps the result: ``maxerror`` (microseconds) is reset by the service on every update and grows
by 500 ppm each second without one; at 16 s (``NTP_PHASE_LIMIT``) the kernel also sets
``STA_UNSYNC``. So "``maxerror`` below 16 s" means "a time service updated the clock recently",
which is the rule systemd's own ``ntp_synced()`` uses (``src/basic/time-util.c``). The
``STA_UNSYNC`` bit alone is not used: chrony sets it on purpose when ``rtcsync`` is off, to keep
the kernel from writing the RTC (chrony ``sys_timex.c``), although its clock is synchronised.

A call with ``modes = 0`` only reads, so no capability is needed. Where the call is unavailable
(not Linux, seccomp), the answer falls back to systemd-timesyncd's flag file.

Reference: adjtimex(2), ``struct timex`` in ``<sys/timex.h>``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger(__name__)

MAXERROR_LIMIT_US: Final = 16_000_000  # kernel NTP_PHASE_LIMIT, as systemd's ntp_synced()
STA_UNSYNC: Final = 0x0040
TIMESYNC_FLAG: Final = Path("/run/systemd/timesync/synchronized")


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """``struct timex`` of Linux (glibc ``<bits/timex.h>``), with its 11 reserved ints."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@functools.cache
def _adjtimex() -> Callable[[Any], int] | None:
    """libc's ``adjtimex``, looked up once: ``find_library`` runs ``ldconfig -p`` in a child
    process (about 1.5 ms), and ``clock_synced`` is asked on every commit, before an unlock's
    pulse (issue 10). None where there is no such call."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn: Callable[[Any], int] = libc.adjtimex
    except (OSError, AttributeError):
        return None
    return fn


def read_timex() -> Timex | None:
    """The kernel's clock discipline state (a read-only adjtimex call); None if unavailable."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    tx = Timex()  # modes = 0: read only
    if adjtimex(ctypes.byref(tx)) < 0:
        logger.debug("adjtimex failed: errno %d", ctypes.get_errno())
        return None
    return tx


def synced_from(tx: Timex) -> bool:
    """The kernel's verdict: a time service updated the clock within the error budget."""
    return bool(0 <= tx.maxerror < MAXERROR_LIMIT_US)


def make_clock_synced(
    read: Callable[[], Timex | None] = read_timex, flag: Path = TIMESYNC_FLAG
) -> Callable[[], bool]:
    """A ``clock_synced()`` callable for the controller and the link (cheap: one syscall)."""

    def clock_synced() -> bool:
        tx = read()
        if tx is None:
            return flag.exists()
        return synced_from(tx)

    return clock_synced


clock_synced: Final = make_clock_synced()
