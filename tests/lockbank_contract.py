"""One contract suite for every ``LockBank`` implementation (python-can's back2back idea).

The suite never touches a pin or a serial port: it drives a *rig* that knows how to move the
doors of one bank and how to observe its coils. Each implementation gets a test module with a
class that subclasses :class:`LockBankContract` and provides a ``rig`` fixture::

    class TestGpioBank(LockBankContract):
        @pytest.fixture
        def rig(self, mock_factory) -> Iterator[BankRig]:
            rig = GpioRig(...)
            yield rig
            rig.bank.close()

Rig protocol (see :class:`BankRig`):

- ``bank``: a freshly built bank, **not started**, with at least two compartments, every door
  closed. The fixture closes it afterwards (``close`` is idempotent, tests may close it too).
- ``open_door(c)`` / ``close_door(c)``: move the door sensor of compartment ``c`` (a pin level, an
  emulator's lock bit) at once. Valid before ``start`` as well, so a test can set the initial
  state that ``start`` must report.
- ``coil_log()``: every energisation observed so far, oldest first, as :class:`CoilPulse` with
  times in seconds on one clock common to all coils of the bank. ``off`` is None while the coil
  is still on. A board that pulses its coil itself reports ``on`` = when the unlock frame arrived
  and ``off`` = ``on`` + the board's own pulse length.
- ``max_pulse_s``: the longest one energisation may last as seen through ``coil_log``,
  measurement tolerance included.
- ``rest_s``: the minimum time the bank promises between the end of one pulse and the start of
  the next (0 if it promises none).
- ``timing_tolerance_s``: slack for clock granularity when comparing ``rest_s``.
- ``event_timeout_s``: how long a door change may take to be reported (debounce, poll period,
  a slow CI machine). Be generous: every wait is on a condition, so it costs nothing when green.
- ``settle()``: return once every change made so far has had its chance to be reported (the
  debounce window has passed, or the board was polled again). Used before asserting that
  something was reported *only once*.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import pytest

from locker.ports import (
    DoorChanged,
    DoorState,
    HardwareEvent,
    HardwareUnavailable,
    LockBank,
    UnlockResult,
)
from tests.conftest import wait_for

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class CoilPulse:
    """One observed energisation of one coil (seconds, rig clock; ``off`` None while on)."""

    compartment: str
    on: float
    off: float | None


class BankRig(Protocol):
    """What a contract test needs from an implementation's test harness (module docstring)."""

    # read-only members: a plain attribute or a class constant satisfies them
    @property
    def bank(self) -> LockBank: ...

    @property
    def max_pulse_s(self) -> float: ...

    @property
    def rest_s(self) -> float: ...

    @property
    def timing_tolerance_s(self) -> float: ...

    @property
    def event_timeout_s(self) -> float: ...

    def open_door(self, compartment: str) -> None: ...

    def close_door(self, compartment: str) -> None: ...

    def coil_log(self) -> list[CoilPulse]: ...

    def settle(self) -> None: ...


