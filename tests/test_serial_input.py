"""Serial scanner and keypad: the pure byte rules (examples and Hypothesis), then the readers
on pySerial ``loop://`` and on real ptys (unplug and replug)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.serial_io.input import (
    MAX_LINE,
    KeyDecoder,
    LineAssembler,
    SerialKeypad,
    SerialScanner,
    strip_aim,
)
from locker.ports import (
    HardwareFault,
    HardwareRecovered,
    InputRejected,
    InputSource,
    KeyPressed,
    LineScanned,
)
from tests.conftest import wait_for
from tests.lockbank_contract import Recorder
from tests.ptys import PtyPort


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rejected(reason: str, source: InputSource = InputSource.SCANNER) -> InputRejected:
    return InputRejected(source, reason)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lines(clock: FakeClock) -> LineAssembler:
    return LineAssembler(clock=clock)


# -- line assembler: examples -------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"]Q1", b"]Q0", b"]Q3", b"]d2", b"]C0"])
def test_an_aim_symbology_identifier_is_recognised_and_removed(
    lines: LineAssembler, prefix: bytes
) -> None:
    # issue 11 item 16: a scanner with "transmit AIM ID" on sends ]Q1 before a QR's data
    assert lines.feed(prefix + b"LK1:ABC 123\r") == [LineScanned("LK1:ABC 123")]


def test_an_aim_identifier_alone_or_a_bracket_in_data_is_not_stripped(
    lines: LineAssembler, clock: FakeClock
) -> None:
    assert lines.feed(b"]Q1\r") == []  # nothing behind the identifier: an empty scan
    assert lines.feed(b"]?xyz\r") == [LineScanned("]?xyz")]
    assert lines.feed(b"A]Q1B\r") == [LineScanned("A]Q1B")]


def test_the_repeat_window_sees_through_the_aim_identifier(lines: LineAssembler) -> None:
    assert lines.feed(b"]Q1LK1:SAME\r") == [LineScanned("LK1:SAME")]
    assert lines.feed(b"LK1:SAME\r") == []


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n"])
def test_each_terminator_ends_a_line_once(lines: LineAssembler, terminator: bytes) -> None:
    assert lines.feed(b"LK1:AB" + terminator + b"LK1:CD" + terminator) == [
        LineScanned("LK1:AB"),
        LineScanned("LK1:CD"),
    ]


def test_crlf_split_across_reads_is_one_terminator(lines: LineAssembler) -> None:
    assert lines.feed(b"ONE\r") == [LineScanned("ONE")]
    assert lines.feed(b"\nTWO\r") == [LineScanned("TWO")]
    assert lines.buffered == 0


def test_partial_line_waits_for_its_terminator(lines: LineAssembler) -> None:
    assert lines.feed(b"LK1:") == []
    assert lines.buffered == 4
    assert lines.feed(b"XYZ\r") == [LineScanned("LK1:XYZ")]


def test_empty_lines_are_ignored(lines: LineAssembler) -> None:
    assert lines.feed(b"\r\r\n\n\r\nA\r") == [LineScanned("A")]


def test_spaces_are_kept(lines: LineAssembler) -> None:
    # base45 (the QR token alphabet) contains the space
    assert lines.feed(b" A B \r") == [LineScanned(" A B ")]


def test_longest_line_passes_one_more_byte_is_rejected(lines: LineAssembler) -> None:
    longest = b"A" * MAX_LINE
    assert lines.feed(longest + b"\r") == [LineScanned(longest.decode())]
    assert lines.feed(b"B" * (MAX_LINE + 1)) == [rejected("too long")]
    assert lines.feed(b"B" * 5000) == []  # discarded, once reported
    assert lines.buffered == 0
    assert lines.feed(b"\rNEXT\r") == [LineScanned("NEXT")]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"\x00", "control byte"),
        (b"\t", "control byte"),
        (b"\x1b", "control byte"),
        (b"\x7f", "control byte"),
        (b"\xc3\xa9", "non-ASCII byte"),
        (b"\xff", "non-ASCII byte"),
    ],
)
def test_bad_bytes_reject_the_whole_line(lines: LineAssembler, bad: bytes, reason: str) -> None:
    assert lines.feed(b"LK1:" + bad + b"REST\rGOOD\r") == [rejected(reason), LineScanned("GOOD")]


def test_repeat_within_the_window_is_ignored(lines: LineAssembler, clock: FakeClock) -> None:
    assert lines.feed(b"CODE\r") == [LineScanned("CODE")]
    clock.now += 1.9
    assert lines.feed(b"CODE\r") == []
    clock.now += 1.9  # the window slides with every repeat: still the same scan
    assert lines.feed(b"CODE\r") == []
    clock.now += 2.0
    assert lines.feed(b"CODE\r") == [LineScanned("CODE")]
    assert lines.feed(b"OTHER\rCODE\r") == [LineScanned("OTHER"), LineScanned("CODE")]


def test_stale_partial_line_is_dropped(lines: LineAssembler, clock: FakeClock) -> None:
    lines.feed(b"HALF")
    clock.now += 0.5
    assert lines.idle() == []
    clock.now += 0.5
    assert lines.idle() == [rejected("incomplete line")]
    assert lines.buffered == 0
    assert lines.idle() == []
    lines.feed(b"HALF")
    clock.now += 5
    # the stale start is not glued to the next scan even if idle() was never called
    assert lines.feed(b"NEW\r") == [rejected("incomplete line"), LineScanned("NEW")]


def test_stale_discarded_line_is_not_reported_twice(lines: LineAssembler, clock: FakeClock) -> None:
    assert lines.feed(b"AB\x01CD") == [rejected("control byte")]
    clock.now += 2
    assert lines.idle() == []
    assert lines.feed(b"OK\r") == [LineScanned("OK")]


def test_flush_reports_a_partial_line(lines: LineAssembler) -> None:
    assert lines.flush() == []
    lines.feed(b"PART")
    assert lines.flush() == [rejected("incomplete line")]
    assert lines.feed(b"\r") == []


# -- line assembler: properties -----------------------------------------------------------


def fed_in_pieces(
    decoder: LineAssembler | KeyDecoder, data: bytes, cuts: list[int]
) -> list[object]:
    """Feed ``data`` cut at ``cuts`` (as reads would split it); all the events in order."""
    bounds = [0, *sorted(cuts), len(data)]
    return [e for a, b in itertools.pairwise(bounds) for e in decoder.feed(data[a:b])]


chunks = st.lists(st.binary(max_size=700), max_size=12)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)


@settings(max_examples=300, deadline=None)
@given(data=chunks, steps=st.lists(st.floats(0, 3), min_size=12, max_size=12))
def test_any_bytes_give_only_checked_lines_or_rejections(
    data: list[bytes], steps: list[float]
) -> None:
    clock = FakeClock()
    lines = LineAssembler(clock=clock)
    out = []
    for chunk, step in zip(data, steps, strict=False):
        clock.now += step
        out += lines.feed(chunk)
        assert lines.buffered <= MAX_LINE
        out += lines.idle()
    for event in out:
        assert isinstance(event, LineScanned | InputRejected)
        if isinstance(event, LineScanned):
            assert 1 <= len(event.text) <= MAX_LINE
            assert all(0x20 <= ord(ch) < 0x7F for ch in event.text)
        else:
            assert event.source is InputSource.SCANNER


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=10))
def test_how_reads_are_split_does_not_matter(data: bytes, cuts: list[int]) -> None:
    whole = LineAssembler(clock=FakeClock()).feed(data)
    assert fed_in_pieces(LineAssembler(clock=FakeClock()), data, cuts) == whole


@settings(max_examples=200, deadline=None)
@given(
    # (a line that starts like an AIM identifier loses it: tested with the examples above)
    texts=st.lists(
        printable.filter(lambda t: len(t) <= MAX_LINE and strip_aim(t) == t), max_size=8
    ),
    terminators=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n"]), min_size=8, max_size=8),
)
def test_valid_lines_come_through_unchanged(texts: list[str], terminators: list[bytes]) -> None:
    stream = b"".join(t.encode() + term for t, term in zip(texts, terminators, strict=False))
    out = LineAssembler(clock=FakeClock()).feed(stream)
    # one instant: a line equal to the one before it is a repeat within the window
    expected = [t for i, t in enumerate(texts) if i == 0 or texts[i - 1] != t]
    assert out == [LineScanned(t) for t in expected]


# -- keypad decoder -----------------------------------------------------------------------


def test_keypad_bytes_to_keys() -> None:
    keys = KeyDecoder()
    assert keys.feed(b"0123456789*#") == [KeyPressed(k) for k in "0123456789*#"]
    assert keys.feed(b"1\r\n2\r3\n\n") == [KeyPressed(k) for k in "1#2#3##"]
    assert keys.feed(b"\r") == [KeyPressed("#")]
    assert keys.feed(b"\n") == []  # the LF of a CRLF split over two reads


def test_keypad_run_of_bad_bytes_is_one_rejection() -> None:
    keys = KeyDecoder()
    bad = rejected("unsupported byte", InputSource.KEYPAD)
    assert keys.feed(b"ABC\xff\x00") == [bad]
    assert keys.feed(b"DEF") == []  # the same run
    assert keys.feed(b"1x") == [KeyPressed("1"), bad]
    keys.idle()
    assert keys.feed(b"y") == [bad]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=500), cuts=st.lists(st.integers(0, 500), max_size=6))
def test_keypad_any_bytes(data: bytes, cuts: list[int]) -> None:
    whole = KeyDecoder().feed(data)
    for event in whole:
        if isinstance(event, KeyPressed):
            assert event.key in set("0123456789*#")
        else:
            assert event == rejected("unsupported byte", InputSource.KEYPAD)
    assert fed_in_pieces(KeyDecoder(), data, cuts) == whole
    submits = data.count(b"\r") + data.count(b"\n") - data.count(b"\r\n") + data.count(b"#")
    assert sum(1 for e in whole if e == KeyPressed("#")) == submits


# -- readers on loop:// -------------------------------------------------------------------


def loop_port() -> serial.SerialBase:
    return serial.serial_for_url("loop://", timeout=0.05)


@pytest.fixture
def scanner_on_loop() -> Iterator[tuple[serial.SerialBase, SerialScanner, Recorder]]:
    port = loop_port()
    scanner = SerialScanner("loop://", baudrate=9600, opener=lambda: port, read_timeout_s=0.05)
    rec = Recorder()
    scanner.start(rec)
    wait_for(lambda: scanner.connected, 5, what="scanner open")
    yield port, scanner, rec
    scanner.close()


@pytest.mark.timeout(20)
def test_scanner_reads_lines_from_the_port(
    scanner_on_loop: tuple[serial.SerialBase, SerialScanner, Recorder],
) -> None:
    port, _, rec = scanner_on_loop
    port.write(b"LK1:AAAA\r\nLK1:BB")
    wait_for(lambda: rec.events, 5, what="first line")
    port.write(b"BB\r" + b"Z" * 600 + b"\r" + b"\x1b[2J\r")
    wait_for(lambda: len(rec.events) == 4, 5, what="four events")
    assert rec.events == [
        LineScanned("LK1:AAAA"),
        LineScanned("LK1:BBBB"),
        rejected("too long"),
        rejected("control byte"),
    ]


@pytest.mark.timeout(20)
def test_scanner_drops_a_line_left_incomplete() -> None:
    port = loop_port()
    scanner = SerialScanner(
        "loop://", baudrate=9600, opener=lambda: port, read_timeout_s=0.05, idle_timeout_s=0.1
    )
    rec = Recorder()
    scanner.start(rec)
    try:
        wait_for(lambda: scanner.connected, 5)
        port.write(b"LK1:HALF")
        wait_for(lambda: rec.events, 5, what="incomplete line")
        port.write(b"OK\r")
        wait_for(lambda: len(rec.events) == 2, 5, what="next line")
    finally:
        scanner.close()
    assert rec.events == [rejected("incomplete line"), LineScanned("OK")]


@pytest.mark.timeout(20)
def test_serial_keypad_reads_keys() -> None:
    port = loop_port()
    keypad = SerialKeypad("loop://", baudrate=9600, opener=lambda: port, read_timeout_s=0.05)
    rec = Recorder()
    keypad.start(rec)
    try:
        wait_for(lambda: keypad.connected, 5)
        port.write(b"12*9\r\nA5#")
        wait_for(lambda: len(rec.events) == 8, 5, what="eight events")
    finally:
        keypad.close()
    assert rec.events == [
        *(KeyPressed(k) for k in "12*9#"),
        rejected("unsupported byte", InputSource.KEYPAD),
        KeyPressed("5"),
        KeyPressed("#"),
    ]


@pytest.mark.timeout(20)
def test_close_is_prompt_and_idempotent(
    scanner_on_loop: tuple[serial.SerialBase, SerialScanner, Recorder],
) -> None:
    port, scanner, rec = scanner_on_loop
    started = time.monotonic()
    scanner.close()
    scanner.close()
    assert time.monotonic() - started < 0.5
    assert not scanner.connected
    assert not any(t.name == "scanner-reader" for t in threading.enumerate())
    assert not port.is_open
    assert rec.events == []


# -- faults: real ptys behind a by-id style symlink ---------------------------------------


@pytest.fixture
def pty_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "usb-scanner-if00")
    yield port
    port.unplug()


class CountingOpener:
    """Opens a port path as the default opener would, counting the attempts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.attempts = 0

    def __call__(self) -> serial.SerialBase:
        self.attempts += 1
        return serial.serial_for_url(str(self.path), timeout=0.05, exclusive=True)


