"""Coil pulse scheduling for one bank of solenoid locks.

A :class:`PulseScheduler` owns one worker thread that serialises unlock requests: coil on,
hold for ``pulse_s``, coil off, rest for ``rest_s``, next request. So at most one coil of the
bank is ever energised, every pulse is bounded (hard cap :data:`MAX_PULSE_S`, refused in the
constructor), and consecutive pulses are separated by the rest. Each request ends in exactly
one :class:`~locker.ports.UnlockResult`.

A request that finds the bank idle (no coil on, the rest over, nothing queued) switches its
coil on at once, on the caller's thread, and only then hands the hold, the switch-off and the
rest to the worker: the controller's commit is followed by the coil without waiting for a
thread to wake (issue 10: that hand-off was up to a millisecond at p99). A request that finds
the bank busy is queued as before. The scheduler knows nothing of gpiozero: a coil is
anything with ``on()`` and ``off()`` (a ``DigitalOutputDevice``, or :class:`CallableCoil`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from locker.ports import UnlockResult, guarded

logger = logging.getLogger(__name__)

MAX_PULSE_S: Final = 2.0
"""Hard cap on one energisation: longer pulses overheat coils (DESIGN section 7)."""

MAX_REST_S: Final = 60.0


class Coil(Protocol):
    def on(self) -> None: ...

    def off(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CallableCoil:
    """A coil given as two callables (for drivers that do not have an on/off object)."""

    on: Callable[[], None]
    off: Callable[[], None]


_STOP: Final = object()


@dataclass(frozen=True, slots=True)
class _Held:
    """A coil the caller of ``request`` switched on at ``on_at`` (``time.monotonic``): the
    worker holds it until ``on_at + pulse_s``, switches it off and rests."""

    compartment: str
    on_at: float


def check_timing(pulse_s: float, rest_s: float) -> None:
    """Refuse a pulse longer than the hard cap (or not positive) and a negative rest."""
    if not 0 < pulse_s <= MAX_PULSE_S:
        raise ValueError(f"pulse_s must be in (0, {MAX_PULSE_S}], got {pulse_s}")
    if not 0 <= rest_s <= MAX_REST_S:
        raise ValueError(f"rest_s must be in [0, {MAX_REST_S}], got {rest_s}")


class PulseScheduler:
    """Serialises coil pulses of one bank on one worker thread.

    :param coils: compartment id -> coil.
    :param pulse_s: how long a coil stays on, ``0 < pulse_s <= 2.0``.
    :param rest_s: minimum time from one coil going off to the next going on.
    :param sink: receives one ``UnlockResult`` per request (from the worker thread, or from the
        caller of :meth:`request` once the scheduler is closed). Must be thread-safe.
    """

    def __init__(
        self,
        coils: Mapping[str, Coil],
        *,
        pulse_s: float,
        rest_s: float,
        sink: Callable[[UnlockResult], None],
        name: str = "pulse",
    ) -> None:
        check_timing(pulse_s, rest_s)
        self._coils = dict(coils)
        self._pulse_s = pulse_s
        self._rest_s = rest_s
        self._sink = sink
        self.name = name
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopping = threading.Event()
        # makes "check closed, enqueue" atomic against close() enqueueing the stop marker
        self._gate = threading.Lock()
        self._closed = False
        self._idle = True  # under _gate: worker parked, no coil on, rest over, queue empty
        self._thread = threading.Thread(target=self._run, name=f"{name}-pulses", daemon=True)
        self._thread.start()

    @property
    def pulse_s(self) -> float:
        return self._pulse_s

    @property
    def rest_s(self) -> float:
        return self._rest_s

    def request(self, compartment: str) -> None:
        """One pulse: the coil goes on before this returns if the bank is idle, else the
        request is queued. Returns without waiting for the pulse. Unknown compartment:
        ``KeyError``."""
        coil = self._coils[compartment]
        with self._gate:
            if not self._closed:
                if self._idle:
                    # on under the gate: close() cannot slip between the check and the coil
                    self._switch_on_now(compartment, coil)
                else:
                    self._requests.put(compartment)
                return
        self._report(UnlockResult(compartment, sent=False, detail=f"{self.name} is closed"))

    def _switch_on_now(self, compartment: str, coil: Coil) -> None:
        """Fast path of ``request`` (caller's thread, ``_gate`` held)."""
        try:
            coil.on()
        except Exception as exc:
            self._failed_on(coil, compartment, exc)  # the bank stays idle
            return
        self._idle = False
        self._requests.put(_Held(compartment, time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        """Turn every coil off, end queued requests with ``sent=False``, stop the worker.

        Idempotent. A pulse in progress is cut short (and reported ``sent=True``)."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            self._stopping.set()
            self._requests.put(_STOP)
        self._all_off()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("%s: pulse worker did not stop within %.1fs", self.name, timeout)
        # the worker may have been between its stop check and on(): make sure
        self._all_off()

    # -- worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._requests.get()
            if item is _STOP:
                return
            if isinstance(item, _Held):
                self._finish(item)
            else:
                assert isinstance(item, str)
                self._serve(item)
            with self._gate:
                # parked: the next request may switch its coil on itself
                self._idle = self._requests.empty()

    @guarded(logger)
    def _serve(self, compartment: str) -> None:
        if self._stopping.is_set():
            self._report(UnlockResult(compartment, sent=False, detail=f"{self.name} closed"))
            return
        coil = self._coils[compartment]
        try:
            coil.on()
        except Exception as exc:
            self._failed_on(coil, compartment, exc)
            return
        self._finish(_Held(compartment, time.monotonic()))

    @guarded(logger)
    def _finish(self, held: _Held) -> None:
        """A coil is on since ``held.on_at``: hold it, switch it off, report, rest."""
        coil = self._coils[held.compartment]
        self._hold(held.on_at + self._pulse_s - time.monotonic())
        off_ok = self._safe_off(coil, held.compartment)
        detail = "" if off_ok else "coil stuck"
        self._report(UnlockResult(held.compartment, sent=True, detail=detail))
        self._hold(self._rest_s)

    def _failed_on(self, coil: Coil, compartment: str, exc: Exception) -> None:
        self._safe_off(coil, compartment)
        detail = f"coil could not be driven: {type(exc).__name__}: {exc}"
        logger.error("%s: %s: %s", self.name, compartment, detail)
        self._report(UnlockResult(compartment, sent=False, detail=detail))

    def _hold(self, seconds: float) -> None:
        """Wait ``seconds`` on the monotonic clock, or less if the scheduler is closing."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(left)

    def _safe_off(self, coil: Coil, compartment: str) -> bool:
        try:
            coil.off()
        except Exception:
            # a coil that may still be on is the worst state there is: make it loud
            logger.critical("%s: could not switch coil %s off", self.name, compartment)
            return False
        return True

    def _all_off(self) -> None:
        for compartment, coil in self._coils.items():
            self._safe_off(coil, compartment)

    def _report(self, result: UnlockResult) -> None:
        try:
            self._sink(result)
        except Exception:
            logger.exception("%s: sink refused %s", self.name, result)
