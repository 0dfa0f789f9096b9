"""Issue 11 item 8: a state directory that cannot be written (disk full, read-only).

Real SQLite on a real small filesystem: a tmpfs of a few hundred KiB mounted for the test
(needs root; skipped otherwise), filled up or remounted read-only under the running
controller, then given back."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from locker.cabinet import controller as controller_mod
from locker.cabinet.controller import Controller
from locker.cabinet.store import StorageFault, Store
from locker.fleet.ledger import Stream, state_floor
from locker.ports import (
    DoorChanged,
    DoorState,
    KeyPressed,
    NullUplink,
    OutboxRow,
    RetainedState,
    ServerAck,
)
from tests.conftest import small_tmpfs
from tests.domain import SIZES, T0, Keys, command, rules
from tests.test_controller import CheckingBank


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    with small_tmpfs(mnt, "size=640k"):
        yield mnt


def fill(disk: Path) -> Path:
    """Fill the filesystem to the last byte; returns the filler file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


class Uplink(NullUplink):
    def __init__(self) -> None:
        self.unstored: list[OutboxRow] = []
        self.replies: list[Mapping[str, object]] = []
        self.states: list[Mapping[str, Any]] = []
        self.order: list[tuple[str, int]] = []  # ("state", last_seq) / ("event", seq)

    def publish_unstored(self, row: OutboxRow) -> None:
        self.unstored.append(row)
        self.order.append(("event", row.seq))

    def publish_state(self, snapshot: Mapping[str, Any]) -> None:
        self.states.append(snapshot)
        self.order.append(("state", snapshot["last_seq"]))

    def publish_reply(self, reply: Mapping[str, object], correlation_data: bytes | None) -> None:
        self.replies.append(reply)


class Cabinet:
    def __init__(self, state: Path, *, started: bool = True) -> None:
        self.keys = Keys()
        self.wall, self.mono = T0, 0.0
        self.db = state / "locker.db"
        self.bank = CheckingBank(self.db)
        self.uplink = Uplink()
        self.ctl = Controller(
            rules=rules(self.keys),
            store=Store(self.db, boot_id="boot"),
            compartment_sizes=SIZES,
            banks=[self.bank],
            version="test",
            uplink=self.uplink,
            wall=lambda: self.wall,
            mono=lambda: self.mono,
        )
        if started:
            self.ctl.start()
            self.drain()

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s

    def drain(self) -> None:
        while self.ctl.step_once(0):
            pass

    def put(self, *events: Any) -> None:
        for e in events:
            self.ctl.submit(e)
        self.drain()

    def type_(self, code: str) -> None:
        self.put(*[KeyPressed(k) for k in code + "#"])

    def types(self) -> list[str]:
        return [e["type"] for e in self.ctl.store.outbox()]


def _fault(cab: Cabinet) -> str | None:
    return cab.ctl.storage_fault  # read afresh (no narrowing from an earlier assert)


def _assign(cab: Cabinet) -> tuple[str, str]:
    drop, pick = "12345678", "87654321"
    cab.put(
        command(
            "assign",
            cab.wall,
            parcel="P1",
            kind="delivery",
            size="S",
            dropoff_tag=cab.keys.tag(drop),
            pickup_tag=cab.keys.tag(pick),
        )
    )
    return drop, pick


