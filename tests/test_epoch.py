"""The event stream's epoch on the locker (DESIGN 5; issue 11 items 7, 20 and 21), with the
real controller and SQLite store and a fake clock.

- every event and the state carry the database's epoch, kept across restarts;
- an ack of another epoch, or above last_seq, deletes nothing and is reported once per
  burst (``ack_invalid``); an ack without epoch is honoured when not above last_seq;
- a store found behind what the locker itself published (its retained state) starts a new
  epoch, renumbers its unacknowledged events into it, says so (``epoch_started``), and runs
  no command issued before the new epoch began.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from locker.contract.actions import Command
from locker.ports import (
    CommandMessage,
    KeyPressed,
    RetainedState,
    ServerAck,
)
from tests.domain import command
from tests.test_controller import Rig


class EpochRig(Rig):
    """The controller rig with a command verifier that returns ``next_command`` (signatures
    are tested elsewhere; here what matters is what the controller does with a verified one),
    and whose restarts keep the database as it is on disk."""

    def __init__(self, tmp: Path) -> None:
        self.next_command: Command | None = None
        super().__init__(tmp, verify=self._verify)
        self.db = tmp / "locker.db"

    def _verify(self, msg: CommandMessage, now: float) -> Command:
        assert self.next_command is not None
        return self.next_command

    def reopen(self) -> None:
        """A new controller on whatever the database files now are."""
        self.ctl = self._controller()
        self.drain()

    def outbox(self) -> list[dict[str, Any]]:
        return self.ctl.store.outbox()

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.outbox() if e["type"] == event_type]

    def send(self, cmd: Command) -> None:
        self.next_command = cmd
        self.put(CommandMessage(payload=b"signed", correlation_data=b"c"))


@pytest.fixture
def rig(tmp_path: Path) -> EpochRig:
    return EpochRig(tmp_path)


def assign_cmd(rig: EpochRig, parcel: str, iat: float) -> Command:
    arrived = command(
        "assign",
        iat,
        parcel=parcel,
        kind="delivery",
        size="S",
        dropoff_tag=rig.keys.tag("12345678"),
        pickup_tag=rig.keys.tag("87654321"),
    )
    assert arrived.command is not None
    return arrived.command


def open_cmd(iat: float) -> Command:
    arrived = command("open", iat, compartment="A1", reason="test")
    assert arrived.command is not None
    return arrived.command


def roll_back(rig: EpochRig, entries: int) -> dict[str, Any]:
    """A copy of the database taken now, ``entries`` keypad entries after it, then the copy
    back (WAL lost after a crash) while the broker holds the later state: returns that
    state. The rig is left closed (``reopen`` it)."""
    rig.ctl.store.close()
    backup = rig.tmp / "backup"
    backup.mkdir()
    for f in rig.tmp.glob("locker.db*"):
        shutil.copy(f, backup / f.name)
    rig.reopen()
    for n in range(entries):
        rig.put(KeyPressed(str(n)), KeyPressed("#"))
    published = rig.ctl.snapshot()
    rig.ctl.store.close()
    for f in rig.tmp.glob("locker.db*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy(f, rig.tmp / f.name)
    return published


def test_events_and_state_carry_the_epoch_of_the_database(rig: EpochRig) -> None:
    epoch = rig.ctl.store.epoch
    assert len(epoch) == 36
    rig.put(KeyPressed("1"), KeyPressed("#"))
    assert {e["epoch"] for e in rig.outbox()} == {epoch}
    assert rig.ctl.snapshot()["epoch"] == epoch
    rig.restart()
    assert rig.ctl.store.epoch == epoch
    assert {e["epoch"] for e in rig.outbox()} == {epoch}


def test_acks_of_another_epoch_or_above_last_seq_delete_nothing_and_are_reported(
    rig: EpochRig,
) -> None:
    store = rig.ctl.store
    last = store.last_seq()
    depth = store.outbox_depth()
    assert depth == last >= 1
    epoch = store.epoch
    rig.put(ServerAck(last + 9))  # above last_seq, a server from before epochs
    rig.put(ServerAck(1, "4b1e0c6a-0000-4000-8000-000000000000"))  # another epoch
    rig.put(ServerAck(last + 7))
    reports = rig.of("ack_invalid")
    assert len(reports) == 1  # one per burst, with the count of the others
    assert reports[0]["data"] == {
        "reason": "above_last_seq",
        "upto_seq": last + 9,
        "ack_epoch": None,
        "last_seq": last,
        "count": 1,
    }
    assert store.epoch == epoch  # no epoch named: no evidence about this stream
    assert [e["seq"] for e in rig.outbox()][:depth] == list(range(1, depth + 1))
    rig.clock.advance(61)
    rig.put(ServerAck(2, "4b1e0c6a-0000-4000-8000-000000000000"))
    again = rig.of("ack_invalid")[-1]["data"]
    assert (again["reason"], again["count"]) == ("other_epoch", 3)
    assert rig.outbox()[0]["seq"] == 1  # still nothing deleted
    rig.put(ServerAck(2))  # no epoch, not above last_seq: honoured
    assert rig.outbox()[0]["seq"] == 3
    rig.put(ServerAck(store.last_seq(), store.epoch))
    assert rig.outbox() == []


def test_an_ack_of_our_epoch_above_last_seq_is_a_rollback_and_starts_a_new_epoch(
    rig: EpochRig,
) -> None:
    """Issue 11, item 21's weakness: the retained state's counters go out at most once a
    second, so a power loss can take the last commits without the published state showing
    it. The server then holds seqs of this epoch the store never had: its ack above
    last_seq deletes nothing, is reported, and starts a new epoch (the next events would
    reuse its seqs); older commands are refused from then on."""
    store = rig.ctl.store
    epoch, last = store.epoch, store.last_seq()
    kept = [(e["type"], e["event_id"]) for e in rig.outbox()]
    rig.put(ServerAck(1, epoch), ServerAck(last + 2, epoch), ServerAck(last + 3, epoch))
    assert store.epoch != epoch
    assert rig.of("ack_invalid")[0]["data"]["reason"] == "above_last_seq"
    started = rig.of("epoch_started")
    assert len(started) == 1 and started[0]["data"] == {
        "reason": "rolled_back",
        "previous_epoch": epoch,
        "previous_last_seq": last + 2,
        "evidence": "server_ack",
        "abandoned_epoch": epoch,
        "abandoned_last_seq": last + 1,  # its ack_invalid report included
    }
    # The valid ack before it still freed seq 1; nothing else is lost: every other event
    # is renumbered into the new epoch, in order, then the reports.
    events = rig.outbox()
    assert [(e["type"], e["event_id"]) for e in events[: len(kept) - 1]] == kept[1:]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["epoch"] for e in events} == {store.epoch}
    rig.send(open_cmd(rig.clock.wall - 10))
    assert rig.bank.unlocked == []
    # Later acks of the abandoned epoch are only reported.
    rig.put(ServerAck(last + 5, epoch))
    assert len(rig.of("epoch_started")) == 1


def test_a_lost_state_directory_starts_a_new_epoch_and_old_acks_delete_nothing(
    rig: EpochRig,
) -> None:
    # Issue 11 item 7: the server holds seqs up to 16 of the old store.
    for n in range(8):  # one lockdown_changed event each
        rig.put(command("lockdown", rig.clock.wall, on=n % 2 == 0))
    old_epoch, old_last = rig.ctl.store.epoch, rig.ctl.store.last_seq()
    rig.ctl.store.close()
    for f in rig.tmp.glob("locker.db*"):
        f.unlink()
    rig.reopen()
    store = rig.ctl.store
    assert store.epoch != old_epoch and store.last_seq() < old_last
    kept = rig.outbox()
    rig.put(ServerAck(old_last, old_epoch))
    rig.put(ServerAck(old_last))  # an old server's ack, no epoch
    assert rig.outbox()[: len(kept)] == kept
    assert rig.of("ack_invalid")[0]["data"]["reason"] == "other_epoch"


def test_a_rolled_back_store_starts_a_new_epoch_and_keeps_every_event(rig: EpochRig) -> None:
    # Issue 11 item 21: a copy of the database taken at seq N, more events after it, then
    # the copy comes back (WAL lost after a crash) while the broker holds the later state.
    rig.put(KeyPressed("1"), KeyPressed("#"))
    published = roll_back(rig, 5)
    rig.clock.advance(30)
    rig.reopen()
    store = rig.ctl.store
    old_epoch, behind = store.epoch, store.last_seq()
    assert old_epoch == published["epoch"] and behind < published["last_seq"]
    unacked = [(e["type"], e["event_id"]) for e in rig.outbox()]
    rig.put(RetainedState(published["epoch"], published["last_seq"]))
    assert store.epoch != old_epoch
    events = rig.outbox()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["epoch"] for e in events} == {store.epoch}
    assert [(e["type"], e["event_id"]) for e in events[: len(unacked)]] == unacked
    started = rig.of("epoch_started")
    assert started[-1]["data"] == {
        "reason": "rolled_back",
        "previous_epoch": old_epoch,
        "previous_last_seq": published["last_seq"],
        "abandoned_epoch": old_epoch,
        "abandoned_last_seq": behind,
    }
    assert rig.ctl.snapshot()["epoch"] == store.epoch
    # A crash before the new state went out: the broker still holds the old epoch's state,
    # which is this store's own past, not another store's.
    new_epoch = store.epoch
    rig.put(RetainedState(published["epoch"], published["last_seq"]))
    assert store.epoch == new_epoch and len(rig.of("epoch_started")) == 1
    # A command signed before the new epoch began (a replay of one that may have run) is
    # refused; one signed after runs.
    rig.send(open_cmd(rig.clock.wall - 10))
    assert rig.bank.unlocked == []
    rig.send(open_cmd(rig.clock.wall + 1))
    assert [c for c, _ in rig.bank.unlocked] == ["A1"]
    rig.send(assign_cmd(rig, "P-new", rig.clock.wall + 1))
    assert rig.of("parcel_reserved")
    # Restarting on the new epoch keeps it.
    rig.restart()
    assert rig.ctl.store.epoch == store.epoch


def test_a_rollback_is_seen_even_when_as_many_events_were_committed_before_the_check(
    rig: EpochRig,
) -> None:
    """The comparison is made on the store as it was opened: a locker that restarts on a
    rolled-back store while the broker is unreachable commits ``started`` and more (here as
    many events as were lost) before it can read its retained state, and those take the very
    seqs the server already holds. Comparing with last_seq after them would see no rollback."""
    published = roll_back(rig, 3)
    rig.reopen()  # offline: started, then people at the keypad
    opened = rig.ctl.store.opened_last_seq
    for n in range(published["last_seq"] - opened + 2):  # one lockdown_changed each
        rig.put(command("lockdown", rig.clock.wall, on=n % 2 == 0))
    assert opened < published["last_seq"] < rig.ctl.store.last_seq()
    old_epoch = rig.ctl.store.epoch
    rig.put(RetainedState(published["epoch"], published["last_seq"]))
    assert rig.ctl.store.epoch != old_epoch
    assert rig.of("epoch_started")[-1]["data"]["reason"] == "rolled_back"
    assert {e["epoch"] for e in rig.outbox()} == {rig.ctl.store.epoch}


def test_a_new_store_says_which_stream_it_replaces_and_refuses_older_commands(
    tmp_path: Path,
) -> None:
    # Issue 11 item 21: a zero-length locker.db is a new store, not the old one.
    (tmp_path / "locker.db").write_bytes(b"")
    rig = EpochRig(tmp_path)
    clock_start = rig.clock.wall
    old_epoch = "9d1c2b3a-0000-4000-8000-000000000000"
    rig.put(RetainedState(old_epoch, 15))
    started = rig.of("epoch_started")
    assert started[-1]["data"] == {
        "reason": "store_replaced",
        "previous_epoch": old_epoch,
        "previous_last_seq": 15,
    }
    assert rig.ctl.store.epoch != old_epoch
    rig.send(open_cmd(clock_start - 60))  # a signed open that ran on the old store
    assert rig.bank.unlocked == []
    rig.send(open_cmd(clock_start))  # signed in the second of the discovery: refused too
    assert rig.bank.unlocked == []
    rig.send(open_cmd(clock_start + 1))  # signed after it: runs
    assert [c for c, _ in rig.bank.unlocked] == ["A1"]
    # The same store, seen in step before, that later finds another epoch published is a
    # restored copy: a new epoch.
    mine, published = rig.ctl.store.epoch, rig.ctl.store.last_seq()
    rig.restart()
    rig.put(RetainedState(mine, published))
    assert rig.ctl.store.epoch == mine
    rig.restart()
    rig.put(RetainedState(old_epoch, 40))
    assert rig.ctl.store.epoch != mine
    assert rig.of("epoch_started")[-1]["data"]["reason"] == "restored"


def test_nothing_published_yet_is_nothing_to_compare(rig: EpochRig) -> None:
    epoch = rig.ctl.store.epoch
    rig.put(RetainedState(None, None))
    assert rig.ctl.store.epoch == epoch and not rig.of("epoch_started")
