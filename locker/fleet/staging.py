"""Build a directory completely before it is in place: all or nothing.

``lockerctl fleet init`` and ``locker add`` write a dozen files (keys, certificates, configs).
Written in place, a run that failed part-way (a full disk, a file too large, Ctrl-C, a kill)
left half a directory, and the next run refused because files existed. :func:`staged_dir`
builds in a fresh staging directory, ``.<name>.partial-XXXXXXXX``, and puts the result in
place only once every file is written and flushed to disk:

- a target that does not exist is built beside it, in the same parent (so on the same file
  system), and renamed into place: one ``rename(2)``, atomic (POSIX.1-2017, rename()). That
  rename never replaces anything but an empty directory, so not even a concurrent run
  overwrites a key;
- a target that is an empty directory (``fleet init .``, or one made for the installer by
  root) is built inside it, then its entries are moved up one by one, the ``last`` one (the
  file that makes the directory count as made, e.g. ``fleet.toml``) last. The staging
  directory's ``.moving`` file names them first, so an interrupted move can be undone.

When the block raises, the staging directory is removed and the target is as it was. A run
killed outright (SIGKILL, power loss) cannot clean up: its staging directory stays. Each run
holds ``flock(2)`` on its own staging directory while it works, so the next run for the same
target tells such a leftover (no holder) from a run under way (held): it removes the leftover,
with whatever it had moved into an empty target before it was killed, and reports it; or it
refuses while another run works. A leftover's keys were never in use: the file that makes a
directory count as made is moved last.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from locker import errors
from locker.fleet.layout import DIR_MODE, make_dir

STAGING_INFIX = ".partial-"
MOVING = ".moving"  # in a staging directory: the entries being moved into the target, in order
_NEW_INFIX = ".new-"  # a staging directory not yet locked: never taken for a leftover

Report = Callable[[str], None]


def staging_name(target: Path) -> str:
    """The glob pattern of ``target``'s staging directories (names start with a dot)."""
    return f".{glob.escape(target.name)}{STAGING_INFIX}*"


def _lock(path: Path, *, wait: bool) -> int:
    """An open descriptor of directory ``path`` holding its flock.

    :raises BlockingIOError: another process holds it (only with ``wait`` false).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _undo_moves(staging: Path, target: Path) -> list[str]:
    """Remove from ``target`` what an interrupted move took there from ``staging``, unless
    the move got to its last entry (then the target is complete). Returns what it removed."""
    try:
        names = (staging / MOVING).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []  # it never began moving
    moved = [n for n in names if not os.path.lexists(staging / n)]
    if not names or names[-1] in moved:
        return []
    for name in moved:
        _remove(target / name)
    return moved


def _remove_leftovers(home: Path, target: Path, shown: Path, report: Report) -> None:
    for old in sorted(home.glob(staging_name(target))):
        try:
            fd = _lock(old, wait=False)
        except FileNotFoundError:
            continue  # its own run finished (renamed or removed) meanwhile
        except BlockingIOError:
            raise errors.ProvisionError(
                f"another lockerctl is creating {shown} right now ({old.name} is in use); "
                "let it finish, or stop it and run this again"
            ) from None
        try:
            undone = _undo_moves(old, target)
            shutil.rmtree(old)
        finally:
            os.close(fd)
        also = f", and {', '.join(undone)} it had moved into {shown}" if undone else ""
        report(f"removed {old}{also}: the unfinished work of an interrupted run, never in use")


def _check_free(target: Path, shown: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise errors.ProvisionError(f"{shown} exists and is not a directory; refusing to use it")


def _check_empty(target: Path, shown: Path) -> None:
    if any(target.iterdir()):
        raise errors.ProvisionError(
            f"{shown} exists and is not empty; refusing to write into it (give a new "
            "directory, or an empty one)"
        )


def _flush_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (nothing may be put in place whose files
    are still only in the page cache: after a power loss they could be empty)."""
    for where, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(where, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(where))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_target(err: OSError, tmp: Path, shown: Path) -> str:
    """``err`` in one line, with the staging directory's paths shown as the target's."""
    reason = err.strerror or str(err)
    if err.filename is None:
        return reason
    name = os.fsdecode(err.filename)
    with contextlib.suppress(ValueError):
        name = str(shown / Path(name).relative_to(tmp))
    return f"cannot write {name}: {reason}"


def _move_in(tmp: Path, target: Path, last: str | None) -> None:
    """Move ``tmp``'s entries into the empty directory ``target``, ``last`` last, never
    replacing anything; ``tmp`` is removed. :raises FileExistsError: a name was taken."""
    names = sorted(os.listdir(tmp), key=lambda n: (n == last, n))
    (tmp / MOVING).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    _flush_tree(tmp)
    for name in names:
        if os.path.lexists(target / name):  # rename(2) would replace a file
            raise FileExistsError(errno.EEXIST, "created meanwhile", os.fspath(target / name))
        os.rename(tmp / name, target / name)
    (tmp / MOVING).unlink()
    tmp.rmdir()


@contextlib.contextmanager
def staged_dir(target: Path, report: Report, *, last: str | None = None) -> Iterator[Path]:
    """Yield an empty directory (mode 0750) to build ``target`` in; put its content in place
    when the block ends normally, remove it when the block raises.

    ``target`` may be missing (its parents are made) or an empty directory (its mode and
    owner are kept); ``last``: the entry to put in place last (the one that makes the target
    count as made). ``report`` receives one line for each leftover of an interrupted run
    removed first. Messages name ``target`` as given.

    :raises errors.ProvisionError: ``target`` is a file or a non-empty directory, another run
        is building it, or something took its place or a name in it while this one built.
    :raises errors.StorageError: a file could not be written (the message names it as the
        target's file, and says nothing was kept).
    """
    shown = Path(target)
    target = Path(os.path.abspath(target))  # "." and ".." have no name to stage beside
    _check_free(target, shown)
    inside = target.is_dir()
    home = target if inside else target.parent
    make_dir(home)
    _remove_leftovers(target.parent, target, shown, report)
    if inside:
        _remove_leftovers(target, target, shown, report)
        _check_empty(target, shown)
    prefix = f".{target.name}{_NEW_INFIX}"
    try:
        new = Path(tempfile.mkdtemp(prefix=prefix, dir=home))
    except OSError as err:  # named as the target: the staging name means nothing to a person
        raise OSError(err.errno, err.strerror, os.fspath(shown)) from err
    fd = _lock(new, wait=True)
    try:
        tmp = new.with_name(f".{target.name}{STAGING_INFIX}{new.name[len(prefix) :]}")
        new.rename(tmp)
        os.chmod(tmp, DIR_MODE)
        kept = f"nothing was kept: {shown} " + ("is as it was" if inside else "was not created")
        try:
            yield tmp
            _flush_tree(tmp)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError) and not isinstance(err, errors.LockerError):
                raise errors.StorageError(f"{_as_target(err, tmp, shown)}; {kept}") from err
            if isinstance(err, KeyboardInterrupt):
                report(f"interrupted; {kept}")
            raise
        try:
            if inside:
                _move_in(tmp, target, last)
            else:
                tmp.rename(target)
        except OSError as err:  # another run or a person got there first
            _undo_moves(tmp, target)
            shutil.rmtree(tmp, ignore_errors=True)
            raise errors.ProvisionError(
                f"cannot put {shown} in place: {err.strerror or err} (was it created "
                f"meanwhile?); {kept}"
            ) from err
        _fsync_dir(home if inside else target.parent)
    finally:
        os.close(fd)
