"""The fleet service on PostgreSQL: migrations, and two workers sharing one subscription.

Three light lockers (paho clients with their own certificates, speaking the contract) publish
events with repeats and out of order; two service workers, each with its own MQTT identity,
share ``$share/fleet/...``. Every event is stored exactly once, both workers took part, and
each locker is acknowledged up to its last event (acks computed from the database).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from locker.fleet.service import db
from locker.fleet.service.ingest import Ack, Ingest, Message
from locker.sim.broker import Broker
from tests.conftest import wait_for
from tests.fleet_rig import WORKER_2, LightLocker, fleet_dir, service_broker, start_service
from tests.pg import Postgres, postgres

_ = (service_broker, postgres)
LOCKERS = ("LIGHT-1", "LIGHT-2", "LIGHT-3")
N = 150


def test_postgres_schema_matches_and_ingest_is_idempotent(postgres: Postgres) -> None:
    url = postgres.create_database("schema_check")
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
        ingest = Ingest(engine)
        body = {"v": 1, "epoch": "e", "seq": 1, "type": "started"}
        msg = Message("lockers/L/evt/started", json.dumps(body).encode())
        assert ingest.store([msg, msg]).acks == [Ack("L", "e", 1)]
        assert ingest.store([msg]).new_events == 0
    finally:
        engine.dispose()


def test_the_contracts_largest_values_fit_postgres_and_larger_ones_never_reach_it(
    postgres: Postgres,
) -> None:
    url = postgres.create_database("range_check")
    db.upgrade(url)
    engine = db.make_engine(url)
    top = 2**63 - 1
    try:
        ingest = Ingest(engine)
        state = {"v": 1, "epoch": "e", "rev": top, "last_seq": top, "outbox_depth": top}
        longest = {"v": 1, "epoch": "e", "seq": top, "type": "t" * 64, "ts": "9" * 40}
        longest |= {"compartment": "C" * 64, "parcel": "P" * 128}
        out = ingest.store(
            [
                Message("lockers/L/state", json.dumps(state).encode(), retain=True),
                Message("lockers/L/evt/t", json.dumps(longest).encode()),
            ]
        )
        assert (out.rejected, out.new_events) == (0, 1)
        too_big = [
            state | {"outbox_depth": top + 1},
            state | {"rev": 10**23},
            {"v": 1, "epoch": "e", "seq": top + 1, "type": "t"},
            longest | {"ts": "9" * 41},
            longest | {"compartment": "C" * 65},
        ]
        msgs = [
            Message(f"lockers/L/{'evt/t' if 'seq' in doc else 'state'}", json.dumps(doc).encode())
            for doc in too_big
        ]
        out = ingest.store(msgs)
        # no valid place: rejected; a placed seq with a bad body is its placeholder, and
        # that seq is held already: a duplicate
        assert (out.rejected, out.duplicates, out.new_events) == (3, 2, 0)
        with engine.connect() as conn:
            row = conn.execute(select(db.lockers)).one()
        assert (row.state_rev, row.last_seq, row.outbox_depth) == (top, top, top)
    finally:
        engine.dispose()


def test_two_workers_share_the_stream_and_store_every_event_once(
    tmp_path: Path, service_broker: Broker, postgres: Postgres
) -> None:
    url = postgres.create_database("two_workers")
    d = fleet_dir(tmp_path, service_broker)
    one = start_service(d, db_url=url)
    two = start_service(d, db_url=url, client=WORKER_2)
    lights = [LightLocker(service_broker, name, epoch="pg") for name in LOCKERS]
    try:
        order = list(range(1, N + 1))
        order = order[::2] + order[1::2] + order[: N // 3]  # out of order, a third repeated
        threads = [threading.Thread(target=light.publish, args=(order,)) for light in lights]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wait_for(lambda: all(x.acked == N for x in lights), 30, what="every locker acked to N")
        with one.engine.connect() as conn:
            rows = conn.execute(
                select(db.events.c.locker, func.count(), func.count(func.distinct(db.events.c.seq)))
                .group_by(db.events.c.locker)
                .order_by(db.events.c.locker)
            ).all()
        assert [tuple(r) for r in rows] == [(name, N, N) for name in LOCKERS]
        assert one.worker.new_events > 0 and two.worker.new_events > 0, "both workers worked"
        assert one.worker.new_events + two.worker.new_events == N * len(LOCKERS)
    finally:
        for light in lights:
            light.close()
        one.stop()
        two.stop()