def fast_scanner(url: str, opener: CountingOpener | None = None) -> SerialScanner:
    return SerialScanner(
        url, baudrate=9600, retry_base_s=0.01, retry_max_s=0.05, read_timeout_s=0.05, opener=opener
    )


def faults(rec: Recorder) -> list[object]:
    return [e for e in rec.events if isinstance(e, HardwareFault | HardwareRecovered)]


@pytest.mark.timeout(30)
def test_unplug_is_one_fault_and_replug_one_recovery(pty_port: PtyPort) -> None:
    pty_port.plug()
    opener = CountingOpener(pty_port.link)
    scanner = fast_scanner(str(pty_port.link), opener)
    rec = Recorder()
    scanner.start(rec)
    try:
        wait_for(lambda: scanner.connected, 5, what="port open")
        pty_port.write(b"BEFORE\r")
        wait_for(lambda: rec.of(LineScanned), 5, what="line before unplug")
        pty_port.unplug()
        wait_for(lambda: rec.of(HardwareFault), 5, what="fault")
        failed_from = opener.attempts
        wait_for(lambda: opener.attempts >= failed_from + 5, 5, what="five failed reopens")
        pty_port.plug()
        wait_for(lambda: rec.of(HardwareRecovered), 5, what="recovery")
        wait_for(lambda: scanner.connected, 5, what="port open again")
        pty_port.write(b"AFTER\r")
        wait_for(lambda: len(rec.of(LineScanned)) == 2, 5, what="line after replug")
    finally:
        scanner.close()
    (fault,) = rec.of(HardwareFault)
    assert fault.device == "scanner"
    assert "read failed" in fault.detail
    assert faults(rec) == [fault, HardwareRecovered("scanner")]
    assert rec.of(LineScanned) == [LineScanned("BEFORE"), LineScanned("AFTER")]


