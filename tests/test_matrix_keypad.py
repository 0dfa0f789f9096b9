"""MatrixKeypad on MockFactory, with a fake key matrix wired between the row and column pins,
and the pure KeyDebouncer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from hardware.gpio.matrix_keypad import KEYMAP_3X4, KEYMAP_4X4, KeyDebouncer, MatrixKeypad
from locker.ports import InputRejected, InputSource, KeyPressed
from tests.conftest import wait_for
from tests.lockbank_contract import Recorder

ROWS = (5, 6, 13, 19)
COLS3 = (12, 16, 20)
COLS4 = (12, 16, 20, 21)


class FakeMatrix:
    """The switches of a keypad: a column reads low while a pressed key connects it to a row
    that the scanner drives low. Watches the row pins through :class:`RowPin`."""

    def __init__(self, factory: MockFactory, keymap: tuple[str, ...], cols: tuple[int, ...]):
        self.keymap = keymap
        self._lock = threading.RLock()
        self.pressed: set[str] = set()
        self.most_rows_low = 0
        self.cols = [factory.pin(c) for c in cols]
        self.rows = [factory.pin(r, pin_class=RowPin, matrix=self) for r in ROWS]

    def press(self, *keys: str) -> None:
        with self._lock:
            self.pressed = set(keys)

    def release(self) -> None:
        self.press()

    def refresh(self) -> None:
        with self._lock:
            if len(getattr(self, "rows", ())) != len(ROWS):
                return  # still wiring up
            rows_low = sum(1 for row in self.rows if row.function == "output" and not row.state)
            self.most_rows_low = max(self.most_rows_low, rows_low)
            for c, col in enumerate(self.cols):
                low = any(
                    self.keymap[r][c] in self.pressed and not row.state
                    for r, row in enumerate(self.rows)
                )
                if col.function == "input":
                    col.drive_low() if low else col.drive_high()

    def scans(self) -> int:
        """Full scans so far: each one takes the last row low and back high."""
        return sum(1 for s in self.rows[-1].states if s.state)

    def wait_scans(self, count: int) -> None:
        target = self.scans() + count
        wait_for(lambda: self.scans() >= target, 5, what=f"{count} more scans")


class RowPin(MockPin):  # type: ignore[misc]  # gpiozero is untyped
    def __init__(self, factory: MockFactory, info: Any, matrix: FakeMatrix) -> None:
        self.matrix = matrix
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed:
            self.matrix.refresh()
        return changed


@pytest.fixture
def pad3(mock_factory: MockFactory) -> Iterator[tuple[FakeMatrix, MatrixKeypad, Recorder]]:
    matrix = FakeMatrix(mock_factory, KEYMAP_3X4, COLS3)
    keypad = MatrixKeypad(ROWS, COLS3, scan_interval_s=0.002, pin_factory=mock_factory)
    rec = Recorder()
    keypad.start(rec)
    yield matrix, keypad, rec
    keypad.close()


def keys(rec: Recorder) -> str:
    return "".join(e.key for e in rec.of(KeyPressed))


@pytest.mark.timeout(20)
def test_a_held_key_is_reported_once(pad3: tuple[FakeMatrix, MatrixKeypad, Recorder]) -> None:
    matrix, _, rec = pad3
    matrix.press("5")
    wait_for(lambda: keys(rec) == "5", 5, what="key 5")
    matrix.wait_scans(30)  # held for ten times the debounce
    assert keys(rec) == "5"
    matrix.release()
    matrix.wait_scans(5)
    matrix.press("5")
    wait_for(lambda: keys(rec) == "55", 5, what="second press")
    assert rec.events == [KeyPressed("5"), KeyPressed("5")]


@pytest.mark.timeout(20)
def test_typing_a_code(pad3: tuple[FakeMatrix, MatrixKeypad, Recorder]) -> None:
    matrix, _, rec = pad3
    typed = "1234567890*#"
    for n, key in enumerate(typed, start=1):
        matrix.press(key)
        wait_for(lambda n=n: len(keys(rec)) == n, 5, what=f"key {key}")  # type: ignore[misc]
        matrix.release()
        matrix.wait_scans(4)
    assert keys(rec) == typed


@pytest.mark.timeout(20)
def test_two_keys_down_is_ambiguous(pad3: tuple[FakeMatrix, MatrixKeypad, Recorder]) -> None:
    matrix, _, rec = pad3
    matrix.press("1", "5")
    matrix.wait_scans(20)
    matrix.press("1", "2", "4")  # a ghost would appear at 5
    matrix.wait_scans(20)
    matrix.release()
    matrix.wait_scans(5)
    assert rec.events == []


@pytest.mark.timeout(20)
def test_rows_idle_high_and_driven_low_one_at_a_time(
    pad3: tuple[FakeMatrix, MatrixKeypad, Recorder],
) -> None:
    matrix, _, _ = pad3
    matrix.wait_scans(5)
    assert matrix.most_rows_low == 1
    for row in matrix.rows:
        assert row.function == "output"
        # floating before the keypad claimed it, then high, then low only while scanned
        assert [s.state for s in row.states][:4] == [False, True, False, True]
    for col in matrix.cols:
        assert col.pull == "up"


@pytest.mark.timeout(20)
def test_letters_of_a_4x4_pad_are_rejected_once_per_press(mock_factory: MockFactory) -> None:
    matrix = FakeMatrix(mock_factory, KEYMAP_4X4, COLS4)
    keypad = MatrixKeypad(ROWS, COLS4, scan_interval_s=0.002, pin_factory=mock_factory)
    rec = Recorder()
    keypad.start(rec)
    try:
        matrix.press("A")
        wait_for(lambda: rec.events, 5, what="rejection")
        matrix.wait_scans(20)
        matrix.release()
        matrix.wait_scans(4)
        matrix.press("D")
        wait_for(lambda: len(rec.events) == 2, 5, what="second rejection")
        matrix.release()
        matrix.wait_scans(4)
        matrix.press("#")
        wait_for(lambda: len(rec.events) == 3, 5, what="#")
    finally:
        keypad.close()
    rejected = InputRejected(InputSource.KEYPAD, "unsupported key")
    assert rec.events == [rejected, rejected, KeyPressed("#")]


@pytest.mark.timeout(20)
def test_close_stops_the_scan_and_frees_the_pins(mock_factory: MockFactory) -> None:
    matrix = FakeMatrix(mock_factory, KEYMAP_3X4, COLS3)
    keypad = MatrixKeypad(ROWS, COLS3, scan_interval_s=0.002, pin_factory=mock_factory)
    keypad.start(Recorder())
    matrix.wait_scans(2)
    keypad.close()
    keypad.close()
    scans = matrix.scans()
    assert not any(t.name == "keypad-scan" for t in threading.enumerate())
    assert matrix.scans() == scans
    MatrixKeypad(ROWS, COLS3, pin_factory=mock_factory).close()  # pins are free again


@pytest.mark.parametrize(
    ("rows", "cols", "kwargs", "match"),
    [
        (ROWS[:3], COLS3, {}, "no default keymap"),
        (ROWS, (12, 16), {}, "no default keymap"),
        (ROWS, COLS3, {"keymap": ("12", "45", "78", "*0")}, "does not match"),
        (ROWS, (12, 16, 5), {}, "different"),
        (ROWS, COLS3, {"keymap": ("123", "456", "789", "*1#")}, "repeats"),
        (ROWS, COLS3, {"scan_interval_s": 0}, "scan_interval_s"),
        (ROWS, COLS3, {"debounce_scans": 0}, "at least one scan"),
    ],
)
def test_configuration_is_validated(
    mock_factory: MockFactory,
    rows: tuple[int, ...],
    cols: tuple[int, ...],
    kwargs: dict[str, Any],
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        MatrixKeypad(rows, cols, pin_factory=mock_factory, **kwargs)
    assert not any(p.function == "output" for p in mock_factory.pins.values())


# -- the pure debouncer -------------------------------------------------------------------


def run(debouncer: KeyDebouncer, scans: list[str]) -> str:
    """Each scan is the keys down, as a string."""
    return "".join(k for s in scans if (k := debouncer.scan(frozenset(s))) is not None)


def test_debouncer_needs_consecutive_scans() -> None:
    assert run(KeyDebouncer(3), ["5", "5", "", "5", "5", ""]) == ""
    assert run(KeyDebouncer(3), ["5", "5", "5"]) == "5"


def test_debouncer_reports_once_per_press_and_again_after_release() -> None:
    d = KeyDebouncer(2)
    assert run(d, ["7"] * 50) == "7"
    assert run(d, ["", "", "7", "7", "7"]) == "7"


def test_debouncer_needs_a_stable_release_between_presses() -> None:
    # a one-scan dropout while held is bounce, not a release
    assert run(KeyDebouncer(3), ["1", "1", "1", "", "1", "1", "1"]) == "1"


def test_debouncer_ignores_ambiguous_scans_but_rolls_over() -> None:
    d = KeyDebouncer(2)
    assert run(d, ["1", "1", "15", "15", "15"]) == "1"
    assert run(d, ["5", "5"]) == "5"  # 1 released, 5 still held: its own press
