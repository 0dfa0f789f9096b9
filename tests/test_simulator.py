"""``make simulate`` is the first thing a newcomer runs: its whole story must keep working."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from locker.fleet import tls_cause
from locker.fleet.layout import Fleet

STORY = [
    "parcel_deposited",
    "parcel_collected",
    "door_jammed",
    "compartment_out_of_service",
    "door_forced",
    "keypad_throttled",
    "keypad_unlocked",
    "stopping",
]


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_the_simulator_tells_its_whole_story(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locker.sim",
            "--pause",
            "0",
            "--workdir",
            str(tmp_path / "sim"),
            "--console",
            "127.0.0.1:0",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for event in STORY:
        assert event in out, f"{event} missing from the story:\n{out[-3000:]}"
    assert "every event held while offline arrived" in out
    assert "no locker> prompt" in out  # stdin is not a terminal: said, not silent
    assert re.search(r"front panel: \S*http://127\.0\.0\.1:\d+/", out), "the panel address"
    log = (tmp_path / "sim" / "cabinet" / "lockerd.log").read_text()
    assert "Traceback" not in log
    codes = re.findall(r"(?:courier|customer) code \S*?(\d{8})", out)
    assert codes, "the story shows the codes it types"
    leaked = [c for c in codes if c in log]
    assert not leaked, "a keypad code reached lockerd's log"
    # the fleet service ran beside it: console address and login printed, every event stored once
    assert re.search(r"console \S*http://127\.0\.0\.1:\d+/", out), out[-3000:]
    assert re.search(r"login \S*operator\S* password \S{12,}", out), out[-3000:]
    with sqlite3.connect(tmp_path / "sim" / "fleet" / "fleet.db") as db:
        (n, distinct, first, last, types) = db.execute(
            "select count(*), count(distinct seq), min(seq), max(seq), group_concat(type) "
            "from events"
        ).fetchone()
    # every event, the outage's included (found by a newcomer: the simulator's own server
    # acked them first, the locker freed them, and the console never got seqs 34-37)
    assert n == distinct and n > 0
    assert (first, n) == (1, last), f"the fleet service holds {n} of seqs {first}..{last}"
    for event in STORY:
        assert event in types, f"{event} not stored by the fleet service"
    # lockerctl works with the simulator's fleet directory (found by a newcomer: its
    # lockerctl.pem came from another CA than the broker's, and no locker.toml was there)
    fleet = tmp_path / "sim" / "fleet"
    pems = [p for p in (fleet / "clients").glob("*.pem") if not p.name.endswith("-key.pem")]
    assert {p.stem for p in pems} >= {"backend", "lockerctl", "fleet"}
    for pem in pems:
        assert tls_cause.check_identity(fleet / "ca.pem", pem) == [], pem
    assert Fleet.load(fleet).code_length("SIM-0001").known
