"""What the fleet service's ingest tests build on: messages as lockers publish them (DESIGN
5), a migrated SQLite database (``engine``), a clock the test moves (``Clock``) and the gap
rule at its defaults (``RULE``). Shared by test_fleet_ingest, test_fleet_stream_rules and
test_fleet_ledger_rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from locker.fleet import ledger
from locker.fleet.service import db
from locker.fleet.service.ingest import Message

P = "lockers"
RULE = ledger.GapRule(wait_s=2.0, interval_s=60.0)


def evt(
    locker: str, seq: int, type_: str = "door_opened", epoch: str | None = "e1", **kw: Any
) -> Message:
    body: dict[str, Any] = {"v": 1, "seq": seq, "type": type_, "ts": "2026-11-29T10:00:00Z"}
    if epoch is not None:
        body["epoch"] = epoch
    body |= kw
    return Message(f"{P}/{locker}/evt/{type_}", json.dumps(body).encode())


def state(locker: str, last_seq: int, depth: int, epoch: str = "e1", rev: int = 1) -> Message:
    doc = {"v": 1, "rev": rev, "epoch": epoch, "last_seq": last_seq, "outbox_depth": depth}
    doc["compartments"] = [{"id": "A1", "size": "S", "state": "free", "door": "closed"}]
    return Message(f"{P}/{locker}/state", json.dumps(doc).encode(), retain=True)


def online(locker: str, up: bool = True) -> Message:
    """The locker's retained status (its birth, or its will with ``up`` False)."""
    doc = {"v": 1, "online": up, "boot_id": "b1", "version": "1"}
    return Message(f"{P}/{locker}/status", json.dumps(doc).encode(), retain=True)


class Clock:
    """Unix seconds the test sets (``now``) and moves."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    db.upgrade(url)
    return db.make_engine(url)
