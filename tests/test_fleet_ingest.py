"""The fleet service's ingest against a real SQLite database (migrated by Alembic).

Messages are built as lockers publish them (DESIGN 5); the acks are what the database holds
contiguously per (locker, epoch), whatever the order and repetition of arrival.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select

from locker.fleet import ledger as receipt
from locker.fleet.client import Incoming
from locker.fleet.service import db
from locker.fleet.service.alarms import Rules
from locker.fleet.service.ingest import Ack, Ingest, Message
from locker.fleet.watch import FleetView
from tests.ingest_rig import P, engine, evt, state

_ = engine  # a fixture


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_migrations_build_exactly_the_declared_schema_and_go_down_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    db.upgrade(url)
    db.upgrade(url)  # idempotent
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
    command.downgrade(db.alembic_config(url), "base")
    with engine.connect() as conn:
        names = conn.exec_driver_sql("select name from sqlite_master where type='table'")
        assert {n for (n,) in names} <= {"alembic_version"}


def test_events_stored_once_acked_contiguously_in_any_order(engine: Engine) -> None:
    ingest = Ingest(engine)
    out = ingest.store([evt("L1", 1), evt("L1", 3), evt("L1", 3)])
    assert (out.new_events, out.duplicates) == (2, 1)
    assert out.acks == [Ack("L1", "e1", 1)], "never past the gap at 2"
    assert any("gap" in line and "missing_from=2" in line for line in out.lines)
    out = ingest.store([evt("L1", 2), evt("L1", 1)])
    assert (out.new_events, out.duplicates) == (1, 1)
    assert out.acks == [Ack("L1", "e1", 3)]
    assert any("gap_filled" in line for line in out.lines)
    assert count(engine, db.events) == 3
    assert json.loads(Ack("L1", "e1", 3).payload()) == {"v": 1, "epoch": "e1", "upto_seq": 3}


def test_a_new_epoch_is_a_new_stream_not_a_duplicate(engine: Engine) -> None:
    ingest = Ingest(engine)
    ingest.store([evt("L1", 1), evt("L1", 2)])
    out = ingest.store([evt("L1", 1, epoch="e2")])
    assert out.new_events == 1
    assert out.acks == [Ack("L1", "e2", 1)]
    with engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(db.reports).order_by(db.reports.c.id))]
    assert kinds == ["first_contact", "epoch_change"]


def test_an_event_without_epoch_belongs_to_the_empty_epoch_and_its_ack_has_none(
    engine: Engine,
) -> None:
    out = Ingest(engine).store([evt("L1", 1, epoch=None)])
    assert out.acks == [Ack("L1", "", 1)]
    assert json.loads(out.acks[0].payload()) == {"v": 1, "upto_seq": 1}


def test_first_contact_past_seq_1_asks_for_resync_and_acks_only_after_a_baseline(
    engine: Engine,
) -> None:
    ingest = Ingest(engine, rules=Rules(resync_interval_s=3600))
    out = ingest.store([evt("L9", 41), evt("L9", 42)])
    assert out.acks == [] and out.resync == ["L9"]
    assert ingest.store([evt("L9", 43)]).resync == [], "asked once per interval"
    # the locker's retained state: 3 events (41-43) still in its outbox
    out = ingest.store([state("L9", 43, 3)])
    assert out.acks == [Ack("L9", "e1", 43)]


def test_retained_and_malformed_events_are_refused_not_stored(engine: Engine) -> None:
    bad = [
        Message(f"{P}/L1/evt/door_opened", evt("L1", 1).payload, retain=True),
        Message(f"{P}/L1/evt/x", b"not json"),
        Message(f"{P}/L1/evt/x", json.dumps({"seq": 0, "type": "x"}).encode()),
        Message(f"{P}/L1/evt/x", json.dumps({"seq": True, "type": "x"}).encode()),
        Message(f"{P}/L1/evt/x", json.dumps({"seq": 1, "type": "x", "epoch": 5}).encode()),
        Message("elsewhere/L1/evt/x", evt("L1", 1).payload),
    ]
    out = Ingest(engine).store(bad)
    assert (out.new_events, out.rejected, out.acks) == (0, len(bad), [])
    assert count(engine, db.events) == 0


def test_ledger_follows_the_parcel_whatever_the_arrival_order(engine: Engine) -> None:
    ingest = Ingest(engine)
    ingest.store([evt("L1", 3, "parcel_collected", parcel="P1", compartment="A1")])
    ingest.store([evt("L1", 1, "parcel_reserved", parcel="P1", compartment="A1")])
    ingest.store([evt("L1", 2, "parcel_deposited", parcel="P1", compartment="A1")])
    with engine.connect() as conn:
        row = conn.execute(select(db.parcels)).one()
        hist = conn.execute(select(db.parcel_history.c.what)).scalars().all()
    assert row.state == "collected"
    assert sorted(hist) == ["parcel_collected", "parcel_deposited", "parcel_reserved"]


def test_alarms_are_raised_once_and_routed_once(engine: Engine) -> None:
    rules = Rules(routes={"alarm": [("webhook", 0)], "notification": []})
    ingest = Ingest(engine, rules=rules)
    ingest.store([evt("L1", 1, "door_forced", compartment="A1")])
    ingest.store([evt("L1", 2, "door_forced", compartment="A1")])
    ingest.store([evt("L1", 2, "door_forced", compartment="A1")])  # a resend: no effect
    with engine.connect() as conn:
        rows = conn.execute(select(db.alarms)).all()
    assert [(r.kind, r.compartment, r._mapping["count"], r.state) for r in rows] == [
        ("door_forced", "A1", 2, "open")
    ]
    assert count(engine, db.deliveries) == 1


def test_alarm_resolved_by_its_clearing_event(engine: Engine) -> None:
    ingest = Ingest(engine)
    ingest.store([evt("L1", 1, "door_left_open", compartment="B2")])
    ingest.store([evt("L1", 2, "door_closed", compartment="B2")])
    with engine.connect() as conn:
        assert conn.execute(select(db.alarms.c.state)).scalar_one() == "resolved"


def test_a_floor_from_the_lockers_state_ends_a_wait_for_events_gone_for_good(
    engine: Engine,
) -> None:
    ingest = Ingest(engine)
    ingest.store([evt("L1", 1), evt("L1", 2)])
    # events 3-7 were deleted from the locker (another server's ack): they never come
    out = ingest.store([state("L1", 10, 3)])
    assert out.acks == [Ack("L1", "e1", 7)]
    with engine.connect() as conn:
        report = conn.execute(
            select(db.reports.c.detail).where(db.reports.c.kind == "floor_raised")
        ).scalar_one()
    assert report == {"epoch": "e1", "from": 3, "to": 7, "never_stored": 5}
    assert ingest.store([evt("L1", 8), evt("L1", 9), evt("L1", 10)]).acks == [Ack("L1", "e1", 10)]
    # an older snapshot (lower floor) lowers nothing
    assert ingest.store([state("L1", 5, 4, rev=0)]).acks == []


HUGE = 99999999999999999999999  # the break-test's value: past SQLite's signed 64-bit INTEGER


def raw(topic: str, doc: dict[str, Any], *, retain: bool = False) -> Message:
    return Message(f"{P}/{topic}", json.dumps(doc).encode(), retain=retain)


def test_numbers_outside_the_contracts_range_are_rejected_before_the_database(
    engine: Engine,
) -> None:
    ingest = Ingest(engine)
    assert ingest.store([evt("LKR-1", 1), evt("LKR-1", 2)]).acks == [Ack("LKR-1", "e1", 2)]
    poison_state = {
        "v": 1,
        "epoch": "e1",
        "last_seq": HUGE,
        "outbox_depth": HUGE,
        "compartments": [],
        "lockdown": False,
        "keypad_locked": False,
    }
    bad = [
        raw("LKR-1/state", poison_state, retain=True),  # the break-test's message
        raw("LKR-1/state", {"v": 1, "epoch": "e1", "last_seq": 2**63, "outbox_depth": 0}),
        raw("LKR-1/state", {"v": 1, "epoch": "e1", "last_seq": 5, "outbox_depth": -1}),
        raw("LKR-1/state", {"v": 1, "epoch": "e1", "rev": HUGE, "last_seq": 2}),
        raw("LKR-1/state", {"v": 1, "epoch": 7, "last_seq": 2, "outbox_depth": 0}),
        evt("LKR-1", HUGE),  # the break-test's event
        evt("LKR-1", 2**63),  # one past the range
        raw("L\x00/evt/door_opened", {"v": 1, "epoch": "e1", "seq": 1, "type": "x"}),
        raw("L" * 65 + "/evt/door_opened", {"v": 1, "epoch": "e1", "seq": 1, "type": "x"}),
    ]
    # placed (seq and epoch valid) but with a body no column holds: held as placeholders
    bad_bodies = [
        evt("LKR-1", 3, ts="x" * 41),  # longer than the column holds on PostgreSQL
        evt("LKR-1", 4, compartment="C" * 65),
        evt("LKR-1", 5, parcel="P\x00"),  # PostgreSQL's text refuses NUL
        evt("LKR-1", 6, "door\nopened"),
    ]
    # one good message in the same batch is stored whatever its neighbours
    out = ingest.store([*bad, *bad_bodies, evt("LKR-2", 1)])
    assert (out.rejected, out.invalid, out.new_events) == (len(bad), 4, 5)
    assert Ack("LKR-2", "e1", 1) in out.acks
    assert Ack("LKR-1", "e1", 6) in out.acks, "the bad bodies hold their seqs: no stall"
    assert len(out.rejections) == len(bad) + len(bad_bodies)
    assert "LKR-1: message on lockers/LKR-1/state rejected: last_seq" in out.rejections[0]
    assert any("seq 99999999999999999999999 is not an integer" in r for r in out.rejections)
    assert any("event seq 4 of epoch e1 is invalid (compartment" in r for r in out.rejections)
    with engine.connect() as conn:
        known = conn.execute(select(db.lockers.c.id)).scalars().all()
        stream = conn.execute(select(db.streams.c.contiguous)).scalars().all()
        types = conn.execute(select(db.events.c.type).where(db.events.c.seq > 2)).scalars().all()
    assert known == [], "no poisoned state stored (events alone make no locker row)"
    assert sorted(stream) == [1, 6]
    assert types == [receipt.INVALID_EVENT] * 4
    # the edge of the range is the contract's: stored, and its floor acks what it says is gone
    top = {"v": 1, "epoch": "e1", "rev": 2**63 - 1, "last_seq": 2**63 - 1, "outbox_depth": 0}
    out = ingest.store([raw("LKR-3/state", top), evt("LKR-3", 2**63 - 1)])
    assert (out.rejected, out.new_events) == (0, 1)
    assert out.acks == [Ack("LKR-3", "e1", 2**63 - 1)]


def test_a_parcel_learnt_from_events_has_the_kind_and_size_of_its_reservation(
    engine: Engine,
) -> None:
    ingest = Ingest(engine)
    # deposited first (a shared subscription keeps no order), then the reservation
    ingest.store([evt("L1", 2, "parcel_deposited", parcel="P1", compartment="A3",
                      data={"pickup_until": HUGE})])  # fmt: skip
    reserved = {"kind": "return", "size": "M", "dropoff_until": 1_900_000_000}
    ingest.store([evt("L1", 1, "parcel_reserved", parcel="P1", compartment="A3", data=reserved)])
    bogus = {"kind": ["delivery"], "size": "XXL", "dropoff_until": HUGE}
    ingest.store([evt("L1", 3, "parcel_reserved", parcel="P2", compartment="A4", data=bogus)])
    with engine.connect() as conn:
        rows = {r.parcel: r for r in conn.execute(select(db.parcels))}
    p1, p2 = rows["P1"], rows["P2"]
    assert (p1.kind, p1.size, p1.dropoff_until, p1.created_by) == (
        "return",
        "M",
        1_900_000_000,
        None,
    )
    assert (p1.state, p1.pickup_until) == ("deposited", None), "an out-of-range time is not kept"
    assert (p2.kind, p2.size, p2.dropoff_until) == ("", "", None), "invalid data is not taken"


def test_a_floor_at_the_top_of_the_range_is_counted_not_walked() -> None:
    stream = receipt.Stream("L1", "e1")
    stream.receive(1, {"seq": 1})
    stream.receive(5, {"seq": 5})
    # 2**63 - 1 seqs to skip: counted in O(held), not iterated (that loop never ended)
    assert stream.raise_floor(2**63 - 1) == 2**63 - 1 - 1 - 1
    assert stream.ack_due() == receipt.Ack("e1", 2**63 - 1)
    assert receipt.state_floor({"last_seq": HUGE, "outbox_depth": 0}) is None
    assert receipt.state_floor({"last_seq": 2**63 - 1, "outbox_depth": 1}) == 2**63 - 2


def test_lockerctl_watch_takes_the_same_range_and_never_acks_past_it() -> None:
    view = FleetView("lockers")
    top = {"v": 1, "epoch": "e1", "rev": 1, "last_seq": 2**63 - 1, "outbox_depth": 0}
    view.handle(Incoming("lockers/L1/state", json.dumps(top).encode(), True, 1))  # no walk
    assert view.acks_due() == {"L1": receipt.Ack("e1", 2**63 - 1)}
    view.mark_acked("L1", receipt.Ack("e1", 2**63 - 1))
    past = {"v": 1, "epoch": "e1", "seq": 2**63, "type": "door_opened"}
    lines = view.handle(Incoming("lockers/L1/evt/door_opened", json.dumps(past).encode(), False, 1))
    assert lines == ["L1: malformed message on lockers/L1/evt/door_opened (not acknowledged)"]
    assert view.acks_due() == {}, "no ack above 2**63-1"
