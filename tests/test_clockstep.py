"""``locker.sim.clockstep``: the soak's wall-clock steps are real (libfaketime in a child
process), leave the monotonic clock alone, and the child's sleeps and waits still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from locker.sim import clockstep
from tests.conftest import wait_for

LIBRARY = clockstep.find_library()
pytestmark = pytest.mark.skipif(LIBRARY is None, reason="libfaketime not installed (faketime)")

YEAR_S = 365 * 86400  # libfaketime's "y"

# What the child reports: its wall and monotonic clocks, around a sleep and a timed wait
# (Python 3.11's time.sleep fails under libfaketime 0.9.10 without the shim: issue 426).
CHILD = """
import json, threading, time
from locker.sim import clockstep
from tests.conftest import wait_for
time.sleep = clockstep._sleep
m0 = time.monotonic()
time.sleep(0.05)
threading.Event().wait(0.05)
print(json.dumps({"wall": time.time(), "slept": time.monotonic() - m0,
                  "mono": time.monotonic()}))
"""


def _child(stepper: clockstep.ClockStepper) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**os.environ, **stepper.env()},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, float] = json.loads(done.stdout)
    return out


@pytest.mark.parametrize(
    ("offset", "shift_s"), [("+0", 0.0), ("+44y", 44 * YEAR_S), ("-2h", -7200.0)]
)
def test_a_step_moves_the_childs_wall_clock_only(
    tmp_path: Path, offset: str, shift_s: float
) -> None:
    assert LIBRARY is not None
    stepper = clockstep.ClockStepper(tmp_path / "faketime.rc", LIBRARY)
    stepper.step(offset)
    before = time.time()
    got = _child(stepper)
    after = time.time()
    assert before + shift_s - 1 <= got["wall"] <= after + shift_s + 1
    # CLOCK_MONOTONIC is system-wide: the child's reading falls between ours
    assert got["mono"] <= time.monotonic()
    assert 0.1 <= got["slept"] < 5.0


def test_undo_restores_the_real_time_and_the_file_is_never_empty(tmp_path: Path) -> None:
    assert LIBRARY is not None
    stepper = clockstep.ClockStepper(tmp_path / "faketime.rc", LIBRARY)
    stepper.step("+44y")
    stepper.undo()
    assert stepper.path.read_text() == "+0\n"
    assert abs(_child(stepper)["wall"] - time.time()) < 5


def test_forget_removes_what_a_killed_child_left_in_dev_shm(tmp_path: Path) -> None:
    assert LIBRARY is not None
    stepper = clockstep.ClockStepper(tmp_path / "faketime.rc", LIBRARY)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.time(); sys.stdin.read()"],
        env={**os.environ, **stepper.env()},
        stdin=subprocess.PIPE,
    )
    left = [clockstep.SHM_DIR / f"faketime_shm_{child.pid}"]
    left.append(clockstep.SHM_DIR / f"sem.faketime_sem_{child.pid}")
    try:
        wait_for(lambda: all(p.exists() for p in left), 10, what="libfaketime's shared memory")
    finally:
        child.kill()  # no exit handler runs: the files stay
        child.wait(10)
    assert all(p.exists() for p in left)
    stepper.forget(child.pid)
    assert not any(p.exists() for p in left)