@pytest.mark.timeout(30)
def test_a_flapping_cable_reopens_within_half_a_second(pty_port: PtyPort) -> None:
    """Issue 11 item 15: quick unplug/replug cycles must not push the reopen to seconds."""
    pty_port.plug()
    scanner = SerialScanner(str(pty_port.link), baudrate=9600, read_timeout_s=0.05)
    rec = Recorder()
    scanner.start(rec)
    try:
        assert scanner.connected  # start returned with the port open
        for _ in range(6):
            pty_port.unplug()
            wait_for(lambda: not scanner.connected, 5, what="unplug seen")
            pty_port.plug()
            replugged = time.monotonic()
            wait_for(lambda: scanner.connected, 5, what="reopen")
            assert time.monotonic() - replugged < 0.6
        pty_port.write(b"LK1:AFTER\r")
        wait_for(lambda: rec.of(LineScanned), 5, what="scan after the flapping")
    finally:
        scanner.close()
    kinds = [type(e) for e in faults(rec)]
    assert kinds[0] is HardwareFault and kinds[-1] is HardwareRecovered
    assert all(a is not b for a, b in itertools.pairwise(kinds))  # strictly paired
    assert rec.of(LineScanned) == [LineScanned("LK1:AFTER")]


@pytest.mark.timeout(30)
def test_input_written_right_after_start_is_not_lost(pty_port: PtyPort) -> None:
    """READY means every input is open: pySerial discards pending input when it opens."""
    pty_port.plug()
    scanner = SerialScanner(str(pty_port.link), baudrate=9600, read_timeout_s=0.05)
    rec = Recorder()
    scanner.start(rec)
    try:
        pty_port.write(b"LK1:FIRST\r")  # no wait: start() has returned
        wait_for(lambda: rec.of(LineScanned), 5, what="first scan")
    finally:
        scanner.close()
    assert rec.events == [LineScanned("LK1:FIRST")]


