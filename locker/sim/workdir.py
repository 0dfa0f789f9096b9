"""The simulator's work directory: never delete what it did not make, never share it.

``make simulate`` writes keys, certificates, a broker config and lockerd's database under
``var/sim``. A second simulator started meanwhile takes ``var/sim-2`` (and so on) instead of
wiping the first one's files; an explicit ``--workdir`` that another run holds, or that holds
files the simulator did not make, is refused.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path
from typing import TextIO

from locker import errors

WORKDIR_MARKER = ".locker-sim"
DEFAULT_WORKDIR = Path("var/sim")


class WorkdirError(errors.ConfigError):
    """The work directory cannot be used: not made by the simulator, or in use by another run."""


def claim_workdir(work: Path) -> TextIO:
    """Take ``work`` for this run: lock it, empty it, mark it. Returns the open lock file; the
    lock lasts until it is closed (or the process ends).

    A directory is emptied only if it is empty or holds the simulator's marker file, so a
    mistyped ``--workdir`` never deletes someone's files. The lock (``flock`` on a file next to
    the directory) keeps a second simulator from wiping the directory of a running one.

    :raises WorkdirError: another simulator holds it, or it was not made by the simulator.
    """
    work.parent.mkdir(parents=True, exist_ok=True)
    lock = (work.parent / f".{work.name}.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise WorkdirError(f"{work} is in use by another simulator") from None
    try:
        if work.exists():
            if not work.is_dir():
                raise WorkdirError(f"{work} is not a directory")
            if any(work.iterdir()) and not (work / WORKDIR_MARKER).is_file():
                raise WorkdirError(
                    f"refusing to empty {work}: the simulator did not make it (no "
                    f"{WORKDIR_MARKER} inside); empty it yourself or choose another --workdir"
                )
            shutil.rmtree(work)
        work.mkdir(parents=True)
        (work / WORKDIR_MARKER).write_text(
            "made by python -m locker.sim; emptied and re-created at its next run\n"
        )
    except BaseException:
        lock.close()
        raise
    return lock


def claim_default(base: Path) -> tuple[Path, TextIO]:
    """``var/sim``, or ``var/sim-2``, ``-3``... when another simulator is running there."""
    for n in range(1, 100):
        work = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            return work, claim_workdir(work)
        except WorkdirError:
            if n == 1 and not _busy(work):
                raise
    raise WorkdirError(f"{base} and 98 siblings are all in use")


def _busy(work: Path) -> bool:
    with (work.parent / f".{work.name}.lock").open("a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
