"""Accessible allocation (DESIGN section 8): ``[[compartments]] accessible = true`` marks doors
within reach of a wheelchair user; ``assign`` with ``accessible: true`` picks only those."""

from __future__ import annotations

from typing import Any

from locker.cabinet.domain.model import ParcelStatus
from locker.contract import credentials as creds
from tests.domain import Sim, command

# SIZES: A1 S, A2 S, B1 M, B2 M, C1 L, D1 XL; A2 and C1 are within reach.
ACCESSIBLE = frozenset({"A2", "C1"})


def _assign(sim: Sim, parcel: str, size: str, **extra: Any) -> dict[str, Any]:
    tr = sim.feed(
        command(
            "assign",
            sim.now,
            parcel=parcel,
            kind="delivery",
            size=size,
            dropoff_tag=sim.keys.tag(creds.generate_code(8)),
            pickup_tag=sim.keys.tag(creds.generate_code(8)),
            **extra,
        )
    )
    return dict(tr.actions[-1].reply)  # type: ignore[union-attr]


def test_accessible_assign_picks_only_accessible_compartments() -> None:
    sim = Sim(accessible=ACCESSIBLE)
    assert _assign(sim, "P1", "S", accessible=True)["result"] == {"compartment": "A2"}
    assert _assign(sim, "P2", "S")["result"] == {"compartment": "A1"}  # plain: best fit
    # the next accessible one that fits an S is the L
    assert _assign(sim, "P3", "S", accessible=True)["result"] == {"compartment": "C1"}
    full = _assign(sim, "P4", "S", accessible=True)
    assert full["status"] == "rejected" and full["error"]["code"] == "no_compartment"
    assert "accessible" in full["error"]["message"]
    # a plain parcel still finds room elsewhere
    assert _assign(sim, "P5", "S")["result"] == {"compartment": "B1"}


def test_an_explicit_compartment_must_be_accessible_when_asked() -> None:
    sim = Sim(accessible=ACCESSIBLE)
    bad = _assign(sim, "P1", "S", accessible=True, compartment="A1")
    assert bad["status"] == "rejected" and bad["error"]["code"] == "no_compartment"
    assert _assign(sim, "P1", "S", accessible=True, compartment="A2")["status"] == "done"


def test_a_jammed_accessible_door_moves_its_parcel_to_another_accessible_one() -> None:
    sim = Sim(accessible=ACCESSIBLE)
    cid, drop, _ = sim.assign("P1", "S", accessible=True)
    assert cid == "A2"
    sim.type_code(drop)
    sim.advance(sim.rules.door_open_timeout_s + 1)  # the door never opened: a jam
    parcel = sim.state.parcels["P1"]
    assert parcel.compartment == "C1" and parcel.status is ParcelStatus.RESERVED
