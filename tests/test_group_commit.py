"""Group commit and the coalesced state snapshot (issue 10), with the real controller and
SQLite store: fewer fsyncs and snapshots, the same events, commit-before-act kept."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from locker.cabinet import controller as controller_module
from locker.cabinet.store import CHECKPOINT_AFTER, Store
from locker.ports import InputRejected, InputSource, KeyPressed, ServerAck
from tests.domain import command
from tests.test_controller import Rig, _assign


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path)
    r.drain()
    return r


def count_commits(rig: Rig) -> list[int]:
    commits: list[int] = []
    real = rig.ctl.store.commit

    def commit(*args: Any, **kwargs: Any) -> Any:
        rows = real(*args, **kwargs)
        commits.append(len(rows))
        return rows

    rig.ctl.store.commit = commit  # type: ignore[method-assign]
    return commits


def test_queued_inputs_share_one_commit_and_keep_every_event(rig: Rig) -> None:
    commits = count_commits(rig)
    before = rig.ctl.store.last_seq()
    rig.put(*[InputRejected(InputSource.SCANNER, f"junk {i}") for i in range(600)])
    added = rig.ctl.store.last_seq() - before
    assert added >= 1
    assert sum(commits) == added
    assert len(commits) <= -(-600 // controller_module.BATCH_MAX)  # at most one per batch
    seqs = [e["seq"] for e in rig.ctl.store.outbox()]
    assert seqs == list(range(1, len(seqs) + 1))


def test_an_unlock_is_committed_before_its_pulse_even_inside_a_batch(rig: Rig) -> None:
    drop, _ = _assign(rig)
    commits = count_commits(rig)
    noise = [InputRejected(InputSource.SCANNER, f"junk {i}") for i in range(50)]
    rig.put(*noise, *[KeyPressed(k) for k in drop + "#"], *noise)
    assert rig.bank.unlocked == [("A1", True)]  # CheckingBank read it committed at the pulse
    assert commits  # the unlock's own commit came first; the noise after it needs none


def test_counters_alone_republish_the_state_at_a_bounded_rate(rig: Rig) -> None:
    seen: list[Mapping[str, Any]] = []
    rig.ctl.uplink.publish_state = seen.append  # type: ignore[method-assign,assignment]
    for i in range(20):
        rig.put(InputRejected(InputSource.SCANNER, f"junk {i}"))  # one event each
    assert len(seen) <= 1  # counters only: not once per event
    rig.clock.advance(controller_module.STATE_COUNTERS_EVERY_S)
    assert rig.ctl.step_once(0) is False  # idle turn: the due counters go out
    assert seen[-1]["last_seq"] == rig.ctl.store.last_seq()
    assert seen[-1]["outbox_depth"] == rig.ctl.store.outbox_depth()
    rig.put(ServerAck(rig.ctl.store.last_seq(), rig.ctl.store.epoch))
    rig.clock.advance(controller_module.STATE_COUNTERS_EVERY_S)
    rig.ctl.step_once(0)
    assert seen[-1]["outbox_depth"] == 0
    n = len(seen)
    _assign(rig, "P9")  # what the state shows changed: at once
    assert len(seen) == n + 1 and seen[-1]["compartments"][0]["state"] == "reserved"


def test_sqlite_never_checkpoints_inside_a_commit_the_store_does_when_told(
    tmp_path: Path,
) -> None:
    """Issue 10: the commit that crossed SQLite's WAL threshold paid the checkpoint before its
    unlock's pulse. The store's connection does not checkpoint by itself; ``checkpoint`` does,
    after which the WAL starts over instead of growing."""
    store = Store(tmp_path / "s.db", boot_id="b")
    try:
        assert store._con.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        wal = tmp_path / "s.db-wal"
        while not store.checkpoint_due(idle=True):
            assert not store.checkpoint_due(idle=False)
            store.set_meta("k", "x" * 3000)
        grown = wal.stat().st_size
        store.set_meta("k", "y" * 3000)
        assert wal.stat().st_size > grown  # no checkpoint yet: appended
        store.checkpoint()
        assert not store.checkpoint_due(idle=True)
        size = wal.stat().st_size
        store.set_meta("k", "z" * 3000)
        assert wal.stat().st_size == size  # restarted from its beginning
        assert store.meta("k") == "z" * 3000
    finally:
        store.close()


def test_the_controller_checkpoints_only_with_nothing_waiting(rig: Rig) -> None:
    calls: list[int] = []
    real = rig.ctl.store.checkpoint

    def checkpoint() -> None:
        calls.append(rig.ctl.queue.qsize())
        real()

    rig.ctl.store.checkpoint = checkpoint  # type: ignore[method-assign]
    for _ in range(8):
        # each burst: a commit per command, queued together
        rig.put(*[command("resync", rig.clock.wall) for _ in range(CHECKPOINT_AFTER // 4)])
    assert calls  # 8 x 16 writes: at least one checkpoint
    assert set(calls) == {0}  # and never with an input waiting
