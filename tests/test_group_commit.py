"""Group commit and the coalesced state snapshot (issue 10), with the real controller and
SQLite store: fewer fsyncs and snapshots, the same events, commit-before-act kept."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from locker.cabinet import controller as controller_module
from locker.ports import InputRejected, InputSource, KeyPressed, ServerAck
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