class Recorder:
    """A thread-safe event sink that tests can wait on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[HardwareEvent] = []

    def __call__(self, event: HardwareEvent) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[HardwareEvent]:
        with self._lock:
            return list(self._events)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def doors(self, compartment: str) -> list[DoorState]:
        return [e.state for e in self.of(DoorChanged) if e.compartment == compartment]

    def wait_count(
        self, kind: type[E], count: int, timeout: float, where: Callable[[E], bool] = bool
    ) -> list[E]:
        """Wait until at least ``count`` events of ``kind`` matching ``where`` arrived."""

        def matching() -> list[E]:
            return [e for e in self.of(kind) if where(e)]

        wait_for(lambda: len(matching()) >= count, timeout, what=f"{count} x {kind.__name__}")
        return matching()


def _finished(rig: BankRig, count: int) -> list[CoilPulse]:
    """Wait until ``count`` pulses were observed and have all ended; return them by start."""
    timeout = rig.event_timeout_s + count * (rig.max_pulse_s + rig.rest_s)

    def done() -> bool:
        log = rig.coil_log()
        return len(log) >= count and all(p.off is not None for p in log)

    wait_for(done, timeout, what=f"{count} finished coil pulse(s)")
    return sorted(rig.coil_log(), key=lambda p: p.on)


def _duration(pulse: CoilPulse) -> float:
    assert pulse.off is not None
    return pulse.off - pulse.on


class LockBankContract:
    """The tests every ``LockBank`` must pass. Subclasses provide the ``rig`` fixture."""

    # -- start and doors ----------------------------------------------------------------------

    @pytest.mark.timeout(30)
    def test_start_reports_every_door_once_before_returning(self, rig: BankRig) -> None:
        bank = rig.bank
        first, *others = bank.compartments
        assert others, "the rig must build a bank with at least two compartments"
        rig.open_door(first)
        rec = Recorder()
        bank.start(rec)
        # "before returning": no waiting here
        reported = {e.compartment: e.state for e in rec.of(DoorChanged)}
        assert reported == {first: DoorState.OPEN} | {c: DoorState.CLOSED for c in others}
        rig.settle()
        assert len(rec.of(DoorChanged)) == len(bank.compartments)
        assert dict(bank.doors()) == reported

    @pytest.mark.timeout(30)
    def test_door_change_reported_once_each(self, rig: BankRig) -> None:
        bank = rig.bank
        target = bank.compartments[-1]
        rec = Recorder()
        bank.start(rec)
        rig.open_door(target)
        rec.wait_count(
            DoorChanged,
            1,
            rig.event_timeout_s,
            lambda e: e.compartment == target and e.state is DoorState.OPEN,
        )
        assert bank.doors()[target] is DoorState.OPEN
        rig.close_door(target)
        wait_for(
            lambda: rec.doors(target) == [DoorState.CLOSED, DoorState.OPEN, DoorState.CLOSED],
            rig.event_timeout_s,
            what="door closed again",
        )
        rig.settle()
        assert rec.doors(target) == [DoorState.CLOSED, DoorState.OPEN, DoorState.CLOSED]
        assert bank.doors()[target] is DoorState.CLOSED
        # the other doors did not move and so were reported only at start
        for c in bank.compartments[:-1]:
            assert rec.doors(c) == [DoorState.CLOSED]

    # -- unlocking ----------------------------------------------------------------------------

    @pytest.mark.timeout(30)
    def test_nothing_energised_at_start(self, rig: BankRig) -> None:
        rig.bank.start(Recorder())
        rig.settle()
        assert rig.coil_log() == []

    @pytest.mark.timeout(30)
    def test_unlock_gives_one_result_and_one_bounded_pulse(self, rig: BankRig) -> None:
        bank = rig.bank
        target = bank.compartments[0]
        rec = Recorder()
        bank.start(rec)
        bank.unlock(target)
        results = rec.wait_count(UnlockResult, 1, rig.event_timeout_s + rig.max_pulse_s)
        assert results == [UnlockResult(target, sent=True, detail=results[0].detail)]
        (pulse,) = _finished(rig, 1)
        assert pulse.compartment == target
        assert 0 < _duration(pulse) <= rig.max_pulse_s
        rig.settle()
        assert len(rec.of(UnlockResult)) == 1
        assert len(rig.coil_log()) == 1

    @pytest.mark.timeout(30)
    def test_back_to_back_unlocks_never_overlap(self, rig: BankRig) -> None:
        bank = rig.bank
        a, b = bank.compartments[0], bank.compartments[1]
        rec = Recorder()
        bank.start(rec)
        bank.unlock(a)
        bank.unlock(b)
        bank.unlock(a)
        timeout = rig.event_timeout_s + 3 * (rig.max_pulse_s + rig.rest_s)
        results = rec.wait_count(UnlockResult, 3, timeout)
        assert sorted(r.compartment for r in results) == sorted([a, b, a])
        assert all(r.sent for r in results)
        pulses = _finished(rig, 3)
        assert [p.compartment for p in pulses] == [a, b, a]
        for earlier, later in itertools.pairwise(pulses):
            assert earlier.off is not None
            assert later.on >= earlier.off + rig.rest_s - rig.timing_tolerance_s
        assert all(_duration(p) <= rig.max_pulse_s for p in pulses)

    @pytest.mark.timeout(30)
    def test_unlock_of_unknown_compartment_is_refused(self, rig: BankRig) -> None:
        bank = rig.bank
        rec = Recorder()
        bank.start(rec)
        unknown = "no-such-" + "-".join(bank.compartments)
        with pytest.raises((KeyError, HardwareUnavailable)):
            bank.unlock(unknown)
        rig.settle()
        assert rec.of(UnlockResult) == []
        assert rig.coil_log() == []

    # -- closing ------------------------------------------------------------------------------

    @pytest.mark.timeout(30)
    def test_close_is_idempotent_and_leaves_nothing_on(self, rig: BankRig) -> None:
        bank = rig.bank
        bank.start(Recorder())
        bank.close()
        bank.close()
        assert all(p.off is not None for p in rig.coil_log())

    @pytest.mark.timeout(30)
    def test_close_during_a_pulse_ends_every_request(self, rig: BankRig) -> None:
        bank = rig.bank
        a, b = bank.compartments[0], bank.compartments[1]
        rec = Recorder()
        bank.start(rec)
        bank.unlock(a)
        bank.unlock(b)
        wait_for(rig.coil_log, rig.event_timeout_s, what="first pulse started")
        bank.close()
        wait_for(
            lambda: all(p.off is not None for p in rig.coil_log()),
            rig.max_pulse_s + rig.timing_tolerance_s,
            what="every coil off after close",
        )
        rec.wait_count(UnlockResult, 2, rig.event_timeout_s)
        rig.settle()
        results = rec.of(UnlockResult)
        assert sorted(r.compartment for r in results) == sorted([a, b])
        # the first one started, so it counts as sent; nothing may be retried later
        assert any(r.compartment == a and r.sent for r in results)
        assert len(rig.coil_log()) <= 2

    @pytest.mark.timeout(30)
    def test_unlock_after_close_never_pulses(self, rig: BankRig) -> None:
        rec = Recorder()
        rig.bank.start(rec)
        rig.bank.close()
        _assert_refused_after_close(rig, rec)

    @pytest.mark.timeout(30)
    def test_context_manager_exit_closes(self, rig: BankRig) -> None:
        rec = Recorder()
        with rig.bank as bank:
            bank.start(rec)
        assert all(p.off is not None for p in rig.coil_log())
        _assert_refused_after_close(rig, rec)


def _assert_refused_after_close(rig: BankRig, rec: Recorder) -> None:
    """A closed bank refuses an unlock (raises, or reports sent=False) and never pulses."""
    target = rig.bank.compartments[0]
    try:
        rig.bank.unlock(target)
    except HardwareUnavailable:
        pass
    else:
        (result,) = rec.wait_count(UnlockResult, 1, rig.event_timeout_s)
        assert result.compartment == target
        assert result.sent is False
        assert result.detail
    rig.settle()
    assert rig.coil_log() == []
    assert len(rec.of(UnlockResult)) <= 1
