"""Hypothesis stateful test: random sequences of key presses, scans, door movements, clock
jumps, commands and restarts against the real controller, store (SQLite file) and GPIO bank
(gpiozero MockFactory pins), checking the safety invariants after every step:

- at most one coil is ever energised, and every pulse stays within the cap;
- every pulse was preceded by a committed unlock (read back through another connection);
- no credential opens twice: a (parcel, step) is granted again only after a re-arm event;
- ``seq`` in the outbox is strictly increasing with no gaps.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hardware.gpio.locks import GpioCompartment, GpioLockBank
from locker.cabinet.controller import Controller
from locker.cabinet.domain.model import Compartment
from locker.cabinet.store import Store
from locker.ports import DoorState, EventSink, KeyPressed, LineScanned, LockBank
from tests.conftest import wait_for
from tests.domain import SIZES, T0, Keys, command, rules
from tests.test_lockbank_gpio import pulses_of

PULSE_S = 0.01
REST_S = 0.005
CAP_S = 2.0
LAYOUT = {cid: (5 + 2 * i, 6 + 2 * i) for i, cid in enumerate(SIZES)}  # lock pin, door pin
REARM_EVENTS = {"door_jammed", "deposit_empty", "item_left_behind", "hardware_fault"}


class CommitCheckingBank(LockBank):
    """Delegates to the real GPIO bank; before each pulse, checks through a second SQLite
    connection that the unlock is already committed."""

    def __init__(self, inner: GpioLockBank, db: Path) -> None:
        self.inner, self.db, self.name = inner, db, inner.name
        self.uncommitted: list[str] = []

    @property
    def compartments(self) -> tuple[str, ...]:
        return self.inner.compartments

    def start(self, sink: EventSink) -> None:
        self.inner.start(sink)

    def unlock(self, compartment: str) -> None:
        con = sqlite3.connect(self.db)
        row = con.execute("SELECT row FROM compartments WHERE id=?", (compartment,)).fetchone()
        con.close()
        raw = json.loads(row[0]) if row else {}
        if not (raw.get("pending") or raw.get("session")):
            self.uncommitted.append(compartment)
        self.inner.unlock(compartment)

    def doors(self) -> Mapping[str, DoorState]:
        return self.inner.doors()

    def close(self) -> None:
        self.inner.close()


class LockerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="stateful-"))
        self.factory = MockFactory()
        self.keys = Keys()
        self.wall, self.mono = T0, 0.0
        self.codes: list[str] = ["00000000"]  # a wrong code to start with
        self.tokens: list[str] = []
        self.parcels = 0
        self.uncommitted: list[str] = []
        self.ctl = self._controller()

    def _controller(self) -> Controller:
        bank = GpioLockBank(
            [GpioCompartment(c, lock, door, "low") for c, (lock, door) in LAYOUT.items()],
            pulse_s=PULSE_S,
            rest_s=REST_S,
            debounce_s=0.0,
            unstable_after_s=10.0,
            pin_factory=self.factory,
        )
        self.bank = CommitCheckingBank(bank, self.tmp / "l.db")
        ctl = Controller(
            rules=rules(self.keys, door_open_timeout_s=10.0),
            store=Store(self.tmp / "l.db", boot_id="b"),
            compartment_sizes=SIZES,
            banks=[self.bank],
            version="t",
            wall=lambda: self.wall,
            mono=lambda: self.mono,
        )
        ctl.start()
        self.ctl = ctl
        self._drain()
        return ctl

    def _drain(self) -> None:
        while self.ctl.step_once(0):
            pass

    def _settle_doors(self) -> None:
        def doors_agree() -> bool:
            self._drain()
            return all(agree(self.ctl.state.compartments[c], self.bank.doors()[c]) for c in LAYOUT)

        def agree(comp: Compartment, sensed: DoorState) -> bool:
            # a sensor the locker stopped trusting (stuck open) is UNKNOWN on purpose
            return comp.door is sensed or (comp.sensor_fault and comp.door is DoorState.UNKNOWN)

        wait_for(doors_agree, timeout=5, what="door events to reach the controller")

    def _settle_pulses(self) -> None:
        # Every unlock ends in exactly one UnlockResult; wait for the coils to be quiet.
        def quiet() -> bool:
            self._drain()
            return not any(self.factory.pin(lock).state for lock, _ in LAYOUT.values())

        wait_for(quiet, timeout=5, what="coils off")

    # --- rules ---------------------------------------------------------------------------

    @rule(size=st.sampled_from(["S", "M", "L", "XL"]))
    def assign(self, size: str) -> None:
        self.parcels += 1
        drop, pick = f"{self.parcels:04d}1111", f"{self.parcels:04d}2222"
        self.ctl.submit(
            command(
                "assign",
                self.wall,
                parcel=f"P{self.parcels}",
                kind="delivery",
                size=size,
                dropoff_tag=self.keys.tag(drop),
                pickup_tag=self.keys.tag(pick),
            )
        )
        self.codes += [drop, pick]
        self.tokens.append(
            self.keys.token(f"P{self.parcels}", 1, self.wall - 60, self.wall + 5 * 86400)
        )
        self._drain()

    @precondition(lambda self: self.codes)
    @rule(data=st.data())
    def type_code(self, data: st.DataObject) -> None:
        code = data.draw(st.sampled_from(self.codes))
        for k in code + "#":
            self.ctl.submit(KeyPressed(k))
        self._drain()
        self._settle_pulses()

    @rule(keys=st.text(alphabet="0123456789*#", max_size=20))
    def random_keys(self, keys: str) -> None:
        for k in keys:
            self.ctl.submit(KeyPressed(k))
        self._drain()
        self._settle_pulses()

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def scan(self, data: st.DataObject) -> None:
        self.ctl.submit(LineScanned(data.draw(st.sampled_from(self.tokens))))
        self._drain()
        self._settle_pulses()

    @rule(cid=st.sampled_from(list(LAYOUT)), opened=st.booleans())
    def door(self, cid: str, opened: bool) -> None:
        pin = self.factory.pin(LAYOUT[cid][1])
        if opened:
            pin.drive_high()  # pulled-up reed switch: high = open
        else:
            pin.drive_low()
        self._settle_doors()

    @rule(seconds=st.sampled_from([1, 5, 11, 130, 3600, 80 * 3600]))
    def advance(self, seconds: int) -> None:
        self.wall += seconds
        self.mono += seconds
        self._drain()
        self.ctl.step_once(0)
        self._settle_pulses()

    @rule()
    def clock_back(self) -> None:
        self.wall -= 86400  # NTP steps the clock back a day

    @rule(cid=st.sampled_from(list(LAYOUT)))
    def remote_open(self, cid: str) -> None:
        self.ctl.submit(command("open", self.wall, compartment=cid, reason="test"))
        self._drain()
        self._settle_pulses()

    @rule()
    def restart(self) -> None:
        self._settle_pulses()
        self.uncommitted += self.bank.uncommitted
        self.ctl.shutdown()
        self.ctl.store.close()
        self._controller()
        self._settle_doors()

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def one_coil_at_a_time_and_bounded(self) -> None:
        pulses = []
        for cid, (lock, _) in LAYOUT.items():
            pin = self.factory.pin(lock)
            # MockPin timestamps are deltas from the previous change; anchor them on the last
            # change's monotonic time so that pulses of different pins can be compared.
            origin = pin._last_change - sum(s.timestamp for s in pin.states)
            pulses += pulses_of(cid, pin, origin)
        pulses.sort(key=lambda p: p.on)
        for a, b in itertools.pairwise(pulses):
            assert a.off is not None and b.on >= a.off, f"two coils energised at once: {a} {b}"
        for p in pulses:
            assert p.off is None or p.off - p.on <= CAP_S

    @invariant()
    def unlocks_were_committed_first(self) -> None:
        assert not self.uncommitted and not self.bank.uncommitted

    @invariant()
    def no_credential_opens_twice(self) -> None:
        events = self.ctl.store.outbox()
        granted = Counter(
            (e.get("parcel"), e["data"].get("step"))
            for e in events
            if e["type"] == "access_granted"
        )
        rearmed: Counter[tuple[Any, Any]] = Counter()
        for e in events:
            if e["type"] in REARM_EVENTS and e.get("parcel"):
                step = e["data"].get("purpose") or e["data"].get("step") or "dropoff"
                rearmed[(e["parcel"], step)] += 1
        for key, n in granted.items():
            assert n <= 1 + rearmed[key], f"{key} granted {n} times"

    @invariant()
    def seq_has_no_gaps(self) -> None:
        seqs = [e["seq"] for e in self.ctl.store.outbox()]
        assert seqs == list(range(1, len(seqs) + 1))

    def teardown(self) -> None:
        self.ctl.shutdown()
        self.ctl.store.close()
        self.factory.reset()


LockerMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(600)
class TestLocker(LockerMachine.TestCase):  # type: ignore[misc,valid-type]
    pass
