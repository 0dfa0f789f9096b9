"""The fleet service's retention (``[retention] days``): history older than the limit is
deleted in batches from the oldest row, what is current is kept, and a stream's acks go on
across the prune; on SQLite and on PostgreSQL (Debian's, run by tests/pg.py). Also the
housekeeping thread that runs it: a job that fails is logged and the others still run."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, Table, func, insert, select

from locker.fleet import provision
from locker.fleet.service import alarms, db, retention
from locker.fleet.service.config import ConfigError, ServiceConfig
from locker.fleet.service.db import alarms as alarms_table
from locker.fleet.service.db import deliveries, events, parcel_history
from locker.fleet.service.housekeeping import Housekeeper
from locker.fleet.service.ingest import Ack, Ingest, Message
from tests.pg import Postgres, postgres

_ = postgres
DAY = 86_400.0
NOW = 1_900_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'f.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.create_database(f"retention_{tmp_path.name[-12:].lower().replace('-', '_')}")
    db.upgrade(url)
    e = db.make_engine(url)
    yield e
    e.dispose()


def _event(seq: int) -> Message:
    body = {"v": 1, "epoch": "e", "seq": seq, "type": "door_opened", "compartment": "A1"}
    return Message(f"lockers/L1/evt/{body['type']}", json.dumps(body).encode())


def _count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_history_older_than_the_limit_goes_and_the_stream_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 5)  # several batches, and the walk's stop
    old = Ingest(engine, clock=lambda: NOW - 40 * DAY)
    for seq in range(1, 13):
        old.store([_event(seq)])
    new = Ingest(engine, clock=lambda: NOW - 1 * DAY)
    assert new.store([_event(13), _event(14)]).acks == [Ack("L1", "e", 14)]
    with engine.begin() as conn:
        rules = alarms.Rules()
        for kind, at in (("door_forced", NOW - 50 * DAY), ("door_jammed", NOW - 60 * DAY)):
            alarms.raise_alarm(conn, rules, "L1", kind, "A1", {}, at)
        acked = conn.execute(select(alarms_table.c.id).where(alarms_table.c.kind == "door_jammed"))
        alarms.acknowledge(conn, acked.scalar_one(), "op", "seen", NOW - 59 * DAY)
        for state in ("sent", "pending"):
            conn.execute(
                insert(deliveries).values(
                    channel="webhook", target=0, idempotency_key=state, payload={},
                    state=state, attempts=1, next_at=NOW - 45 * DAY,
                )
            )  # fmt: skip
        conn.execute(
            insert(parcel_history).values(
                parcel="P1", at=NOW - 45 * DAY, source="api", what="issued", detail={}
            )
        )
    assert retention.prune(engine, 0, NOW) == {}  # 0 keeps everything
    counts = retention.prune(engine, 30, NOW)
    assert counts["events"] == 12
    assert counts["alarms"] == 1  # the acked one; the open one stays however old
    assert counts["deliveries"] == 1  # the sent one; the pending one stays
    assert counts["parcel_history"] == 1
    with engine.connect() as conn:
        kept = sorted(conn.execute(select(events.c.seq)).scalars())
        open_alarms = conn.execute(select(alarms_table.c.kind)).scalars().all()
        pending = conn.execute(select(deliveries.c.state)).scalars().all()
    assert kept == [13, 14]
    assert open_alarms == ["door_forced"] and pending == ["pending"]
    # the stream's bookkeeping survives its history: the next event is acked after 14
    assert new.store([_event(15)]).acks == [Ack("L1", "e", 15)]
    assert retention.prune(engine, 30, NOW)["events"] == 0
    assert _count(engine, events) == 3


def test_retention_days_is_validated_with_its_key(tmp_path: Path) -> None:
    d = tmp_path / "fleet"
    provision.provision_fleet(d, "t", "broker.example")
    with (d / "fleet.toml").open("a") as f:
        f.write("\n[retention]\ndays = -1\n")
    with pytest.raises(ConfigError) as err:
        ServiceConfig.load(d)
    assert "retention.days" in str(err.value)


def test_a_failing_job_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("disk gone")

    keeper = Housekeeper([("broken", broken), ("fine", lambda: ran.append("fine"))])
    with caplog.at_level(logging.ERROR, logger="locker.fleet.service.housekeeping"):
        keeper.run_once()
        keeper.run_once()
    assert ran == ["fine", "fine"] and keeper.rounds == 2
    assert sum("housekeeping job broken failed" in r.getMessage() for r in caplog.records) == 2
