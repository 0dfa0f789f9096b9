"""Issue 10: the persistent tables behind credentials, token ids and command ids.

``Table`` and ``Deadlines`` are checked against a plain dict and a sorted list under random
operations (small shard and chunk sizes, so splitting, merging and regrowing all happen),
with every old version kept and checked unchanged; then what the machine and the store rely
on: a change shares all but one shard, expiry comes from the index, the old schema's rows are
converted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locker.cabinet.domain import table
from locker.cabinet.domain.model import CommandRecord, Credential, Credentials, Step, Tokens
from locker.cabinet.domain.table import Deadlines, Table
from locker.cabinet.rows import jsonable
from locker.cabinet.store import _MIGRATIONS, SCHEMA_VERSION, Store
from tests.domain import SIZES, Sim, command


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(table, "SHARD_ROWS", 4)
    monkeypatch.setattr(table, "CHUNK", 4)
    yield


class Due(Table[int]):
    """A table whose rows are their own deadline (negative: none) and grouped by parity."""

    __slots__ = ()
    indexed_deadline = True
    indexed_group = True

    @staticmethod
    def deadline_of(value: int) -> float:
        return float(value) if value >= 0 else math.inf

    @staticmethod
    def group_of(value: int) -> str:
        return "even" if value % 2 == 0 else "odd"


keys = st.sampled_from([f"k{i}" for i in range(40)])
ops = st.lists(
    st.tuples(st.booleans(), keys, st.integers(min_value=-3, max_value=30)), max_size=120
)


def _check(t: Due, model: dict[str, int]) -> None:
    assert dict(t.items()) == model and len(t) == len(model) and t == model
    for k in (f"k{i}" for i in range(40)):
        assert (k in t) == (k in model) and t.get(k) == model.get(k)
    due = sorted((v, k) for k, v in model.items() if v >= 0)
    assert t.earliest() == (due[0][0] if due else math.inf)
    for now in (0, 5, 17, 31):
        assert t.due(now) == [k for v, k in due if v < now]
    for g in ("even", "odd"):
        want = {k for k, v in model.items() if (v % 2 == 0) == (g == "even")}
        assert set(t.group(g)) == want


@settings(max_examples=150, deadline=None)
@given(ops)
def test_a_table_behaves_as_a_dict_and_every_old_version_stays_as_it_was(
    steps: list[tuple[bool, str, int]],
) -> None:
    versions: list[tuple[Due, dict[str, int]]] = [(Due(), {})]
    for put, key, value in steps:
        t, model = versions[-1]
        model = dict(model)
        if put:
            t = t.set(key, value)
            model[key] = value
        else:
            t = t.drop(key)
            model.pop(key, None)
        versions.append((t, model))
    for t, model in versions:
        _check(t, model)
    t, model = versions[-1]
    _check(Due(model), model)  # built at once (as loaded) equals built step by step


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.sampled_from("abc"))))
def test_deadlines_stay_sorted_through_splits_and_merges(
    steps: list[tuple[bool, int, str]],
) -> None:
    d, model = Deadlines(), set[tuple[float, str]]()
    for add, when, key in steps:
        item = (float(when), key)
        d = d.add(item) if add else d.remove(item)
        (model.add if add else model.discard)(item)
        assert list(d) == sorted(model) and len(d) == len(model)
        assert d.first() == (min(model)[0] if model else math.inf)
        # chunks stay at least half full (so the tuple of chunks stays short)
        if len(d._chunks) > 1:
            assert all(len(c) >= table.CHUNK // 2 for c in d._chunks)
    built = Deadlines(model)
    assert list(built) == sorted(model) and built.first() == d.first()
    if len(built._chunks) > 1:
        assert all(len(c) >= table.CHUNK // 2 for c in built._chunks)


def test_a_change_copies_one_shard_and_shares_the_others() -> None:
    t = Tokens({f"{i:032x}": float(i) for i in range(200)})
    assert len(t._shards) > 1
    changed = t.set(f"{7:032x}", 1e9)
    assert sum(a is not b for a, b in zip(t._shards, changed._shards, strict=True)) == 1
    assert t[f"{7:032x}"] == 7.0 and changed[f"{7:032x}"] == 1e9


def test_a_grant_among_many_codes_shares_the_credentials_table() -> None:
    sim = Sim()
    cid, pickup = sim.deposit("P1")
    many = {
        f"{i:064x}": Credential(f"{i:064x}", "P1", Step.RETRIEVE, 0.0, None, True)
        for i in range(300)
    }
    sim.state = dataclasses.replace(
        sim.state, credentials=Credentials({**sim.state.credentials, **many})
    )
    before = sim.state.credentials
    sim.type_code(pickup)
    assert sim.unlocks()[-1] == cid
    after = sim.state.credentials
    assert sum(a is not b for a, b in zip(before._shards, after._shards, strict=True)) == 1
    assert after[sim.keys.tag(pickup)].armed is False


def test_retrieval_codes_expire_from_the_index() -> None:
    sim = Sim()
    sim.deposit("P1")
    sim.advance(72 * 3600 + 1)
    tags = [sim.keys.tag(f"{30000000 + i}") for i in range(20)]
    for i, tag in enumerate(tags):
        sim.feed(
            command(
                "retrieve",
                sim.now,
                parcel="P1",
                code_tag=tag,
                valid_until=int(sim.now + 100 + 10 * i),
            )
        )
    assert sim.state.credentials.earliest() == pytest.approx(sim.now + 100, abs=25)
    sim.advance(150)
    left = [t for t in tags if t in sim.state.credentials]
    assert 0 < len(left) < len(tags)
    assert left == tags[len(tags) - len(left) :]  # the earliest went first


def test_schema_1_credentials_are_converted_not_lost(tmp_path: Path) -> None:
    db = tmp_path / "locker.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(f"BEGIN;{_MIGRATIONS[1]}PRAGMA user_version=1;COMMIT;")
    parcel = {
        "id": "P1",
        "kind": "delivery",
        "size": "S",
        "compartment": next(iter(SIZES)),
        "status": "deposited",
        "dropoff_until": 1.0,
        "pickup_hours": 72,
        "pickup_until": 5e9,
        "deposited_at": 2.0,
    }
    con.execute("INSERT INTO parcels VALUES (?, ?)", ("P1", json.dumps(parcel)))
    rows = [
        {"tag": "t1", "parcel": "P1", "step": "pickup", "valid_from": 2.0, "valid_until": 5e9,
         "armed": True},
        {"tag": "t2", "parcel": "P1", "step": "retrieve", "valid_from": 3.0, "valid_until": None,
         "armed": False},
    ]  # fmt: skip
    for r in rows:
        con.execute("INSERT INTO credentials VALUES (?, ?)", (r["tag"], json.dumps(r)))
    con.close()
    store = Store(db, boot_id="b")
    assert store._con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    creds = store.load(SIZES).credentials
    assert creds == {
        "t1": Credential("t1", "P1", Step.PICKUP, 2.0, 5e9, True),
        "t2": Credential("t2", "P1", Step.RETRIEVE, 3.0, None, False),
    }
    assert set(creds.group("P1")) == {"t1", "t2"}
    store.close()


def test_schema_2_tables_are_rebuilt_without_rowid_and_keep_every_row(tmp_path: Path) -> None:
    """Schema 3 (issue 10): the keyed tables become WITHOUT ROWID (one b-tree each, so a row
    changed writes one page, not two); every row of every table survives the rebuild."""
    db = tmp_path / "locker.db"
    store = Store(db, boot_id="b")
    state = store.load(SIZES)
    cid = next(iter(SIZES))
    cred = Credential("t1", "P1", Step.PICKUP, 2.0, 5e9, True)
    parcel = {
        "id": "P1",
        "kind": "delivery",
        "size": "S",
        "compartment": cid,
        "status": "deposited",
        "dropoff_until": 1.0,
        "pickup_hours": 72,
        "pickup_until": 5e9,
        "deposited_at": 2.0,
    }
    store.close()
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(  # back to schema 2, as an older lockerd left it
        "BEGIN;DROP TABLE meta;DROP TABLE compartments;DROP TABLE parcels;DROP TABLE credentials;"
        "DROP TABLE tokens;DROP TABLE commands;DROP TABLE outbox;DROP TABLE spent;"
        f"{_MIGRATIONS[1]}"
        f"{_MIGRATIONS[2]}PRAGMA user_version=2;COMMIT;"
    )
    con.execute("INSERT INTO meta VALUES ('epoch', ?)", (json.dumps("e-1"),))
    con.execute("INSERT INTO parcels VALUES (?, ?)", ("P1", json.dumps(parcel)))
    con.execute("INSERT INTO credentials VALUES ('t1', 'P1', 'pickup', 2.0, 5e9, 1)")
    con.execute("INSERT INTO tokens VALUES ('ab', 5e9)")
    con.execute(
        "INSERT INTO commands VALUES ('cmd-1', 5e9, ?)",
        (json.dumps(jsonable(CommandRecord("cmd-1", 5e9, "done", {}, None))),),
    )
    con.close()
    store = Store(db, boot_id="b")
    assert store._con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    keyed = ("meta", "compartments", "parcels", "credentials", "tokens", "commands", "spent")
    for name in keyed:
        (sql,) = store._con.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        assert sql.rstrip().endswith("WITHOUT ROWID"), sql
    loaded = store.load(SIZES)
    assert store.epoch == "e-1"
    assert dict(loaded.credentials) == {"t1": cred}
    assert set(loaded.parcels) == {"P1"}
    assert set(loaded.tokens) == {"ab"}
    assert set(loaded.commands) == {"cmd-1"}
    assert set(loaded.compartments) == set(state.compartments)
    assert store._con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.close()