def test_the_daemon_stays_up_refuses_and_resumes_by_itself(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cab = Cabinet(small_disk)
    drop, _ = _assign(cab)
    filler = fill(small_disk)
    caplog.set_level(logging.INFO, logger=controller_mod.__name__)
    for _ in range(3):
        cab.type_(drop)
    assert cab.bank.unlocked == []  # nothing opens without a commit
    assert cab.ctl.storage_fault is not None
    # said once, with the real error (not "cannot rollback - no transaction is active")
    said = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "no transaction is active" not in caplog.text
    assert "disk full" in said[0].getMessage()
    assert [r.type for r in cab.uplink.unstored] == ["storage_fault"]
    # a command is answered, from memory
    cab.put(command("lockdown", cab.wall, on=True))
    assert cab.uplink.replies[-1]["status"] == "failed"
    assert cab.uplink.replies[-1]["error"]["code"] == "storage_fault"  # type: ignore[index]
    # a door report arriving meanwhile is kept
    cab.put(DoorChanged("C1", DoorState.OPEN))

    filler.unlink()
    cab.advance(controller_mod.STORAGE_PROBE_S)
    cab.drain()
    assert _fault(cab) is None
    types = cab.types()
    assert "hardware_recovered" in types
    assert types[-2:] == ["door_opened", "door_forced"]  # replayed after the outage
    cab.type_(drop)
    assert cab.bank.unlocked == [("A1", True)], [
        (e["type"], e["data"]) for e in cab.ctl.store.outbox()[-3:]
    ]
    # the event published from memory is in the outbox now, under the seq and with the very
    # bytes it went out with (so a re-send is the same event), and nothing took its seq
    unstored = cab.uplink.unstored[0]
    rows = cab.ctl.store.outbox()
    seqs = [e["seq"] for e in rows]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert [e for e in rows if e["seq"] == unstored.seq] == [json.loads(unstored.payload)]
    assert cab.ctl.store.outbox_depth() == len(rows)


def test_a_command_that_ran_before_is_answered_duplicate_during_the_fault(
    small_disk: Path,
) -> None:
    """A re-sent command is answered from what is stored (``duplicate``, with the outcome
    it had), not ``failed``: it did run, and the operator must not be told otherwise. A
    new command still gets ``failed``, and nothing is written for either."""
    cab = Cabinet(small_disk)
    cmd = command("lockdown", cab.wall, on=False)
    cab.put(cmd)
    assert cab.uplink.replies[-1]["status"] == "done"
    done = cab.uplink.replies[-1]
    fill(small_disk)
    cab.type_("00000000")  # the fault is found by a write that fails
    assert _fault(cab) is not None
    depth = cab.ctl.store.outbox_depth()
    cab.put(cmd)
    again = cab.uplink.replies[-1]
    assert again["status"] == "duplicate"
    assert again["cmd_id"] == done["cmd_id"] and again.get("result") == done.get("result")
    cab.put(command("lockdown", cab.wall, on=False))
    new = cab.uplink.replies[-1]
    assert new["status"] == "failed"
    assert cab.ctl.store.outbox_depth() == depth


def test_the_controllers_own_event_is_kept_when_its_commit_fails(small_disk: Path) -> None:
    """An event no input caused (here ``ack_invalid`` for an ack of another epoch; also
    ``epoch_started`` after the restart check) cannot be re-made by replaying an input: when
    its commit fails it is kept, and committed once the database takes writes again."""
    cab = Cabinet(small_disk)
    filler = fill(small_disk)
    cab.put(ServerAck(7, "another-epoch"))
    assert _fault(cab) is not None  # found by the commit of ack_invalid
    assert "ack_invalid" not in cab.types()
    filler.unlink()
    cab.advance(controller_mod.STORAGE_PROBE_S)
    cab.put(KeyPressed("1"))
    assert _fault(cab) is None
    kept = [e for e in cab.ctl.store.outbox() if e["type"] == "ack_invalid"]
    assert len(kept) == 1
    assert kept[0]["data"]["ack_epoch"] == "another-epoch"
    assert kept[0]["data"]["reason"] == "other_epoch"


def test_a_clock_step_during_the_fault_is_kept_and_a_person_finds_the_disk_back(
    small_disk: Path,
) -> None:
    """Found by the 600 s soak: a wall-clock step while the database could not be written
    was taken from the clock and dropped (25 clock_suspect for 26 steps). It is kept and
    reported once storage works. And a disk given back is found by the next person's key
    (a probe at most once a second while inputs wait), not up to STORAGE_PROBE_S later."""
    cab = Cabinet(small_disk)
    drop, _ = _assign(cab)
    filler = fill(small_disk)
    cab.type_(drop)
    assert _fault(cab) is not None
    cab.wall += 44 * 365.25 * 86400  # a bad NTP answer, while nothing can be written
    cab.mono += 1
    cab.put(KeyPressed("1"))
    cab.wall -= 44 * 365.25 * 86400
    assert "clock_suspect" not in cab.types()
    filler.unlink()
    cab.advance(controller_mod.STORAGE_PROBE_ON_INPUT_S)
    assert controller_mod.STORAGE_PROBE_ON_INPUT_S < controller_mod.STORAGE_PROBE_S
    cab.put(KeyPressed("#"))  # ends the stray entry
    cab.type_(drop)
    assert _fault(cab) is None
    assert cab.types().count("clock_suspect") == 1
    assert cab.bank.unlocked == [("A1", True)]


def test_a_full_disk_never_hides_the_error_behind_a_failed_rollback(small_disk: Path) -> None:
    store = Store(small_disk / "locker.db", boot_id="b")
    fill(small_disk)
    with pytest.raises(StorageFault) as caught:
        for i in range(200):  # until the WAL's own room is used up too
            store.set_meta(f"k{i}", "x" * 2000)
    assert "disk full" in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception)
    assert "rollback" not in str(caught.value)
    store.close()


