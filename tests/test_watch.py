"""The server's bookkeeping (pure): ``ledger.Stream`` and ``watch.FleetView``.

Issue 11 items 7 and 19: events are keyed by ``(locker, epoch, seq)``; an ack never passes a
gap; a first contact that starts with a live event while a backlog is queued acknowledges
nothing and asks for the backlog; a new epoch is reported, not dropped as duplicates.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from locker.fleet.client import Incoming
from locker.fleet.ledger import Ack, Stream, state_floor
from locker.fleet.watch import EventLog, FleetView

E1 = "11111111-1111-4111-8111-111111111111"
E2 = "22222222-2222-4222-8222-222222222222"


def ev(seq: int, epoch: str | None = E1, event_type: str = "door_opened") -> Incoming:
    doc: dict[str, Any] = {
        "v": 1,
        "seq": seq,
        "event_id": str(uuid.uuid4()),
        "boot_id": "b",
        "ts": "2025-01-01T00:00:00Z",
        "clock_synced": True,
        "type": event_type,
        "compartment": "A1",
        "data": {},
    }
    if epoch is not None:
        doc["epoch"] = epoch
    return Incoming(f"lockers/L1/evt/{event_type}", json.dumps(doc).encode(), False, 1)


def state(last_seq: int, depth: int, epoch: str = E1) -> Incoming:
    doc = {"v": 1, "epoch": epoch, "rev": 1, "last_seq": last_seq, "outbox_depth": depth}
    return Incoming("lockers/L1/state", json.dumps({**doc, "compartments": []}).encode(), True, 1)


def test_view_dedups_detects_gaps_and_acks_only_contiguous(tmp_path: Path) -> None:
    view = FleetView("lockers", EventLog(tmp_path))
    assert view.handle(state(4, 0))[1] == f"L1: first contact, epoch {E1[:8]}"
    view.handle(ev(5))
    assert view.acks_due() == {"L1": Ack(E1, 5)}
    view.mark_acked("L1", Ack(E1, 5))
    assert any("gap, missing seq 6-8" in line for line in view.handle(ev(9)))
    assert any("gap, missing seq 7-8" in line for line in view.handle(ev(6)))
    assert view.acks_due() == {"L1": Ack(E1, 6)}
    view.mark_acked("L1", Ack(E1, 6))
    assert view.handle(ev(9)) == [] and view.acks_due() == {"L1": Ack(E1, 6)}  # re-ack
    view.mark_acked("L1", Ack(E1, 6))
    view.handle(ev(8))
    assert any("gap filled" in line for line in view.handle(ev(7)))
    assert view.acks_due() == {"L1": Ack(E1, 9)}
    assert [e["seq"] for e in view.lockers["L1"].events] == [5, 6, 7, 8, 9]
    assert view.lockers["L1"].duplicates == 1


def test_first_contact_with_a_live_event_acks_nothing_and_asks_for_the_backlog() -> None:
    # Issue 11 item 19: 21 events queued on the locker, the first one seen is live seq 22.
    view = FleetView()
    lines = view.handle(ev(22))
    assert any("gap, missing seq 1-21" in line for line in lines)
    assert view.acks_due() == {}
    assert view.resyncs_due() == ["L1"]
    view.mark_resync_sent("L1")
    view.handle(state(22, 22))  # the retained state: nothing was ever deleted
    assert view.acks_due() == {}
    for seq in range(1, 22):
        view.handle(ev(seq))
        if seq < 21:  # what it holds from the start of the epoch, never past the gap
            assert view.acks_due() == {"L1": Ack(E1, seq)}
            view.mark_acked("L1", Ack(E1, seq))
    assert view.acks_due() == {"L1": Ack(E1, 22)}
    assert view.resyncs_due() == []


def test_state_floor_lifts_a_stream_past_events_gone_from_the_locker() -> None:
    view = FleetView()
    view.handle(ev(8))
    lines = view.handle(state(8, 1))  # seq 1-7 were acknowledged before this server
    assert any("seq 1-7" in line and "removed" in line for line in lines)
    assert view.acks_due() == {"L1": Ack(E1, 8)}
    assert state_floor({"last_seq": 3, "outbox_depth": 5}) == 0
    assert state_floor({"last_seq": "3", "outbox_depth": 0}) is None


def test_a_new_epoch_is_reported_and_its_seqs_are_not_duplicates() -> None:
    # Issue 11 item 7: the store was replaced; the new one counts from seq 1 again.
    view = FleetView()
    for seq in range(1, 17):
        view.handle(ev(seq))
    view.mark_acked("L1", Ack(E1, 16))
    lines = view.handle(ev(1, E2))
    assert any("NEW EVENT STREAM" in line and E2[:8] in line for line in lines)
    assert view.handle(ev(2, E2))
    assert view.acks_due() == {"L1": Ack(E2, 2)}  # never an ack of E1 at 16 to the new store
    assert [(e["epoch"], e["seq"]) for e in view.lockers["L1"].events[-2:]] == [(E2, 1), (E2, 2)]
    assert view.lockers["L1"].duplicates == 0


def test_legacy_events_without_epoch_ack_without_epoch() -> None:
    view = FleetView()
    view.handle(ev(1, None))
    ack = view.acks_due()["L1"]
    assert ack.payload() == {"v": 1, "upto_seq": 1}
    assert Ack(E1, 3).payload() == {"v": 1, "epoch": E1, "upto_seq": 3}


def test_view_never_acks_malformed_or_retained_events() -> None:
    view = FleetView()
    for payload in (b"{", b'{"seq": 0}', b'{"seq": "1"}', b"[]", b'{"seq": 1, "epoch": 5}'):
        lines = view.handle(Incoming("lockers/L1/evt/x", payload, False, 1))
        assert lines == ["L1: malformed message on lockers/L1/evt/x (not acknowledged)"]
    forged = ev(1)
    view.handle(Incoming(forged.topic, forged.payload, True, 1))
    assert view.acks_due() == {}


def test_view_reloads_from_its_log(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    view = FleetView("lockers", log)
    view.handle(state(2, 0))
    for seq in (3, 4, 6):
        view.handle(ev(seq))
    for seq in (1, 2):
        view.handle(ev(seq, E2))
    log.close()
    again = FleetView("lockers", EventLog(tmp_path))
    old, new = again.lockers["L1"].streams[E1], again.lockers["L1"].streams[E2]
    assert old.contiguous == 4 and set(old.ahead) == {6}
    assert new.contiguous == 2 and again.lockers["L1"].epoch == E2
    assert again.handle(ev(4)) == [] and again.handle(ev(5))
    assert old.contiguous == 6


def test_view_tracks_status_and_occupancy() -> None:
    view = FleetView()
    status = {"v": 1, "online": True, "boot_id": "b", "ts": "t", "version": "1"}
    view.handle(Incoming("lockers/L1/status", json.dumps(status).encode(), True, 1))
    assert view.lockers["L1"].online is True
    doc = {
        "rev": 2,
        "epoch": E1,
        "outbox_depth": 0,
        "lockdown": True,
        "compartments": [
            {"id": "A1", "state": "occupied", "door": "open", "in_service": True, "parcel": "P"}
        ],
    }
    lines = view.handle(Incoming("lockers/L1/state", json.dumps(doc).encode(), True, 1))
    assert lines[0] == "L1 state rev 2 outbox 0 [lockdown] A1:occupied(P)[door open]"
    offline = {"v": 1, "online": False, "boot_id": "b"}
    assert view.handle(Incoming("lockers/L1/status", json.dumps(offline).encode(), True, 1))
    assert view.lockers["L1"].online is False


@given(
    order=st.permutations(list(range(1, 31))),
    floor=st.integers(0, 10),
    dups=st.lists(st.integers(1, 30), max_size=10),
)
def test_stream_never_acks_past_what_it_holds(
    order: list[int], floor: int, dups: list[int]
) -> None:
    """Whatever the arrival order, duplicates and floor: every ack covers only seqs that are
    held or at/below the floor, and all 30 arrive exactly once in seq order."""
    stream = Stream("L1", E1)
    stream.raise_floor(floor)
    held: set[int] = set()
    released: list[int] = []
    for seq in order + dups:
        stream.receive(seq, {"seq": seq})
        held.add(seq)
        released += [e["seq"] for e in stream.take_released()]
        ack = stream.ack_due()
        if ack is not None:
            assert all(s in held or s <= floor for s in range(1, ack.upto_seq + 1))
            stream.mark_acked(ack.upto_seq)
    assert released == list(range(floor + 1, 31))
    assert stream.contiguous == 30 and not stream.ahead
