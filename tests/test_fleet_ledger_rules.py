"""The parcel ledger's and the stream sweep's rules, through the real ingest on real SQLite.

- One locker's word: an event from a locker that does not hold the parcel changes nothing and
  is reported; epochs are ordered within the holding locker only.
- A pending parcel leaves ``pending`` once its assign's exp has passed; each life of a parcel
  id gets its own reminder.
- Only the current epoch of an online locker is resynced; an old epoch's gap is given up once.
- An event nested too deep for ``json.loads`` is still placed by its top level.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, select

from locker.fleet import jsontop, ledger
from locker.fleet.service import alarms, db, gaps, parcel_ledger
from locker.fleet.service.alarms import Rules
from locker.fleet.service.ingest import Ack, Ingest, Message
from locker.fleet.service.intake import MAX_EVENT_BYTES
from tests.ingest_rig import RULE, Clock, P, engine, evt, online

_ = engine  # a fixture


def _parcel(engine: Engine, parcel: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(db.parcels).where(db.parcels.c.parcel == parcel)).one()


def _reports(engine: Engine, kind: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(db.reports).where(db.reports.c.kind == kind)).mappings()
        return [{"locker": r["locker"], **r["detail"]} for r in rows]


def test_an_event_of_another_locker_never_moves_a_parcel(engine: Engine) -> None:
    ingest = Ingest(engine)
    ingest.store([evt("SIM-0001", 1, "parcel_reserved", parcel="P1", compartment="A1")])
    out = ingest.store([evt("L2", 1, "parcel_collected", parcel="P1", compartment="B9")])
    assert out.acks == [Ack("L2", "e1", 1)], "stored as an event and acked: the stream goes on"
    row = _parcel(engine, "P1")
    assert (row.locker, row.state, row.compartment) == ("SIM-0001", "reserved", "A1")
    with engine.connect() as conn:
        history = parcel_ledger.history(conn, "P1")
    assert [h["what"] for h in history] == ["parcel_reserved"], "not in the parcel's history"
    assert _reports(engine, "foreign_parcel_event") == [
        {
            "locker": "L2",
            "parcel": "P1",
            "holder": "SIM-0001",
            "state": "reserved",
            "epoch": "e1",
            "seq": 1,
            "type": "parcel_collected",
        }
    ]
    assert any("which locker SIM-0001 holds" in line for line in out.rejections)
    with engine.connect() as conn:
        kinds = conn.execute(select(db.alarms.c.kind, db.alarms.c.locker)).all()
    assert [tuple(k) for k in kinds] == [("foreign_parcel_event", "L2")]


def test_an_epoch_is_newer_only_by_when_its_locker_was_seen_in_it(engine: Engine) -> None:
    clock = Clock()
    ingest = Ingest(engine, clock=clock)
    # epoch "zz" first, then "aa": the text order would say the opposite
    ingest.store([evt("L1", 5, "parcel_reserved", epoch="zz", parcel="P1", compartment="A1")])
    clock.now += 10
    ingest.store([evt("L1", 1, "parcel_deposited", epoch="aa", parcel="P1", compartment="A1")])
    assert _parcel(engine, "P1").state == "deposited", "the later epoch's event wins"
    ingest.store([evt("L1", 6, "assignment_cancelled", epoch="zz", parcel="P1")])
    assert _parcel(engine, "P1").state == "deposited", "a late event of the older epoch loses"


def test_a_parcel_reserved_elsewhere_after_a_final_state_is_a_new_life(engine: Engine) -> None:
    ingest = Ingest(engine)
    ingest.store([evt("L1", 1, "parcel_reserved", parcel="P1", compartment="A1")])
    ingest.store([evt("L1", 2, "assignment_cancelled", parcel="P1", compartment="A1")])
    ingest.store([evt("L2", 1, "parcel_reserved", parcel="P1", compartment="B1")])
    row = _parcel(engine, "P1")
    assert (row.locker, row.state, row.life) == ("L2", "reserved", 2)
    out = ingest.store([evt("L1", 3, "parcel_collected", parcel="P1", compartment="A1")])
    assert _parcel(engine, "P1").state == "reserved", "L1 no longer holds it"
    assert out.rejections and _reports(engine, "foreign_parcel_event")


def test_a_pending_parcel_is_withdrawn_once_its_assign_has_expired(engine: Engine) -> None:
    life = parcel_ledger.Life("P5", "L9", "delivery", "S", "op", 2_000_000_000, "00", 0, 1)
    t0 = 1_000_000.0
    with engine.begin() as conn:
        assert parcel_ledger.begin_life(conn, life, t0) is None
        assert parcel_ledger.begin_life(conn, life, t0) == ("pending", "L9")
        assert parcel_ledger.lapse_pending(conn, t0 + parcel_ledger.ASSIGN_RUNS_FOR_S - 1) == []
        lapsed = parcel_ledger.lapse_pending(conn, t0 + parcel_ledger.ASSIGN_RUNS_FOR_S + 1)
        assert lapsed == [("P5", "L9")]
        assert parcel_ledger.lapse_pending(conn, t0 + 10 * 86400) == [], "once"
        assert parcel_ledger.history(conn, "P5")[-1]["what"] == "withdrawn"
        moved = parcel_ledger.Life("P5", "L2", "delivery", "S", "op", 2_000_000_000, "00", 0, 1)
        assert parcel_ledger.begin_life(conn, moved, t0 + 10 * 86400) is None, "the id is free"
    row = _parcel(engine, "P5")
    assert (row.locker, row.state, row.life) == ("L2", "pending", 2)


def test_each_life_of_a_parcel_id_gets_its_own_reminder(engine: Engine) -> None:
    clock = Clock()
    rules = Rules(reminder_before_s=3600, routes={"notification": [("webhook", 0)]})
    ingest = Ingest(engine, rules=rules, clock=clock)
    until = int(clock.now) + 600
    for seq, kind in ((1, "parcel_reserved"), (2, "parcel_deposited")):
        data = {"pickup_until": until}
        ingest.store([evt("L1", seq, kind, parcel="P1", compartment="A1", data=data)])
    with engine.begin() as conn:
        alarms.sweep(conn, rules, clock.now)
    ingest.store([evt("L1", 3, "parcel_collected", parcel="P1", compartment="A1")])
    for seq, kind in ((4, "parcel_reserved"), (5, "parcel_deposited")):
        data = {"pickup_until": until + 60}
        ingest.store([evt("L1", seq, kind, parcel="P1", compartment="A1", data=data)])
    assert _parcel(engine, "P1").life == 2
    with engine.begin() as conn:
        alarms.sweep(conn, rules, clock.now)
        alarms.sweep(conn, rules, clock.now)
        rows = conn.execute(select(db.deliveries)).all()
    reminders = sorted(r.idempotency_key for r in rows if r.payload["type"] == "pickup_reminder")
    assert reminders == ["pickup_reminder-P1-life1", "pickup_reminder-P1-life2"]
    deposits = sorted(r.idempotency_key for r in rows if r.payload["type"] == "parcel_deposited")
    assert deposits == ["parcel_deposited-L1-e1-2-life1", "parcel_deposited-L1-e1-5-life2"]
    assert _parcel(engine, "P1").reminded


def test_only_the_current_epoch_of_an_online_locker_is_resynced(engine: Engine) -> None:
    clock = Clock()
    ingest = Ingest(engine, rules=Rules(gap_resync_s=2.0, resync_interval_s=60.0), clock=clock)
    ingest.store([evt("LC", s, epoch="A") for s in (1, 2, 5)])  # gap 3-4
    clock.now += 61  # past the first contact's own resync (ingest's)
    assert gaps.sweep(engine, RULE, clock.now).resyncs == [], "offline (never born): none"
    ingest.store([online("LC")])
    first = gaps.sweep(engine, RULE, clock.now)
    assert [g.line() for g in first.resyncs] == ["LC (epoch A): gap 3-4 for 61.0 s: resync sent"]
    ingest.store([online("LC", up=False)])
    clock.now += 120
    assert gaps.sweep(engine, RULE, clock.now).resyncs == [], "offline again: none queued"
    ingest.store([online("LC")])
    clock.now += 1
    ingest.store([evt("LC", s, epoch="B") for s in (1, 2)])  # the locker moved on
    clock.now += 1
    swept = gaps.sweep(engine, RULE, clock.now)
    assert swept.resyncs == []
    assert [g.line() for g in swept.given_up] == [
        "LC (epoch A): gap 3-4 given up: the locker has moved to another epoch, so these "
        "events can never come; the old stream is closed at seq 5"
    ]
    for _ in range(3):
        clock.now += 120
        again = gaps.sweep(engine, RULE, clock.now)
        assert (again.resyncs, again.given_up) == ([], []), "reported once, then quiet"
    assert _reports(engine, "gap_given_up") == [
        {
            "locker": "LC",
            "epoch": "A",
            "missing_from": 3,
            "missing_to": 4,
            "upto": 5,
            "never_stored": 2,
        }
    ]


def test_a_deeply_nested_event_is_held_as_a_placeholder_and_its_stream_goes_on(
    engine: Engine,
) -> None:
    ingest = Ingest(engine)
    ingest.store([evt("L1", s) for s in range(1, 10)])
    deep = b"[" * 30_000 + b"]" * 30_000  # within MAX_EVENT_BYTES, past the parser's depth
    body = b'{"v":1,"epoch":"e1","seq":10,"type":"door_opened","data":' + deep + b"}"
    assert len(body) < MAX_EVENT_BYTES
    with pytest.raises(RecursionError):
        json.loads(body)
    msg = Message(f"{P}/L1/evt/door_opened", body)
    out = ingest.store([msg, *(evt("L1", s) for s in (11, 12, 13))])
    assert out.acks == [Ack("L1", "e1", 13)] and out.invalid == 1 and out.rejected == 0
    again = ingest.store([msg])
    assert (again.duplicates, again.rejected, again.acks) == (1, 0, [Ack("L1", "e1", 13)])
    with engine.connect() as conn:
        held = conn.execute(select(db.events).where(db.events.c.seq == 10)).one()
    assert held.type == ledger.INVALID_EVENT
    assert held.body["data"]["problem"] == "nested too deep to parse (its top level was read)"
    unreadable = Message(f"{P}/L1/evt/door_opened", b'{"seq":' + deep + b"}")
    out = ingest.store([unreadable])
    assert out.rejected == 1 and "seq null is not an integer" in out.rejections[0]
    # the reported input: 200,000 deep (400 kB: oversized, still placed, as before)
    huge = b"[" * 200_000 + b"]" * 200_000
    body = b'{"v":1,"epoch":"e1","seq":14,"type":"door_opened","data":' + huge + b"}"
    out = ingest.store([Message(f"{P}/L1/evt/door_opened", body), evt("L1", 15)])
    assert out.acks == [Ack("L1", "e1", 15)] and out.invalid == 1


def test_the_top_level_scanner_skips_nested_values_and_strings_whole() -> None:
    doc = b'{"a":"x\\"]","b":[{"c":"]\\"["}],"d":2,"e\\u0041":true}'
    assert jsontop.top_level(doc) == {"a": 'x"]', "b": None, "d": 2, "eA": True}
    for bad in (b'{"a":1,}', b"[1]", b'{"a":[1}', b"{} x", b"\xff", b""):
        assert jsontop.top_level(bad) is None, bad
