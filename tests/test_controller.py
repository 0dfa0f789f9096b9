"""The controller with a real SQLite store: commit before acting, restart, outbox, clock."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from locker.cabinet.controller import Controller, DomainClock, Verifier
from locker.cabinet.domain.model import Out
from locker.cabinet.store import Store
from locker.ports import (
    DoorChanged,
    DoorState,
    EventSink,
    HardwareUnavailable,
    KeyPressed,
    LockBank,
    ServerAck,
    UnlockResult,
)
from tests.domain import SIZES, T0, Keys, command, rules


class CheckingBank(LockBank):
    """A lock bank that, at the moment it is asked to pulse, reads the database through its
    own connection and records whether the unlock was already committed."""

    name = "checking"

    def __init__(self, db: Path) -> None:
        self.db = db
        self.door: dict[str, DoorState] = {c: DoorState.CLOSED for c in SIZES}
        self.unlocked: list[tuple[str, bool]] = []
        self.sink: EventSink | None = None
        self.down = False
        self.closed = False

    @property
    def compartments(self) -> tuple[str, ...]:
        return tuple(SIZES)

    def start(self, sink: EventSink) -> None:
        self.sink = sink
        for cid, state in self.door.items():
            sink(DoorChanged(cid, state))

    def unlock(self, compartment: str) -> None:
        if self.down:
            raise HardwareUnavailable("board silent")
        con = sqlite3.connect(self.db)
        row = con.execute("SELECT row FROM compartments WHERE id=?", (compartment,)).fetchone()
        con.close()
        committed = row is not None and (
            json.loads(row[0])["pending"] is not None or json.loads(row[0])["session"] is not None
        )
        self.unlocked.append((compartment, committed))
        assert self.sink is not None
        self.sink(UnlockResult(compartment, sent=True))

    def doors(self) -> Mapping[str, DoorState]:
        return dict(self.door)

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 0.0

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


class Rig:
    def __init__(self, tmp: Path, keys: Keys | None = None, verify: Verifier | None = None) -> None:
        self.tmp = tmp
        self.keys = keys or Keys()
        self.verify = verify
        self.clock = Clock()
        self.db = tmp / "locker.db"
        self.bank = CheckingBank(self.db)
        self.ctl = self._controller()

    def _controller(self) -> Controller:
        ctl = Controller(
            rules=rules(self.keys),
            store=Store(self.db, boot_id="boot"),
            compartment_sizes=SIZES,
            banks=[self.bank],
            version="test",
            wall=lambda: self.clock.wall,
            mono=lambda: self.clock.mono,
            verify=self.verify,
        )
        ctl.start()
        self.drain()
        return ctl

    def drain(self) -> None:
        ctl = getattr(self, "ctl", None)
        while ctl is not None and ctl.step_once(0):
            pass

    def restart(self) -> None:
        self.ctl.store.close()
        self.ctl = self._controller()

    def put(self, *events: Any) -> None:
        for e in events:
            self.ctl.submit(e)
        self.drain()

    def types(self) -> list[str]:
        return [e["type"] for e in self.ctl.store.outbox()]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path)
    r.drain()
    return r


def _assign(rig: Rig, parcel: str = "P1") -> tuple[str, str]:
    drop, pick = "12345678", "87654321"
    rig.put(
        command(
            "assign",
            rig.clock.wall,
            parcel=parcel,
            kind="delivery",
            size="S",
            dropoff_tag=rig.keys.tag(drop),
            pickup_tag=rig.keys.tag(pick),
        )
    )
    return drop, pick


def test_every_unlock_is_committed_before_the_pulse(rig: Rig) -> None:
    drop, pick = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    rig.put(DoorChanged("A1", DoorState.OPEN), DoorChanged("A1", DoorState.CLOSED))
    rig.put(*[KeyPressed(k) for k in pick + "#"])
    assert rig.bank.unlocked == [("A1", True), ("A1", True)]


def test_outbox_seq_is_contiguous_and_survives_acks_and_restarts(rig: Rig) -> None:
    drop, _ = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    seqs = [e["seq"] for e in rig.ctl.store.outbox()]
    assert seqs == list(range(1, len(seqs) + 1))
    rig.put(ServerAck(seqs[-1]))
    assert rig.ctl.store.outbox() == []
    rig.restart()
    after = [e["seq"] for e in rig.ctl.store.outbox()]
    assert after[0] == seqs[-1] + 1  # never reused after deletion
    assert rig.types()[0] == "started"


def test_restart_never_pulses_and_reports_unknown_outcome(rig: Rig) -> None:
    drop, _ = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    pulses = len(rig.bank.unlocked)
    rig.restart()
    assert len(rig.bank.unlocked) == pulses
    assert "unlock_outcome_unknown" in rig.types()


def test_unlock_refused_by_hardware_rearms_the_code(rig: Rig) -> None:
    drop, _ = _assign(rig)
    rig.bank.down = True
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    assert rig.types()[-1] == "hardware_fault"
    rig.bank.down = False
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    assert rig.bank.unlocked == [("A1", True)]


def test_a_key_press_alone_writes_nothing(rig: Rig) -> None:
    before = rig.db.stat().st_mtime_ns, (rig.tmp / "locker.db-wal").stat().st_size
    rig.put(KeyPressed("1"), KeyPressed("2"))
    after = rig.db.stat().st_mtime_ns, (rig.tmp / "locker.db-wal").stat().st_size
    assert before == after


def test_timers_fire_from_the_derived_deadline(rig: Rig) -> None:
    drop, _ = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    assert rig.ctl.step_once(0) is False
    rig.clock.advance(10.5)
    assert rig.ctl.step_once(0) is True
    assert "door_jammed" in rig.types()


def test_state_survives_restart(rig: Rig) -> None:
    drop, pick = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    rig.put(DoorChanged("A1", DoorState.OPEN), DoorChanged("A1", DoorState.CLOSED))
    rig.restart()
    rig.put(*[KeyPressed(k) for k in pick + "#"])
    assert rig.bank.unlocked[-1] == ("A1", True)
    assert rig.types()[-1] == "access_granted"


def test_throttle_survives_restart(rig: Rig) -> None:
    for _ in range(5):
        rig.put(*[KeyPressed(k) for k in "99990000#"])
    rig.restart()
    assert rig.ctl.state.throttle.consecutive == 5
    assert rig.ctl.state.throttle.blocked_until > rig.clock.wall


def test_replayed_command_after_restart_is_a_duplicate(rig: Rig) -> None:
    cmd = command("open", rig.clock.wall, compartment="D1", reason="audit")
    rig.put(cmd)
    rig.restart()
    replies: list[Any] = []

    def publish_reply(reply: Mapping[str, object], correlation_data: bytes | None) -> None:
        replies.append(reply)

    rig.ctl.uplink.publish_reply = publish_reply  # type: ignore[method-assign]
    rig.put(cmd)
    assert replies[-1]["status"] == "duplicate"
    assert [u for u, _ in rig.bank.unlocked] == ["D1"]


def test_domain_clock_never_runs_back() -> None:
    wall = [T0]
    mono = [0.0]
    clock = DomainClock(0.0, lambda: wall[0], lambda: mono[0])
    assert clock.now() == T0
    wall[0] = T0 - 500  # the wall clock is set back
    mono[0] = 5.0
    assert clock.now() == T0 + 5
    clock2 = DomainClock(T0 + 2000, lambda: wall[0], lambda: mono[0])  # stored mark is ahead
    assert clock2.now() >= T0 + 2000


def test_expiry_is_judged_against_the_high_water_mark(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    drop, _ = _assign(rig)
    rig.clock.advance(49 * 3600)
    rig.drain()
    rig.ctl.step_once(0)
    rig.restart()
    rig.clock.wall = T0  # clock set back two days after a reboot
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    assert rig.bank.unlocked == []


def test_shutdown_commits_stopping_and_closes_hardware(rig: Rig) -> None:
    rig.ctl.shutdown()
    assert rig.types()[-1] == "stopping"
    assert rig.bank.closed


def test_snapshot_matches_the_contract_shape(rig: Rig) -> None:
    _assign(rig)
    snap = rig.ctl.snapshot()
    assert set(snap) == {
        "v",
        "epoch",
        "rev",
        "ts",
        "lockdown",
        "keypad_locked",
        "outbox_depth",
        "last_seq",
        "compartments",
    }
    a1 = snap["compartments"][0]
    assert a1 == {
        "id": "A1",
        "size": "S",
        "state": "reserved",
        "door": "closed",
        "in_service": True,
        "parcel": "P1",
    }


def test_rev_is_strictly_increasing(rig: Rig) -> None:
    seen: list[int] = []

    def publish_state(snapshot: Mapping[str, object]) -> None:
        rev = snapshot["rev"]
        assert isinstance(rev, int)
        seen.append(rev)

    rig.ctl.uplink.publish_state = publish_state  # type: ignore[method-assign]
    _assign(rig)
    rig.clock.advance(2)  # a counters-only change waits up to STATE_COUNTERS_EVERY_S
    _assign(rig, "P2")
    rig.restart()
    rig.ctl.uplink.publish_state = publish_state  # type: ignore[method-assign]
    rig.clock.advance(2)
    _assign(rig, "P3")
    assert seen == sorted(set(seen)) and len(seen) >= 3


def test_queued_acks_are_applied_once_and_other_events_keep_their_order(rig: Rig) -> None:
    drop, _ = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    last = rig.ctl.store.last_seq()
    freed: list[int] = []
    acknowledge = rig.ctl.store.acknowledge

    def counting_acknowledge(upto_seq: int) -> int:
        freed.append(upto_seq)
        return acknowledge(upto_seq)

    rig.ctl.store.acknowledge = counting_acknowledge  # type: ignore[method-assign]
    rig.ctl.submit(ServerAck(1))
    rig.ctl.submit(ServerAck(2))
    rig.ctl.submit(DoorChanged("A1", DoorState.OPEN))
    rig.ctl.submit(ServerAck(last))
    rig.drain()
    assert freed == [2, last]
    assert rig.ctl.state.compartments["A1"].door is DoorState.OPEN
    assert [e["type"] for e in rig.ctl.store.outbox()] == ["door_opened"]


def test_outbox_counters_match_the_database_across_acks_and_restarts(rig: Rig) -> None:
    def on_disk() -> tuple[int, int]:
        con = sqlite3.connect(rig.db)
        depth = con.execute("SELECT count(*) FROM outbox").fetchone()[0]
        con.close()
        return depth, rig.ctl.store.last_seq()

    drop, _ = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    assert on_disk() == (rig.ctl.store.outbox_depth(), len(rig.ctl.store.outbox()))
    rig.put(ServerAck(2))
    depth, last = on_disk()
    assert (depth, last) == (rig.ctl.store.outbox_depth(), rig.ctl.store.outbox()[-1]["seq"])
    rig.put(ServerAck(last))
    assert rig.ctl.store.outbox_depth() == 0
    rig.restart()
    after = rig.ctl.store.outbox()
    assert after[0]["type"] == "started" and after[0]["seq"] == last + 1
    assert rig.ctl.store.outbox_depth() == on_disk()[0] == len(after)
    assert rig.ctl.store.last_seq() == after[-1]["seq"]


def test_an_ack_is_not_fsynced_alone_and_every_commit_after_it_is(rig: Rig) -> None:
    """Issue 10: forgetting acked events skips its own fsync (a lost delete only re-sends
    what the server holds); the connection is back to synchronous=FULL for every commit."""
    drop, _ = _assign(rig)
    rig.put(*[KeyPressed(k) for k in drop + "#"])
    con = rig.ctl.store._con
    modes: list[int] = []
    con.set_trace_callback(
        lambda sql: (
            modes.append(con.execute("PRAGMA synchronous").fetchone()[0])
            if sql.startswith("DELETE FROM outbox")
            else None
        )
    )
    acked = rig.ctl.store.last_seq()
    try:
        rig.put(ServerAck(acked))
    finally:
        con.set_trace_callback(None)
    assert rig.ctl.store.outbox() == []
    assert modes == [1]  # NORMAL while deleting
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    rig.restart()
    assert all(e["seq"] > acked for e in rig.ctl.store.outbox())  # the delete stuck


def test_an_ack_that_stores_events_from_memory_is_fsynced(rig: Rig) -> None:
    """The write after a storage fault stores the events published from memory first: an
    ack that is that write is committed durably, never with synchronous=NORMAL."""
    store = rig.ctl.store
    row = store.unstored_event(Out("storage_fault", data={"detail": "test"}), 0.0, True)
    con = store._con
    modes: list[int] = []
    con.set_trace_callback(
        lambda sql: (
            modes.append(con.execute("PRAGMA synchronous").fetchone()[0])
            if sql.startswith("DELETE FROM outbox")
            else None
        )
    )
    try:
        store.acknowledge(row.seq - 1)
    finally:
        con.set_trace_callback(None)
    assert modes == [2] and store.unstored_count() == 0
    assert [e["seq"] for e in store.outbox()] == [row.seq]
