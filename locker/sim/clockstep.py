"""A real wall-clock step for a simulated ``lockerd``: libfaketime, driven through a file.

``ClockStepper`` prepares the environment of a ``lockerd`` child so that libfaketime (Debian
package ``faketime``) is preloaded: ``FAKETIME_TIMESTAMP_FILE`` names a file holding a
libfaketime offset (``+0``, ``+44y``, ``-2h``: its README, "Using offsets for relative dates"),
re-read on every call (``FAKETIME_NO_CACHE=1``; measured about 2 us a ``time.time()`` instead
of 0.1 us). ``step`` rewrites the file, so the child's wall clock (``clock_gettime(
CLOCK_REALTIME)``, ``time()``, ``gettimeofday()``: Python, SQLite and OpenSSL alike) jumps at
once, as after a bad NTP answer or a Pi booting without its RTC, while ``CLOCK_MONOTONIC`` is
left alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``: a real step never moves it) and file times
are reported as stored (``NO_FAKE_STAT=1``).

One known libfaketime defect is worked around here: up to 0.9.10 (Debian bookworm's) its
``clock_nanosleep`` shifts an absolute ``CLOCK_MONOTONIC`` deadline as if the monotonic clock
were faked even with ``FAKETIME_DONT_FAKE_MONOTONIC=1``, so Python 3.11's ``time.sleep`` (which
sleeps to an absolute monotonic deadline) fails with ``EINVAL`` (wolfcw/libfaketime issue 426,
fixed in 0.9.11). Without ``DONT_FAKE_MONOTONIC`` instead, ``threading.Event.wait`` hangs
(``sem_clockwait`` on the real monotonic clock with a faked deadline, issue 390). So the child
runs ``python -m locker.sim.clockstep`` (``main``): it replaces ``time.sleep`` with a relative
``select`` timeout, which libfaketime passes through, before it runs ``locker`` as
``__main__``; nothing of the product changes.
"""

from __future__ import annotations

import glob
import operator
import os
import runpy
import select
import time
from pathlib import Path
from typing import SupportsIndex

# Debian's multiarch location (dpkg -L libfaketime); the first match wins.
LIBRARY_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"
MODULE = "locker.sim.clockstep"
SHM_DIR = Path("/dev/shm")  # noqa: S108 - where libfaketime puts them, named by pid


def find_library() -> Path | None:
    """libfaketime's variant for threaded programs (it serialises its time intercepts, whose
    cached state is shared: its README, "Compatibility issues"), or None if the package is
    not installed."""
    found = sorted(glob.glob(LIBRARY_GLOB))
    return Path(found[0]) if found else None


class ClockStepper:
    """Steps the wall clock of the processes started with ``env()``.

    :param path: the offset file to create (``+0`` until the first ``step``).
    :param library: libfaketime's path (``find_library()``).
    """

    def __init__(self, path: Path, library: Path) -> None:
        self.path = path
        self.library = library
        self.offset = "+0"
        self._write("+0")

    def env(self) -> dict[str, str]:
        """The environment variables that put a child under this stepper."""
        return {
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",
        }

    def step(self, offset: str) -> None:
        """Set the wall clock to the real time plus ``offset`` (libfaketime's relative form:
        a sign, a number and one of s, m, h, d, y; ``+0`` undoes every step)."""
        self._write(offset)
        self.offset = offset

    def undo(self) -> None:
        self.step("+0")

    def forget(self, pid: int) -> None:
        """Remove the shared-memory pair libfaketime made for the child ``pid``, once it has
        exited (its README, "Cleaning up shared memory": a clean exit removes them, a SIGKILL
        leaves them in ``/dev/shm``)."""
        for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
            (SHM_DIR / name).unlink(missing_ok=True)

    def _write(self, offset: str) -> None:
        # Replaced whole, never rewritten in place: the child re-reads it on every call and
        # must never see it empty.
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(offset + "\n", encoding="ascii")
        os.replace(tmp, self.path)


def _sleep(seconds: float | SupportsIndex) -> None:
    """``time.sleep`` as a relative ``select`` timeout (CPython retries it after a signal
    with the time left, PEP 475); negative values raise ValueError as ``time.sleep`` does."""
    select.select([], [], [], seconds if isinstance(seconds, float) else operator.index(seconds))


def main() -> None:
    """``python -m locker.sim.clockstep ARGS``: ``python -m locker ARGS`` with ``time.sleep``
    replaced first (before any module binds it)."""
    time.sleep = _sleep
    runpy.run_module("locker", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
