"""The CU16 bus emulator, talked to over a real pty with pySerial, and its command line."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from hardware.boards.kerong import (
    CMD_QUERY,
    CMD_UNLOCK,
    BadChecksum,
    Frame,
    FrameSplitter,
    Garbage,
    encode_query,
    encode_status,
    encode_unlock,
)
from hardware.emulators.kerong import KerongEmulator
from tests.conftest import wait_for

ALL_LOCKED = encode_status(0, 0xFFFF, 0x0000)
NO_REPLY_WINDOW_S = 0.15  # how long "no reply" is watched for


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[KerongEmulator]:
    emulator = KerongEmulator([0, 1], pulse_s=0.05, open_delay_s=0.0, link=tmp_path / "ttyKR")
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def port(emu: KerongEmulator) -> Iterator[serial.Serial]:
    with serial.serial_for_url(emu.path, baudrate=19200, timeout=2.0) as p:
        yield p


def ask(port: serial.Serial, frame: bytes, size: int = 9) -> bytes:
    port.write(frame)
    return bytes(port.read(size))


def test_query_gets_the_status_of_the_addressed_board(port: serial.Serial) -> None:
    assert ask(port, encode_query(0)) == ALL_LOCKED
    assert ask(port, encode_query(1)) == encode_status(1, 0xFFFF, 0x0000)


def test_unlock_pulses_the_coil_and_the_door_swings_open(
    emu: KerongEmulator, port: serial.Serial
) -> None:
    before = time.monotonic()
    port.write(encode_unlock(0, 3))
    wait_for(lambda: emu.door_open(0, 3), 2.0, what="door 3 open")
    (pulse,) = emu.pulses()
    assert (pulse.board, pulse.channel) == (0, 3)
    assert pulse.on >= before
    wait_for(lambda: emu.pulses()[0].off is not None, 2.0, what="pulse over")
    assert emu.pulses()[0].off == pytest.approx(pulse.on + 0.05)
    assert ask(port, encode_query(0)) == encode_status(0, 0xFFFB, 0x0000)
    emu.close_door(0, 3)
    assert ask(port, encode_query(0)) == ALL_LOCKED
    (t, frame) = emu.frames(cmd=CMD_UNLOCK)[0]
    assert frame == Frame(0x02, CMD_UNLOCK)
    assert t == pulse.on
    assert len(emu.frames(cmd=CMD_QUERY, board=0)) == 2


def test_jammed_lock_pulses_but_stays_shut(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.set_jammed(0, 5)
    port.write(encode_unlock(0, 5))
    assert ask(port, encode_query(0)) == ALL_LOCKED  # open_delay_s is 0: it would show
    assert [(p.board, p.channel) for p in emu.pulses()] == [(0, 5)]
    emu.set_jammed(0, 5, False)
    port.write(encode_unlock(0, 5))
    assert ask(port, encode_query(0)) == encode_status(0, 0xFFEF, 0x0000)


def test_forced_door_and_items_show_in_the_status(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.force_open(1, 16)
    emu.set_item(1, 1, True)
    assert ask(port, encode_query(1)) == encode_status(1, 0x7FFF, 0x0001)
    emu.set_item(1, 1, False)
    emu.close_door(1, 16)
    assert ask(port, encode_query(1)) == encode_status(1, 0xFFFF, 0x0000)
    assert emu.pulses() == []


def test_auto_close_spares_a_door_left_open(tmp_path: Path) -> None:
    with KerongEmulator([0], pulse_s=0.01, open_delay_s=0.0, auto_close_s=0.05) as emu:
        emu.set_left_open(0, 2)
        with serial.serial_for_url(emu.path, timeout=1.0) as port:
            port.write(encode_unlock(0, 1) + encode_unlock(0, 2))
            wait_for(lambda: emu.door_open(0, 1) and emu.door_open(0, 2), 2.0, what="both open")
            wait_for(lambda: not emu.door_open(0, 1), 2.0, what="door 1 shut by itself")
            assert emu.door_open(0, 2)


def test_inverted_polarity(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.configure(0, lock_bit_locked=0)
    assert ask(port, encode_query(0)) == encode_status(0, 0x0000, 0x0000)
    emu.force_open(0, 1)
    assert ask(port, encode_query(0)) == encode_status(0, 0x0001, 0x0000)


def test_answer_unlock_switch(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.configure(0, answer_unlock=True)
    reply = ask(port, encode_unlock(0, 2))
    assert reply[:3] == bytes((0x02, 0x01, 0x35))  # the unlock's own address
    emu.configure(0, answer_unlock=False)
    port.write(encode_unlock(0, 3))
    port.timeout = NO_REPLY_WINDOW_S
    assert port.read(9) == b""
    assert len(emu.pulses()) == 2


def test_silent_board_neither_answers_nor_acts(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.configure(1, silent=True)
    port.timeout = NO_REPLY_WINDOW_S
    assert ask(port, encode_query(1)) == b""
    port.write(encode_unlock(1, 1))
    assert port.read(1) == b""
    assert emu.pulses() == []
    assert not emu.door_open(1, 1)
    assert ask(port, encode_query(0)) == ALL_LOCKED  # the other board is fine
    assert len(emu.frames(board=1)) == 2  # the wire log still has what was sent


def test_late_reply(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.configure(0, reply_delay_s=0.2)
    start = time.monotonic()
    assert ask(port, encode_query(0)) == ALL_LOCKED
    assert time.monotonic() - start >= 0.2


def test_corrupted_checksum(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.configure(0, corrupt_checksum=True)
    (result,) = FrameSplitter().feed(ask(port, encode_query(0)))
    assert isinstance(result, BadChecksum)
    assert result.raw[:-1] == ALL_LOCKED[:-1]


def test_noise_before_replies(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.configure(0, noise=b"\x00\xff")
    assert ask(port, encode_query(0), 11) == b"\x00\xff" + ALL_LOCKED


def test_split_replies_arrive_in_pieces(emu: KerongEmulator, port: serial.Serial) -> None:
    emu.configure(0, split=(3, 0.03))
    port.write(encode_query(0))
    arrivals: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + 2.0
    while sum(len(c) for _, c in arrivals) < 9 and time.monotonic() < deadline:
        chunk = port.read(max(1, port.in_waiting))
        arrivals.append((time.monotonic(), chunk))
    assert b"".join(c for _, c in arrivals) == ALL_LOCKED
    assert arrivals[-1][0] - arrivals[0][0] >= 2 * 0.03 - 0.005
    assert len(arrivals) >= 3


def test_received_bytes_are_recorded_as_frames_and_garbage(
    emu: KerongEmulator, port: serial.Serial
) -> None:
    port.write(b"\x55\xaa" + encode_query(0))
    assert port.read(9) == ALL_LOCKED
    items = [r.item for r in emu.received()]
    assert items == [Garbage(b"\x55\xaa"), Frame(0x00, CMD_QUERY)]
    port.write(b"\x02\x00")  # a truncated frame is given up once the line is quiet
    wait_for(lambda: len(emu.received()) == 3, 2.0, what="truncated frame recorded")
    assert ask(port, encode_query(0)) == ALL_LOCKED


def test_unplug_and_replug_through_the_link(emu: KerongEmulator, port: serial.Serial) -> None:
    assert os.path.realpath(emu.path).startswith("/dev/")
    emu.unplug()
    assert not os.path.lexists(emu.path)
    with pytest.raises(serial.SerialException):
        port.write(encode_query(0))
        port.read(9)
    emu.replug()
    assert os.path.exists(emu.path)
    with serial.serial_for_url(emu.path, timeout=2.0) as again:
        assert ask(again, encode_query(0)) == ALL_LOCKED


def test_serves_on_a_pyserial_url() -> None:
    master, slave = os.openpty()
    try:
        with KerongEmulator([2], port=os.ttyname(slave)) as emu:
            assert emu.path == os.ttyname(slave)
            os.write(master, encode_query(2))
            got = b""
            deadline = time.monotonic() + 2.0
            while len(got) < 9 and time.monotonic() < deadline:
                if select.select([master], [], [], 0.1)[0]:
                    got += os.read(master, 64)
            assert got == encode_status(2, 0xFFFF, 0x0000)
    finally:
        os.close(master)
        os.close(slave)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        KerongEmulator([0, 0])
    with pytest.raises(ValueError):
        KerongEmulator([16])
    with pytest.raises(ValueError):
        KerongEmulator([0], lock_bit_locked=2)
    emu = KerongEmulator([0])
    with pytest.raises(KeyError):
        emu.configure(3, silent=True)
    with pytest.raises(ValueError):
        emu.set_item(0, 17, True)


@pytest.mark.timeout(30)
def test_command_line_prints_the_pty_and_takes_commands() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hardware.emulators.kerong", "--boards", "0", "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        path = proc.stdout.readline().strip()
        with serial.serial_for_url(path, timeout=5.0) as port:
            assert ask(port, encode_query(3)) == encode_status(3, 0xFFFF, 0x0000)
            proc.stdin.write("item 3 4 1\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            assert ask(port, encode_query(3)) == encode_status(3, 0xFFFF, 0x0008)
            proc.stdin.write("bogus\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith("commands")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
