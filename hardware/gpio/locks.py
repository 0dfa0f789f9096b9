"""The GPIO lock bank: solenoid locks and reed-switch door sensors wired to the Pi's pins.

Owns the gpiozero devices of every GPIO-wired compartment, the pulse worker that drives their
coils (:mod:`hardware.gpio.pulse`) and a debouncer thread for the door sensors. On close the
lock pins are left outputs driven low, never floating inputs. Debouncing is done
here rather than with gpiozero's ``bounce_time`` because the mock pins ignore it and because
a door must be reported only once its level has been stable for ``debounce_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpiozero import DigitalInputDevice, DigitalOutputDevice, Factory

from hardware.gpio.pulse import PulseScheduler, check_timing
from locker.ports import (
    DoorChanged,
    DoorState,
    EventSink,
    HardwareEvent,
    HardwareFault,
    HardwareRecovered,
    HardwareUnavailable,
    LockBank,
    guarded,
)

logger = logging.getLogger(__name__)

PinSpec = int | str
DoorLevel = Literal["low", "high"]
MAX_DEBOUNCE_S = 5.0


@dataclass(frozen=True, slots=True)
class GpioCompartment:
    """One GPIO-wired compartment.

    :param door_closed_level: the pin level that means "door closed". The sensor input is
        pulled up, so a reed switch to ground that closes with the door reads ``"low"``.
    """

    id: str
    lock_pin: PinSpec
    door_pin: PinSpec
    door_closed_level: DoorLevel = "low"

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("compartment id must not be empty")
        if self.door_closed_level not in ("low", "high"):
            raise ValueError(
                f"{self.id}: door_closed_level must be 'low' or 'high', "
                f"got {self.door_closed_level!r}"
            )
        if self.lock_pin == self.door_pin:
            raise ValueError(f"{self.id}: lock_pin and door_pin are both {self.lock_pin}")


class Debouncer:
    """Calls ``resolve(key)`` on its own thread once ``key`` has had no edge for ``settle_s``.

    One thread and one dict entry per key however fast the edges come, so an edge storm costs
    nothing but a timestamp update. A run of edges that does not settle is announced twice
    through ``unsettled(key, stage, run_s, edges)``: stage ``"moving"`` once it has lasted
    ``2 * settle_s`` (longer than any contact bounce: the reading cannot be trusted yet) and
    stage ``"unstable"`` once it has lasted ``unstable_after_s`` (the sensor chatters on)."""

    def __init__(
        self,
        settle_s: float,
        resolve: Callable[[str], None],
        name: str,
        *,
        unsettled: Callable[[str, str, float, int], None] | None = None,
        unstable_after_s: float = 10.0,
    ) -> None:
        self._settle_s = settle_s
        self._resolve = resolve
        self._unsettled = unsettled
        self._stages = ((2 * settle_s, "moving"), (max(unstable_after_s, 2 * settle_s), "unstable"))
        self._cond = threading.Condition()
        self._pending: dict[str, float] = {}
        self._runs: dict[str, list[float]] = {}  # key -> [first edge, edges, stages told]
        self._resolving: set[str] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-debounce", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def edge(self, key: str) -> None:
        with self._cond:
            now = time.monotonic()
            self._pending[key] = now
            run = self._runs.setdefault(key, [now, 0, 0])
            run[1] += 1
            self._cond.notify()

    @property
    def settling(self) -> bool:
        """True while some edge still waits for its window or is being resolved."""
        with self._cond:
            return bool(self._pending or self._resolving)

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            due = self._next_due()
            if due is None:
                return
            notices, settled = due
            for key, stage, run_s, edges in notices:
                self._notice(key, stage, run_s, edges)
            for key in settled:
                self._resolve_one(key)

    def _next_due(
        self,
    ) -> tuple[list[tuple[str, str, float, int]], list[str]] | None:
        """Block until some keys settled (popped and marked resolving) or a run of edges
        reached a stage; None when stopping."""
        with self._cond:
            self._resolving.clear()
            while not self._stop:
                now = time.monotonic()
                settled = [k for k, t in self._pending.items() if now - t >= self._settle_s]
                notices = []
                wake = [t + self._settle_s for t in self._pending.values()]
                for key in self._pending:
                    run = self._runs[key]
                    told = int(run[2])
                    if told < len(self._stages):
                        after, stage = self._stages[told]
                        if now - run[0] >= after and key not in settled:
                            run[2] = told + 1
                            notices.append((key, stage, now - run[0], int(run[1])))
                        else:
                            wake.append(run[0] + after)
                for key in settled:
                    del self._pending[key]
                    self._runs.pop(key, None)
                self._resolving.update(settled)
                if settled or notices:
                    return notices, settled
                if wake:
                    self._cond.wait(max(0.0, min(wake) - now))
                else:
                    self._cond.wait()
            return None

    @guarded(logger)
    def _notice(self, key: str, stage: str, run_s: float, edges: int) -> None:
        if self._unsettled is not None:
            self._unsettled(key, stage, run_s, edges)

    @guarded(logger)
    def _resolve_one(self, key: str) -> None:
        self._resolve(key)


class GpioLockBank(LockBank):
    """Locks and doors of GPIO-wired compartments (see :class:`~locker.ports.LockBank`).

    :param pulse_s: coil on-time per unlock (hard cap 2 s, see :mod:`hardware.gpio.pulse`).
    :param rest_s: minimum pause between two pulses of this bank.
    :param debounce_s: a door level must be stable this long before it is reported.
    :param unstable_after_s: a sensor still chattering this long after its first edge is
        reported once as a fault (``HardwareFault`` on ``door:<id>``; ``HardwareRecovered`` when
        it settles). A run of edges longer than ``2 * debounce_s`` already makes the door
        UNKNOWN until it settles: the reading is not to be trusted while it chatters.
    :param pin_factory: the gpiozero factory (``hardware.gpio.pins.make_pin_factory``); None uses
        gpiozero's global ``Device.pin_factory``.
    """

    def __init__(
        self,
        compartments: Sequence[GpioCompartment],
        *,
        pulse_s: float,
        rest_s: float,  # no defaults: the config model's are the only ones (via the assembly)
        debounce_s: float,
        unstable_after_s: float,
        pin_factory: Factory | None = None,
        name: str = "gpio",
    ) -> None:
        _check_layout(compartments)
        if not 0 <= debounce_s <= MAX_DEBOUNCE_S:
            raise ValueError(f"debounce_s must be in [0, {MAX_DEBOUNCE_S}], got {debounce_s}")
        # validate the pulse settings before touching any pin
        check_timing(pulse_s, rest_s)
        self.name = name
        self._spec = {c.id: c for c in compartments}
        self._pulse_s = pulse_s
        self._rest_s = rest_s
        self._lock = threading.Lock()
        self._states = {c.id: DoorState.UNKNOWN for c in compartments}
        self._sink: EventSink | None = None
        self._scheduler: PulseScheduler | None = None
        self._closed = False
        self._faulty: set[str] = set()  # doors whose sensor was reported unstable
        self._debouncer = Debouncer(
            debounce_s,
            self._settled,
            name,
            unsettled=self._unsettled,
            unstable_after_s=unstable_after_s,
        )
        # strong references: gpiozero closes a device that is garbage-collected
        self._locks: dict[str, DigitalOutputDevice] = {}
        self._doors: dict[str, DigitalInputDevice] = {}
        try:
            for c in compartments:
                self._locks[c.id] = DigitalOutputDevice(
                    c.lock_pin, active_high=True, initial_value=False, pin_factory=pin_factory
                )
                self._doors[c.id] = DigitalInputDevice(
                    c.door_pin, pull_up=True, pin_factory=pin_factory
                )
        except BaseException:
            self._close_devices()
            raise

    @property
    def compartments(self) -> tuple[str, ...]:
        return tuple(self._spec)

    @property
    def settling(self) -> bool:
        """True while a door edge still waits out its debounce window."""
        return self._debouncer.settling

    def start(self, sink: EventSink) -> None:
        with self._lock:
            if self._closed:
                raise HardwareUnavailable(f"{self.name} is closed")
            if self._sink is not None:
                raise RuntimeError(f"{self.name} already started")
            self._sink = sink
            self._scheduler = PulseScheduler(
                self._locks, pulse_s=self._pulse_s, rest_s=self._rest_s, sink=sink, name=self.name
            )
        for cid, door in self._doors.items():
            door.when_activated = door.when_deactivated = self._edge_handler(cid)
        # the debouncer starts after the first reads, so an edge in between is only resolved
        # against an already-reported state and never reported twice
        for cid in self._doors:
            self._settled(cid)
        self._debouncer.start()

    def unlock(self, compartment: str) -> None:
        if compartment not in self._spec:
            raise KeyError(compartment)
        scheduler = self._scheduler
        if scheduler is None:
            raise HardwareUnavailable(f"{self.name} is not started")
        scheduler.request(compartment)

    def doors(self) -> Mapping[str, DoorState]:
        with self._lock:
            return dict(self._states)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            scheduler = self._scheduler
        if scheduler is not None:
            scheduler.close()
        self._debouncer.close()
        self._close_devices()
        logger.info("%s closed", self.name)

    # -- internals ------------------------------------------------------------------------

    def _edge_handler(self, compartment: str) -> Callable[[], None]:
        @guarded(logger)
        def on_edge() -> None:
            self._debouncer.edge(compartment)

        return on_edge

    def _level_state(self, compartment: str) -> DoorState:
        # pull-up input: "active" means the pin reads low
        low = bool(self._doors[compartment].is_active)
        closed_low = self._spec[compartment].door_closed_level == "low"
        return DoorState.CLOSED if low == closed_low else DoorState.OPEN

    def _settled(self, compartment: str) -> None:
        """Read a door whose level is stable and report it if it differs from the last report."""
        events: list[HardwareEvent] = []
        with self._lock:
            if self._closed:
                return
            if compartment in self._faulty:
                self._faulty.discard(compartment)
                events.append(HardwareRecovered(f"door:{compartment}", (compartment,)))
            state = self._level_state(compartment)
            if state is not self._states[compartment]:
                self._states[compartment] = state
                events.append(DoorChanged(compartment, state))
            sink = self._sink
        if sink is not None:
            for event in events:
                self._emit(sink, event)

    def _unsettled(self, compartment: str, stage: str, run_s: float, edges: int) -> None:
        """A door sensor chatters: UNKNOWN while it does, and one fault if it goes on."""
        events: list[HardwareEvent] = []
        with self._lock:
            if self._closed:
                return
            if self._states[compartment] is not DoorState.UNKNOWN:
                self._states[compartment] = DoorState.UNKNOWN
                events.append(DoorChanged(compartment, DoorState.UNKNOWN))
            if stage == "unstable" and compartment not in self._faulty:
                self._faulty.add(compartment)
                detail = f"door sensor unstable: {edges} changes in {run_s:.1f} s without settling"
                logger.warning("%s: %s: %s", self.name, compartment, detail)
                events.append(HardwareFault(f"door:{compartment}", detail, (compartment,)))
            sink = self._sink
        if sink is not None:
            for event in events:
                self._emit(sink, event)

    def _emit(self, sink: EventSink, event: HardwareEvent) -> None:
        try:
            sink(event)
        except Exception:
            logger.exception("%s: sink refused %s", self.name, event)

    def _close_devices(self) -> None:
        for lock in self._locks.values():
            try:
                lock.off()
            except Exception:
                logger.critical("%s: could not switch a coil off while closing", self.name)
            _release_driven_low(lock)
        for door in self._doors.values():
            door.close()  # also drops its edge callbacks


def _release_driven_low(lock: DigitalOutputDevice) -> None:
    """Close a lock's device but leave its pin an output driven low (DESIGN section 7).

    gpiozero resets a closed pin to a floating input (lgpio: ``gpio_claim_input`` with no
    pull), and a floating input into a coil driver's gate may switch the coil on. So the pin is
    claimed again as an output at 0 once the device has let it go: it stays so until the
    process exits, and a later device may take it over without a glitch. Our pin factory is
    not gpiozero's global one, so its exit hook does not reset it again."""
    pin = lock.pin
    lock.close()
    if pin is None:
        return
    try:
        pin.output_with_state(False)
    except Exception:
        logger.critical("could not leave lock pin %s driven low", pin)


def _check_layout(compartments: Sequence[GpioCompartment]) -> None:
    if not compartments:
        raise ValueError("a GPIO lock bank needs at least one compartment")
    ids = [c.id for c in compartments]
    dup_ids = sorted({i for i in ids if ids.count(i) > 1})
    if dup_ids:
        raise ValueError(f"duplicate compartment ids: {', '.join(dup_ids)}")
    pins = [p for c in compartments for p in (c.lock_pin, c.door_pin)]
    dup_pins = sorted({str(p) for p in pins if pins.count(p) > 1})
    if dup_pins:
        raise ValueError(f"pins used more than once: {', '.join(dup_pins)}")
