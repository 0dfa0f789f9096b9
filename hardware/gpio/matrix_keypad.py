"""A 3x4 or 4x4 matrix keypad scanned with gpiozero (gpiozero has no keypad class, #358).

Rows are outputs, idle high; columns are pulled-up inputs. A scan thread drives one row low at a
time and reads which columns follow it low. :class:`KeyDebouncer` (pure, no pins) turns the
stream of scans into presses: a key must be seen alone in ``debounce_scans`` consecutive scans,
is reported once per press (no auto-repeat while held), and a scan with more than one key down
is ambiguous (ghosting on diode-less pads) and reports nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Final

from gpiozero import DigitalInputDevice, DigitalOutputDevice, Factory

from locker.ports import (
    LOCKER_KEYS,
    EventSink,
    HardwareEvent,
    HardwareFault,
    HardwareRecovered,
    InputDevice,
    InputRejected,
    InputSource,
    KeyPressed,
    deliver,
)

logger = logging.getLogger(__name__)

PinSpec = int | str

KEYMAP_3X4: Final = ("123", "456", "789", "*0#")
KEYMAP_4X4: Final = ("123A", "456B", "789C", "*0#D")

_AMBIGUOUS: Final = "<ambiguous>"


class KeyDebouncer:
    """Turns successive scans (the set of keys seen down) into single key presses.

    ``scan`` returns the key that has just become a debounced press, else None."""

    def __init__(self, scans: int) -> None:
        if scans < 1:
            raise ValueError(f"debounce needs at least one scan, got {scans}")
        self._needed = scans
        self._candidate: str | None = None
        self._count = 0
        self._stable: str | None = None

    def scan(self, down: frozenset[str]) -> str | None:
        seen = _AMBIGUOUS if len(down) > 1 else next(iter(down), None)
        if seen == self._candidate:
            self._count = min(self._count + 1, self._needed)
        else:
            self._candidate, self._count = seen, 1
        if self._count < self._needed or seen == self._stable:
            return None
        self._stable = seen
        return None if seen in (None, _AMBIGUOUS) else seen


class MatrixKeypad(InputDevice):
    """A matrix keypad on GPIO; reports ``KeyPressed`` / ``InputRejected`` from its thread.

    :param rows: row pins, top to bottom (outputs, driven low one at a time).
    :param cols: column pins, left to right (inputs with pull-ups).
    :param keymap: one string per row; default by shape, 4 rows x 3 or 4 columns.
    :param scan_interval_s: pause between two full scans.
    :param debounce_scans: consecutive scans a key must be seen in to count as pressed.
    """

    def __init__(
        self,
        rows: Sequence[PinSpec],
        cols: Sequence[PinSpec],
        *,
        keymap: Sequence[str] | None = None,
        scan_interval_s: float = 0.01,
        debounce_scans: int = 3,
        pin_factory: Factory | None = None,
        name: str = "keypad",
    ) -> None:
        self._keymap = tuple(keymap) if keymap is not None else _default_keymap(rows, cols)
        _check_shape(self._keymap, rows, cols)
        if not 0.001 <= scan_interval_s <= 0.5:
            raise ValueError(f"scan_interval_s must be in [0.001, 0.5], got {scan_interval_s}")
        self.name = name
        self._interval = scan_interval_s
        self._debouncer = KeyDebouncer(debounce_scans)
        self._sink: EventSink | None = None
        self._stop = threading.Event()
        self._closed = False
        self._faulted = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-scan", daemon=True)
        self._rows: list[DigitalOutputDevice] = []
        self._cols: list[DigitalInputDevice] = []
        try:
            for pin in rows:
                # active low: "on" pulls the row down, idle rows are driven high
                self._rows.append(
                    DigitalOutputDevice(
                        pin, active_high=False, initial_value=False, pin_factory=pin_factory
                    )
                )
            for pin in cols:
                self._cols.append(DigitalInputDevice(pin, pull_up=True, pin_factory=pin_factory))
        except BaseException:
            self._close_devices()
            raise

    def start(self, sink: EventSink) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        if self._sink is not None:
            raise RuntimeError(f"{self.name} already started")
        self._sink = sink
        self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(1.0, 20 * self._interval))
        self._close_devices()

    # -- scanning -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                down = self._scan()
            except Exception as exc:
                self._fault(exc)
                continue
            if self._faulted:
                self._faulted = False
                logger.warning("%s: scanning again", self.name)
                self._emit(HardwareRecovered(self.name))
            key = self._debouncer.scan(down)
            if key is not None:
                self._emit(_key_event(key))

    def _scan(self) -> frozenset[str]:
        down: set[str] = set()
        for keys, row in zip(self._keymap, self._rows, strict=True):
            row.on()
            try:
                down.update(k for k, col in zip(keys, self._cols, strict=True) if col.is_active)
            finally:
                row.off()
        return frozenset(down)

    def _fault(self, exc: Exception) -> None:
        if self._faulted or self._stop.is_set():
            return
        self._faulted = True
        logger.error("%s: scan failed: %s: %s", self.name, type(exc).__name__, exc)
        self._emit(HardwareFault(self.name, f"scan failed: {type(exc).__name__}: {exc}"))

    def _emit(self, event: HardwareEvent) -> None:
        deliver(self._sink, event, self.name)

    def _close_devices(self) -> None:
        for row in self._rows:
            row.close()
        for col in self._cols:
            col.close()


def _key_event(key: str) -> HardwareEvent:
    if key in LOCKER_KEYS:
        return KeyPressed(key)
    return InputRejected(InputSource.KEYPAD, "unsupported key")


def _default_keymap(rows: Sequence[PinSpec], cols: Sequence[PinSpec]) -> tuple[str, ...]:
    shapes = {(4, 3): KEYMAP_3X4, (4, 4): KEYMAP_4X4}
    try:
        return shapes[len(rows), len(cols)]
    except KeyError:
        raise ValueError(
            f"no default keymap for {len(rows)} rows x {len(cols)} columns "
            "(3x4 pads have 4 rows and 3 columns, 4x4 pads 4 and 4); pass keymap="
        ) from None


def _check_shape(keymap: tuple[str, ...], rows: Sequence[PinSpec], cols: Sequence[PinSpec]) -> None:
    if len(keymap) != len(rows) or any(len(line) != len(cols) for line in keymap):
        raise ValueError(f"keymap {keymap} does not match {len(rows)} rows x {len(cols)} cols")
    pins = [*rows, *cols]
    if len(set(pins)) != len(pins):
        raise ValueError("keypad pins must all be different")
    keys = "".join(keymap)
    if len(set(keys)) != len(keys):
        raise ValueError(f"keymap {keymap} repeats a key")
