"""Issue 10, per-input work: deadlines remembered per table version must still fire on time.

``locker.cabinet.domain.earliest`` lets an input skip the expiry scans while no deadline of a
table has passed; these tests hold that every kind of deadline still acts exactly when due,
after unrelated inputs and after the tables changed."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import MappingProxyType

from locker.cabinet.domain import machine
from locker.cabinet.domain.earliest import earliest, minimum
from locker.cabinet.domain.model import Credential, Credentials, Step
from locker.cabinet.store import Store
from locker.ports import LineScanned
from tests.domain import SIZES, T0, Sim, command, only


def test_a_retrieval_code_is_forgotten_when_due_among_many_others() -> None:
    sim = Sim()
    cid, _ = sim.deposit("P1")
    sim.advance(72 * 3600 + 1)  # pickup window over: expired, waiting for the courier
    for i in range(50):
        sim.feed(
            command(
                "retrieve",
                sim.now,
                parcel="P1",
                code_tag=sim.keys.tag(f"{20000000 + i}"),
                valid_until=int(sim.now + 1000 + i),
            )
        )
    assert len(sim.state.credentials) >= 50
    sim.type_code("99999999")  # unrelated inputs in between
    sim.advance(999)
    assert len(sim.state.credentials) >= 50
    sim.advance(2)  # past the first one's valid_until (strictly)
    assert sim.keys.tag("20000000") not in sim.state.credentials
    assert sim.keys.tag("20000001") in sim.state.credentials
    sim.advance(100)
    assert not any(sim.keys.tag(f"{20000000 + i}") in sim.state.credentials for i in range(50))
    assert sim.state.compartments[cid].parcel == "P1"


def test_parcel_windows_still_close_after_the_tables_changed() -> None:
    sim = Sim()
    sim.assign("P1")  # drop-off window: 48 h
    sim.advance(3600)
    sim.assign("P2")  # a new parcels table: its deadlines are computed again
    assert machine.next_deadline(sim.state, sim.rules) == T0 + 48 * 3600
    sim.advance(47 * 3600)
    assert [e.parcel for e in only(sim.events, "assignment_cancelled")] == ["P1"]
    sim.advance(3600)
    assert [e.parcel for e in only(sim.events, "assignment_cancelled")] == ["P1", "P2"]


def test_a_qr_scan_finds_its_parcel_among_many_and_after_changes() -> None:
    sim = Sim()
    cid, _ = sim.deposit("P1")
    sim.assign("P2")
    token = sim.keys.token("P1", 1, T0 - 60, T0 + 86400)
    sim.feed(LineScanned(token))
    assert sim.unlocks()[-1] == cid


def test_earliest_remembers_frozen_tables_only() -> None:
    calls = []

    def compute(t: dict[str, float]) -> float:
        calls.append(1)
        return minimum(t.values())

    frozen = MappingProxyType({"a": 5.0, "b": 3.0})
    assert earliest("t", (frozen,), lambda: compute(dict(frozen))) == 3.0
    assert earliest("t", (frozen,), lambda: compute(dict(frozen))) == 3.0
    assert len(calls) == 1
    editing = {"a": 5.0}
    assert earliest("t", (editing,), lambda: compute(editing)) == 5.0
    editing["b"] = 1.0
    assert earliest("t", (editing,), lambda: compute(editing)) == 1.0  # never remembered
    assert earliest("t", (MappingProxyType({}),), lambda: compute({})) == math.inf


def test_the_store_writes_the_touched_rows_and_without_them_every_changed_row(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "locker.db", boot_id="b")
    base = store.load(SIZES)
    creds = {
        f"{i:064x}": Credential(f"{i:064x}", "P", Step.RETRIEVE, 0.0, None, True) for i in range(3)
    }
    full = dataclasses.replace(base, credentials=Credentials(creds))
    store.commit(base, full, (), T0, True)  # touched unknown: every new row
    assert len(store.load(SIZES).credentials) == 0  # (their parcel does not exist: not loaded)
    rows = store._con.execute("SELECT count(*) FROM credentials").fetchone()[0]
    assert rows == 3
    one = f"{1:064x}"
    changed = dict(creds)
    changed[one] = dataclasses.replace(creds[one], armed=False)
    del changed[f"{2:064x}"]
    after = dataclasses.replace(full, credentials=Credentials(changed))
    store.commit(full, after, (), T0, True, touched={"credentials": {one, f"{2:064x}"}})
    table = {r[0]: r for r in store._con.execute("SELECT tag, armed FROM credentials")}
    assert set(table) == {f"{0:064x}", one}
    assert table[one][1] == 0
    store.close()
