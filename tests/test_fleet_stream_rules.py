"""The two rules that keep a fleet stream moving, as unit tests of the shared code.

- A mid-stream gap that lasts ``gap_resync_s`` gets a ``resync`` (``ledger.GapRule``), at most
  once per ``resync_interval_s`` per stream: in the service (``streams.gap_since``, the gap
  sweep's compare-and-set claim) and in ``lockerctl watch`` (``FleetView.gap_resyncs``).
- An event whose ``(epoch, seq)`` can be placed but whose body breaks the contract is held as
  an ``invalid_event`` placeholder, so its seq is acknowledged; reported, alarmed once.

Real SQLite files migrated by Alembic; clocks are passed in (no sleeps).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from locker.fleet import ledger, provision
from locker.fleet.client import FleetClient, Incoming
from locker.fleet.ctl_ops import watch_json_line
from locker.fleet.service import db, gaps
from locker.fleet.service.alarms import Rules
from locker.fleet.service.config import ConfigError, ServiceConfig
from locker.fleet.service.ingest import Ack, Ingest, Message
from locker.fleet.watch import EventLog, FleetView, Watcher
from tests.conftest import wait_for
from tests.ingest_rig import RULE, Clock, engine, evt, online

_ = engine  # a fixture


def test_the_gap_rule_waits_for_a_lasting_gap_and_repeats_only_per_interval() -> None:
    assert not RULE.due(None, None, 100.0), "no gap, no resync"
    assert not RULE.due(100.0, None, 101.9), "a younger gap is reordering between workers"
    assert RULE.due(100.0, None, 102.0)
    assert not RULE.due(100.0, 102.0, 161.9), "once per interval per stream"
    assert RULE.due(100.0, 102.0, 162.0), "an unanswered resync is repeated, no faster"
    assert ledger.gap_line(34, 37, 2.04) == "gap 34-37 for 2.0 s: resync sent"
    assert ledger.gap_line(5, 5, 3) == "gap 5 for 3.0 s: resync sent"


def test_a_stream_times_its_gap_from_where_it_opened() -> None:
    s = ledger.Stream("L", "e")
    s.receive(1, {})
    s.receive(3, {})
    s.note_gap(10.0)
    assert (s.gap(), s.gap_since) == ((2, 2), 10.0)
    s.receive(4, {})
    s.note_gap(11.0)
    assert s.gap_since == 10.0, "more events past the same gap: the same gap"
    assert not s.gap_resync_due(RULE, 11.9)
    assert s.gap_resync_due(RULE, 12.0) and not s.gap_resync_due(RULE, 13.0)
    s.receive(2, {})
    s.receive(6, {})
    s.note_gap(20.0)
    assert (s.gap(), s.gap_since) == ((5, 5), 20.0), "a gap further on is a new one"
    s.receive(5, {})
    s.note_gap(21.0)
    assert s.gap() is None and vars(s)["gap_since"] is None, "a closed gap is forgotten"


def test_the_service_resyncs_a_lasting_gap_once_per_interval_whichever_worker_sweeps(
    engine: Engine,
) -> None:
    clock = Clock()
    ingest = Ingest(engine, rules=Rules(gap_resync_s=2.0, resync_interval_s=60.0), clock=clock)
    out = ingest.store([online("L1"), evt("L1", 1), evt("L1", 2)])
    assert out.resync == [] and out.acks == [Ack("L1", "e1", 2)]
    clock.now += 1
    out = ingest.store([evt("L1", 7), evt("L1", 8)])  # 3-6 lost
    assert out.acks == [Ack("L1", "e1", 2)] and out.resync == [], "not at once"
    opened = clock.now
    clock.now += 1.9
    assert gaps.claim(engine, RULE, clock.now) == [], "younger than gap_resync_s"
    clock.now = opened + 2.0
    first = gaps.claim(engine, RULE, clock.now)
    assert [g.line() for g in first] == ["L1 (epoch e1): gap 3-6 for 2.0 s: resync sent"]
    assert gaps.claim(engine, RULE, clock.now) == [], "a second worker finds it claimed"
    clock.now += 59
    assert gaps.claim(engine, RULE, clock.now) == [], "once per resync_interval_s"
    clock.now += 1
    again = gaps.claim(engine, RULE, clock.now)
    assert [(g.first, g.last, round(g.age_s)) for g in again] == [(3, 6, 62)]
    out = ingest.store([evt("L1", s) for s in (3, 4, 5, 6)])
    assert out.acks == [Ack("L1", "e1", 8)]
    with engine.connect() as conn:
        row = conn.execute(select(db.streams)).one()
        kinds = conn.execute(select(db.reports.c.kind)).scalars().all()
        detail = conn.execute(
            select(db.reports.c.detail).where(db.reports.c.kind == "gap_resync")
        ).scalars()
        details = list(detail)
    assert (row.gap_since, row.gap_reported) == (None, None), "the filled gap is forgotten"
    assert kinds.count("gap_resync") == 2 and "gap_filled" in kinds
    assert details[0] == {"epoch": "e1", "missing_from": 3, "missing_to": 6, "age_s": 2.0}
    clock.now += 100
    assert gaps.claim(engine, RULE, clock.now) == []


def _seen(view: FleetView, doc: dict[str, Any], topic: str = "evt/door_opened") -> list[str]:
    return view.handle(Incoming(f"lockers/L1/{topic}", json.dumps(doc).encode(), False, 1))


def _ev(seq: int, **kw: Any) -> dict[str, Any]:
    return {"v": 1, "epoch": "e1", "seq": seq, "type": "door_opened", "ts": "t"} | kw


def test_lockerctl_watch_follows_the_same_gap_rule() -> None:
    clock = Clock(50.0)
    view = FleetView(gap_rule=RULE, clock=clock)
    _seen(view, _ev(1))
    view.mark_resync_sent("L1")
    _seen(view, _ev(5))
    assert view.resyncs_due() == [] and view.gap_resyncs() == []
    clock.now += 2.0
    assert view.gap_resyncs() == [("L1", "gap 2-4 for 2.0 s: resync sent")]
    clock.now += 30
    assert view.gap_resyncs() == [], "once per interval"
    for seq in (2, 3, 4):
        _seen(view, _ev(seq))
    assert view.acks_due() == {"L1": ledger.Ack("e1", 5)}
    clock.now += 100
    assert view.gap_resyncs() == []


BAD_BODIES = [
    ({"compartment": "C" * 70}, "compartment is not a printable string of at most 64"),
    ({"type": "t" * 65}, "type is not a printable string of 1-64 characters"),
    ({"ts": "2026\x00"}, "ts is not a printable string of at most 40"),
    ({"data": {"x": float("nan")}}, "not strict UTF-8 JSON"),
    ({"data": {"x": "\ud800"}}, "not strict UTF-8 JSON"),
]


@pytest.mark.parametrize(("bad", "why"), BAD_BODIES)
def test_a_bad_body_is_held_as_a_placeholder_and_acked(
    engine: Engine, bad: dict[str, Any], why: str
) -> None:
    ingest = Ingest(engine)
    body = _ev(5) | bad
    payload = json.dumps(body).encode()  # NaN and a lone surrogate as json.dumps writes them
    msgs = [evt("L1", s) for s in (1, 2, 3, 4)] + [Message("lockers/L1/evt/x", payload)]
    out = ingest.store([*msgs, evt("L1", 6)])
    assert out.acks == [Ack("L1", "e1", 6)], "the stream goes on past seq 5"
    assert (out.invalid, out.rejected, out.new_events) == (1, 0, 6)
    assert any(f"event seq 5 of epoch e1 is invalid ({why}" in r for r in out.rejections)
    again = ingest.store([Message("lockers/L1/evt/x", payload)])
    assert (again.duplicates, again.invalid, again.acks) == (1, 0, [Ack("L1", "e1", 6)])
    # a second bad event: the same open alarm, counted
    ingest.store([Message("lockers/L1/evt/x", json.dumps(body | {"seq": 7}).encode())])
    with engine.connect() as conn:
        held = conn.execute(select(db.events).where(db.events.c.seq == 5)).one()
        alarms = conn.execute(select(db.alarms)).all()
        reports = conn.execute(
            select(db.reports.c.detail).where(db.reports.c.kind == "invalid_event")
        ).scalars()
        found = list(reports)
        parcels = conn.execute(select(db.parcels)).all()
    assert (held.type, held.compartment, held.parcel) == ("invalid_event", None, None)
    assert held.body["data"]["problem"].startswith(why)
    raw = held.body["data"]["raw"]
    assert raw.isascii() and raw.isprintable() and len(raw) <= ledger.RAW_KEPT
    opened = [(a.kind, a.state, a._mapping["count"]) for a in alarms]
    assert opened == [("invalid_event", "open", 2)], "one alarm, counted"
    assert [d["seq"] for d in found] == [5, 7]
    assert parcels == []


def test_unplaceable_events_are_still_dropped_and_counted(engine: Engine) -> None:
    out = Ingest(engine).store(
        [
            Message("lockers/L1/evt/x", json.dumps(_ev(0)).encode()),
            Message("lockers/L1/evt/x", json.dumps(_ev(1, epoch="")).encode()),
            Message("lockers/L1/evt/x", b"[1]"),
        ]
    )
    assert (out.rejected, out.invalid, out.new_events) == (3, 0, 0)


def test_an_oversized_event_is_placed_and_a_suspect_one_too(engine: Engine) -> None:
    ingest = Ingest(engine)
    big = json.dumps(_ev(1, data={"x": "y" * 70_000})).encode()
    out = ingest.store([Message("lockers/L1/evt/x", big)])
    assert out.acks == [Ack("L1", "e1", 1)] and out.invalid == 1
    # the worker's last resort for a message the store failed on for a reason of its own
    out = ingest.store([evt("L1", 2)], suspect="the store failed on it (KeyError)")
    assert out.acks == [Ack("L1", "e1", 2)] and out.invalid == 1
    with engine.connect() as conn:
        bodies = conn.execute(select(db.events.c.body).order_by(db.events.c.seq)).scalars().all()
    assert bodies[0]["data"]["problem"] == f"oversized ({len(big)} bytes)"
    assert len(bodies[0]["data"]["raw"]) == ledger.RAW_KEPT
    assert bodies[1]["data"]["problem"] == "the store failed on it (KeyError)"


def test_lockerctl_watch_holds_a_bad_body_and_its_log_survives_it(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    view = FleetView(log=log)
    for seq in (1, 2, 3, 4):
        _seen(view, _ev(seq))
    lines = _seen(view, _ev(5, compartment="C" * 70))
    assert lines[0].startswith("L1: event seq 5 of epoch e1 is invalid (compartment")
    # a lone surrogate: no UTF-8 log can hold it (the watch's thread died on it)
    lines = _seen(view, _ev(6, data={"x": "\ud800"}))
    assert lines[0].startswith("L1: event seq 6 of epoch e1 is invalid (not strict UTF-8")
    _seen(view, _ev(7))
    assert view.acks_due() == {"L1": ledger.Ack("e1", 7)}
    assert view.lockers["L1"].invalid == 2
    _seen(view, _ev(0))
    assert view.lockers["L1"].malformed == 1
    log.close()
    reloaded = FleetView(log=EventLog(tmp_path / "events"))
    assert reloaded.lockers["L1"].stream is not None
    assert reloaded.lockers["L1"].stream.contiguous == 7, "the log holds the placeholders"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("", 2.0), ("gap_resync_s = 5", 5.0), ("gap_resync_s = 0.5", 0.5)],
)
def test_watch_and_service_read_the_same_gap_resync_s(
    tmp_path: Path, setting: str, expected: float
) -> None:
    d = _fleet(tmp_path, setting)
    assert provision.Fleet.load(d).gap_resync_s == expected
    assert ServiceConfig.load(d).settings.gap_resync_s == expected


@pytest.mark.parametrize("bad", ["0", "0.05", "3601", "inf", "nan", '"2"', "true"])
def test_a_gap_resync_s_out_of_range_is_refused_with_its_key(tmp_path: Path, bad: str) -> None:
    d = _fleet(tmp_path, f"gap_resync_s = {bad}")
    with pytest.raises(provision.ProvisionError, match="gap_resync_s: expected seconds in"):
        provision.Fleet.load(d)
    with pytest.raises(ConfigError, match="gap_resync_s"):
        ServiceConfig.load(d)


def _fleet(tmp: Path, setting: str) -> Path:
    d = tmp / "fleet"
    provision.provision_fleet(d, "t", "127.0.0.1", broker_port=8883, run_as_root=os.geteuid() == 0)
    with (d / "fleet.toml").open("a") as f:
        f.write("\n" + setting + "\n")
    return d


def test_the_watch_thread_outlives_a_fault_and_json_mode_takes_its_own_lines() -> None:
    client = FleetClient("127.0.0.1", 1, client_id="t")  # never connected: no acks sent
    shown: list[str] = []

    def on_line(text: str) -> None:
        if "#2 " in text:
            raise RuntimeError("a terminal that cannot print this")
        shown.append(text)

    watcher = Watcher(client, FleetView(), on_line, ack=False)
    runner = threading.Thread(target=watcher.run, daemon=True)
    runner.start()
    try:
        for seq in (1, 2, 3):
            for listener in client._listeners:  # as paho's thread hands a message over
                listener(Incoming("lockers/L1/evt/x", json.dumps(_ev(seq)).encode(), False, 1))
        wait_for(lambda: any("#3 " in line for line in shown), 5, what="the event after it")
    finally:
        watcher.stop()
        runner.join(5)
    assert len(watcher.errors) == 1 and "RuntimeError" in watcher.errors[0]
    assert watch_json_line("L1: gap 2-4 for 2.0 s: resync sent") == {
        "notes": ["L1: gap 2-4 for 2.0 s: resync sent"]
    }
    assert watch_json_line('{"locker":"L1"}') == {"locker": "L1"}