def test_fill_really_fills(small_disk: Path) -> None:
    fill(small_disk)
    with pytest.raises(OSError) as err:
        (small_disk / "more").write_bytes(b"x" * 8192)
    assert err.value.errno == errno.ENOSPC


def test_the_floor_a_server_derives_never_passes_an_unacknowledged_event(small_disk: Path) -> None:
    """The mechanism behind the soak's lost seqs (issue 11): a server takes every seq up to
    ``last_seq - outbox_depth`` of the retained state as gone from the locker
    (locker.fleet.ledger). storage_fault takes a seq the database cannot hold; counted in
    last_seq but not in outbox_depth, it lifted that floor onto the oldest unacknowledged
    event, which the server then never waited for. Both figures count it now, in every state
    published, and the state naming it goes out before the event."""
    cab = Cabinet(small_disk)
    drop, _ = _assign(cab)
    unacked = [e["seq"] for e in cab.ctl.store.outbox()]
    assert unacked and unacked[0] == 1  # the server holds nothing yet
    cab.uplink.states.clear()
    cab.uplink.order.clear()
    filler = fill(small_disk)
    cab.type_(drop)
    assert [r.type for r in cab.uplink.unstored] == ["storage_fault"]
    seq = cab.uplink.unstored[0].seq
    assert seq == unacked[-1] + 1
    # the retained state naming the seq is handed over before the event itself
    assert cab.uplink.order.index(("state", seq)) < cab.uplink.order.index(("event", seq))
    # an ack covering the event is valid (the server may hold it): nothing reported
    cab.put(ServerAck(0, cab.ctl.store.epoch))
    filler.unlink()
    cab.advance(controller_mod.STORAGE_PROBE_S)
    cab.put(KeyPressed("#"))
    assert _fault(cab) is None
    assert cab.uplink.states
    for state in cab.uplink.states:
        assert state_floor(state) == 0, state  # every seq from 1 is still on the locker
    server = Stream("L", str(cab.ctl.store.epoch))
    assert server.raise_floor(state_floor(cab.uplink.states[0]) or 0) == 0  # nothing skipped
    assert "ack_invalid" not in cab.types()


def test_an_ack_of_the_event_from_memory_deletes_it_once_stored(small_disk: Path) -> None:
    cab = Cabinet(small_disk)
    drop, _ = _assign(cab)
    filler = fill(small_disk)
    cab.type_(drop)
    seq = cab.uplink.unstored[0].seq
    epoch = cab.ctl.store.epoch
    depth = cab.ctl.store.outbox_depth()
    filler.unlink()
    cab.advance(controller_mod.STORAGE_PROBE_S)
    cab.put(ServerAck(seq, epoch))  # the server held it all, the event from memory included
    assert _fault(cab) is None
    assert [e["seq"] for e in cab.ctl.store.outbox() if e["seq"] <= seq] == []
    assert cab.ctl.store.outbox_depth() == len(cab.ctl.store.outbox()) < depth + 2
    assert "ack_invalid" not in cab.types() and cab.ctl.store.epoch == epoch


