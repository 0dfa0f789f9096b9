"""``make soak``'s short mode (issue 10): one minute of faults under traffic, then every
invariant of ``locker.sim.soak_checks`` must hold and every fault kind must have happened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from locker.sim import clockstep, soak

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SECONDS = 45  # with set-up and drain, under ~90 s in all


@pytest.mark.timeout(180)
def test_short_soak_holds_every_invariant(tmp_path: Path) -> None:
    report = soak.run(tmp_path, SECONDS, seed=20261129, say=lambda _line: None)
    summary = report.render()
    assert all(c.ok for c in report.checks), summary
    kinds = {"broker SIGKILL + restart", "link cut", "link blackholed", "lockerd SIGKILL + restart"}
    if os.geteuid() == 0 and "disk full" not in report.skipped:
        kinds.add("disk full")
    if clockstep.find_library() is not None:  # Debian package faketime (make system-deps)
        kinds |= set(soak.CLOCK_STEPS)
    assert kinds <= set(report.faults), summary
    assert report.traffic["parcels issued"] >= 2, summary
    assert report.events["access_denied"] >= 1, summary
