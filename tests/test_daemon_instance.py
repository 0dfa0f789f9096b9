"""Issue 11 items 8 and 9 at the process level: real ``lockerd`` children.

- A second lockerd on the same state directory exits at once with status 75 and a clear
  line, and the first goes on undisturbed (no events of the second, still running).
- An unwritable state directory at start gives one line and status 74, not a traceback."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from locker.cabinet import daemon
from locker.cabinet.store import Store
from tests.conftest import small_tmpfs, wait_for
from tests.daemon_rig import one_door_config


def _config(tmp: Path, state: Path) -> Path:
    return one_door_config(tmp, state)


def _lockerd(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    return subprocess.Popen(
        [sys.executable, "-m", "locker", "--config", str(cfg), *extra],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _problems(stderr: str, cfg: Path) -> list[str]:
    """A child's stderr lines but the configuration's warnings, which lockerd logs at every
    start (here: no keypad and no scanner)."""
    warning = f" WARNING lockerd: {cfg}: "
    return [line for line in stderr.strip().splitlines() if warning not in line]


class Lines:
    """A child's stderr, read on a thread so waiting on it has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self._t = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._t.start()


@pytest.fixture
def first(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Lines]]:
    state = tmp_path / "state"
    cfg = _config(tmp_path, state)
    proc = _lockerd(cfg)
    lines = Lines(proc)
    try:
        wait_for(lambda: any(" ready: " in ln for ln in lines.lines), 20, what="first ready")
        yield proc, cfg, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def _types(db: Path) -> list[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT type FROM outbox ORDER BY seq")]
    finally:
        con.close()


def test_a_second_lockerd_on_the_same_state_exits_75_and_disturbs_nothing(
    first: tuple[subprocess.Popen[str], Path, Lines], tmp_path: Path
) -> None:
    proc, cfg, _lines = first
    before = _types(tmp_path / "state" / "locker.db")
    second = subprocess.run(
        [sys.executable, "-m", "locker", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == daemon.EXIT_RUNNING == 75
    err = _problems(second.stderr, cfg)
    assert len(err) == 1, err
    assert "already runs on state directory" in err[0] and str(proc.pid) in err[0]
    assert proc.poll() is None  # the first goes on
    assert before[0] == "started" and "stopping" not in before
    assert _types(tmp_path / "state" / "locker.db") == before  # no event of the second's
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert _types(tmp_path / "state" / "locker.db") == [*before, "stopping"]
    # once the first is gone, the state directory is free again
    assert daemon.lock_state_dir(tmp_path / "state") is not None


def test_log_lines_carry_a_timestamp_outside_journald(
    first: tuple[subprocess.Popen[str], Path, Lines],
) -> None:
    _, _, lines = first
    ready = next(ln for ln in lines.lines if " ready: " in ln)
    assert ready[:4].isdigit() and ready[10] == "T" and ready[19] == "Z", ready


def test_an_unwritable_state_directory_at_start_is_one_line_and_74(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_tmpfs(disk, "size=1m"):
        state = disk / "state"
        Store(state / "locker.db", boot_id="b").close()  # an existing locker ...
        (state / daemon.LOCK_NAME).touch()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=10)
        cfg = _config(tmp_path, state)  # ... whose disk went read-only
        done = subprocess.run(
            [sys.executable, "-m", "locker", "--config", str(cfg), "--store-wait", "0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == daemon.EXIT_STORAGE == 74
    err = _problems(done.stderr, cfg)
    assert len(err) == 1, err
    assert "cannot be written" in err[0] and "read-only" in err[0]
    assert "Traceback" not in done.stderr