def test_a_locker_killed_during_a_storage_fault_never_reuses_the_seq(small_disk: Path) -> None:
    """The soak's "storage_fault then started" conflict: lockerd SIGKILLed while the disk is
    full held the storage_fault's seq only in memory and in what it published; after the
    restart its ``started`` took the same seq. Now the published state counts it, the
    comparison is made on the store as opened (not after ``started``), and the link sends no
    event before it: a new epoch, with ``started`` renumbered into it."""
    cab = Cabinet(small_disk)
    drop, _ = _assign(cab)
    filler = fill(small_disk)
    cab.type_(drop)
    fault = cab.uplink.unstored[0]
    sent = json.loads(fault.payload)
    published = cab.uplink.states[-1]
    assert (published["epoch"], published["last_seq"]) == (sent["epoch"], sent["seq"])
    cab.ctl.store.close()  # killed: no shutdown, nothing more written
    filler.unlink()

    again = Cabinet(small_disk, started=False)
    checked: list[str] = []
    again.uplink.stream_checked = lambda: checked.append("checked")  # type: ignore[method-assign]
    again.ctl.start()
    again.drain()
    store = again.ctl.store
    assert store.opened_last_seq == sent["seq"] - 1
    assert [e["seq"] for e in store.outbox() if e["type"] == "started"][-1] == sent["seq"]
    assert checked == []  # nothing of it may be sent yet
    again.put(RetainedState(published["epoch"], published["last_seq"]))
    assert checked == ["checked"]
    assert store.epoch != sent["epoch"]
    rows = store.outbox()
    assert {e["epoch"] for e in rows} == {store.epoch}
    assert [e["seq"] for e in rows] == list(range(1, len(rows) + 1))
    assert "started" in [e["type"] for e in rows]
    reason = [e["data"] for e in rows if e["type"] == "epoch_started"]
    assert reason[0]["reason"] == "rolled_back"
    assert reason[0]["previous_last_seq"] == sent["seq"]


def test_a_clean_stop_after_the_disk_came_back_stores_the_event_from_memory(
    small_disk: Path,
) -> None:
    """A stop (SIGTERM) between the disk coming back and the next probe still stores the
    event sent from memory and commits ``stopping``: no new epoch is needed at the next start."""
    cab = Cabinet(small_disk)
    drop, _ = _assign(cab)
    filler = fill(small_disk)
    cab.type_(drop)
    seq = cab.uplink.unstored[0].seq
    filler.unlink()  # back, but the next probe is seconds away
    cab.ctl.shutdown()
    assert _fault(cab) is None
    stored = Store(small_disk / "locker.db", boot_id="after")
    types = {e["seq"]: e["type"] for e in stored.outbox()}
    assert types[seq] == "storage_fault" and types[max(types)] == "stopping"
    assert stored.opened_last_seq == max(types)
    stored.close()


def test_writes_failing_during_the_fault_do_not_put_off_the_probe(small_disk: Path) -> None:
    """Acks keep coming while the disk is full (the server acks the event from memory, and
    again on every duplicate); each fails to write. They must not push the next probe back
    by another 5 s each, or a steady trickle of acks would keep the locker out of service."""
    cab = Cabinet(small_disk)
    drop, _ = _assign(cab)
    filler = fill(small_disk)
    cab.type_(drop)
    seq = cab.uplink.unstored[0].seq
    for _ in range(4):
        cab.advance(controller_mod.STORAGE_PROBE_S / 5)
        cab.put(ServerAck(seq, cab.ctl.store.epoch))  # cannot be written either
    assert _fault(cab) is not None
    filler.unlink()
    cab.advance(controller_mod.STORAGE_PROBE_S / 5)  # 5 s after the fault: the probe is due
    cab.drain()
    assert _fault(cab) is None