@pytest.mark.timeout(30)
def test_missing_port_at_start_is_one_fault_until_it_appears(pty_port: PtyPort) -> None:
    keypad = SerialKeypad(
        str(pty_port.link), baudrate=9600, retry_base_s=0.01, retry_max_s=0.02, read_timeout_s=0.05
    )
    rec = Recorder()
    keypad.start(rec)
    try:
        wait_for(lambda: rec.of(HardwareFault), 5, what="fault")
        assert "cannot open" in rec.of(HardwareFault)[0].detail
        pty_port.plug()
        wait_for(lambda: keypad.connected, 5, what="port open")
        pty_port.write(b"7#")
        wait_for(lambda: len(rec.of(KeyPressed)) == 2, 5, what="keys")
    finally:
        keypad.close()
    assert faults(rec) == [rec.of(HardwareFault)[0], HardwareRecovered("keypad")]


@pytest.mark.timeout(20)
def test_a_url_that_never_works_never_crashes() -> None:
    scanner = fast_scanner("nosuchprotocol://device")
    rec = Recorder()
    scanner.start(rec)
    wait_for(lambda: rec.events, 5, what="fault")
    started = time.monotonic()
    scanner.close()
    assert time.monotonic() - started < 0.5
    (fault,) = rec.events
    assert isinstance(fault, HardwareFault)
    assert "cannot open" in fault.detail


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="read_timeout_s"):
        SerialScanner("loop://", baudrate=9600, read_timeout_s=5)
    with pytest.raises(ValueError, match="retry"):
        SerialKeypad("loop://", baudrate=9600, retry_base_s=10, retry_max_s=1)
