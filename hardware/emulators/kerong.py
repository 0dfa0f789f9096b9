"""An emulated Kerong KR-CU16 bus: one or more boards behind a pty (or any pySerial URL).

It speaks the wire protocol of :mod:`hardware.boards.kerong` and models, per channel, the latch and
door (an unlock releases the latch and the door swings open after ``open_delay_s`` unless the
lock is jammed; the emulated person shuts it with :meth:`KerongEmulator.close_door`, or it shuts
itself after ``auto_close_s``), the item-presence sensor and the board's lock-bit polarity.
Fault switches, settable at any time from any thread, reproduce what real buses do: a silent
board, late replies, corrupted checksums, replies split in pieces, noise before replies, a
jammed lock, a door forced open or left open, inverted polarity, answering unlocks or not, an
adapter that echoes what the host sends (:meth:`KerongEmulator.configure_line`), and
the USB adapter being unplugged (:meth:`KerongEmulator.unplug` / :meth:`replug`).

Every byte received is cut into frames and recorded with its arrival time
(:meth:`KerongEmulator.received`), and every coil pulse a board performed is logged
(:meth:`KerongEmulator.pulses`), so tests and benchmarks can see what reached the wire and when.

``python -m hardware.emulators.kerong --boards 0 1`` serves boards on a pty, prints its path and
takes simple commands on stdin (``help`` lists them).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import heapq
import itertools
import logging
import os
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import serial

from hardware.boards.kerong import (
    CHANNELS,
    CMD_QUERY,
    CMD_UNLOCK,
    CMD_UNLOCK_ALL,
    Frame,
    FrameSplitter,
    SplitResult,
    encode_status,
)

logger = logging.getLogger(__name__)

_MAX_WAIT_S = 0.01  # longest the loop blocks, so switches and stop() act promptly
_RECORD_LIMIT = 100_000  # received-frame log entries kept (oldest dropped)


@dataclass(frozen=True, slots=True)
class Received:
    """One result of cutting the received bytes into frames, with its arrival time."""

    t: float  # time.monotonic() when its last byte was read
    item: SplitResult


@dataclass(frozen=True, slots=True)
class Pulse:
    """One coil energisation a board performed; ``off`` is None while it is still on."""

    board: int
    channel: int
    on: float
    off: float | None


@dataclass
class _Board:
    address: int
    lock_bit_locked: int
    answer_unlock: bool
    door_open: list[bool] = field(default_factory=lambda: [False] * CHANNELS)
    item: list[bool] = field(default_factory=lambda: [False] * CHANNELS)
    jammed: set[int] = field(default_factory=set)
    left_open: set[int] = field(default_factory=set)
    silent: bool = False
    reply_delay_s: float = 0.0
    corrupt_checksum: bool = False
    split_pieces: int = 1
    split_gap_s: float = 0.0
    noise: bytes = b""

    def status(self, lock_index: int = 0) -> bytes:
        lock_bits = item_bits = 0
        for i in range(CHANNELS):
            locked_bit = self.lock_bit_locked if not self.door_open[i] else 1 - self.lock_bit_locked
            lock_bits |= locked_bit << i
            item_bits |= int(self.item[i]) << i
        return encode_status(self.address, lock_bits, item_bits, lock_index)


class _Transport(Protocol):
    def read(self, timeout: float) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _PtyTransport:
    """The master end of a fresh pty; the slave is what the driver opens.

    The emulator keeps its own slave descriptor open so that reading the master never fails
    with EIO while the driver has the port closed (between reopen attempts)."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 4096)
        except BlockingIOError:
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                return  # nobody reads the slave: the bytes are lost, as on a real line
            view = view[n:]

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class _SerialTransport:
    """Any pySerial URL (a second USB-RS485 adapter, ``socket://`` ...)."""

    def __init__(self, url: str, baudrate: int) -> None:
        self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=_MAX_WAIT_S)
        self.path = url

    def read(self, timeout: float) -> bytes:
        return bytes(self._port.read(max(1, self._port.in_waiting)))

    def write(self, data: bytes) -> None:
        self._port.write(data)

    def close(self) -> None:
        self._port.close()


class KerongEmulator:
    """Boards at ``addresses`` sharing one emulated bus.

    :param addresses: board addresses (0-15) served on this bus.
    :param lock_bit_locked: initial polarity of every board (1: a set lock bit means locked).
    :param pulse_s: the boards' own unlock pulse length (for the coil log).
    :param open_delay_s: time from the unlock frame to the door swinging open.
    :param auto_close_s: if set, a door shuts itself this long after it opened.
    :param answer_unlock: whether boards reply to an unlock with a status frame.
    :param port: serve on this pySerial URL instead of a fresh pty.
    :param link: keep a symlink at this path pointing at the current pty (like a udev
        ``/dev/serial/by-id`` name), so a driver can reopen it after :meth:`replug`.
    :param quiet_gap_s: silence after which a partial frame is given up.
    :param on_frame: called on the emulator thread with (arrival time, frame) for every frame
        received, so a benchmark can wait on the wire without scanning the log; keep it cheap.
    """

    def __init__(
        self,
        addresses: Iterable[int] = (0,),
        *,
        lock_bit_locked: int = 1,
        pulse_s: float = 0.5,
        open_delay_s: float = 0.05,
        auto_close_s: float | None = None,
        answer_unlock: bool = False,
        port: str | None = None,
        baudrate: int = 19200,
        link: str | os.PathLike[str] | None = None,
        quiet_gap_s: float = 0.02,
        on_frame: Callable[[float, Frame], None] | None = None,
    ) -> None:
        addrs = list(addresses)
        if not addrs or len(set(addrs)) != len(addrs) or any(not 0 <= a <= 15 for a in addrs):
            raise ValueError(f"board addresses must be distinct and 0-15, got {addrs}")
        if lock_bit_locked not in (0, 1):
            raise ValueError("lock_bit_locked must be 0 or 1")
        if port is not None and link is not None:
            raise ValueError("link is for the pty mode only")
        self._boards = {a: _Board(a, lock_bit_locked, answer_unlock) for a in addrs}
        self.pulse_s = pulse_s
        self.open_delay_s = open_delay_s
        self.auto_close_s = auto_close_s
        self._port_url = port
        self._baudrate = baudrate
        self._link = Path(link) if link is not None else None
        self._quiet_gap_s = quiet_gap_s
        self._on_frame_hook = on_frame
        self._lock = threading.RLock()  # board state, logs and the action heap
        self._io_lock = threading.Lock()  # the transport (swapped by unplug/replug)
        self._transport: _Transport | None = None
        self._path: str | None = None
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._received: list[Received] = []
        self._pulses: list[tuple[int, int, float]] = []
        self._splitter = FrameSplitter()
        self._last_rx = 0.0
        self._echo = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Open the pty (or port), start serving, return the path a driver should open."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._plug()
        self._thread = threading.Thread(target=self._run, name="kerong-emulator", daemon=True)
        self._thread.start()
        return self.path

    @property
    def path(self) -> str:
        if self._link is not None:
            return str(self._link)
        if self._path is None:
            raise RuntimeError("emulator not started")
        return self._path

    def stop(self) -> None:
        """Stop serving and release the pty; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._unplug()

    def __enter__(self) -> KerongEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def unplug(self) -> None:
        """The USB adapter is pulled: the pty disappears (the driver's reads/writes fail)."""
        self._unplug()

    def replug(self) -> str:
        """The adapter comes back, as a new pty (and the ``link`` now points at it)."""
        self._plug()
        return self.path

    def _plug(self) -> None:
        with self._io_lock:
            if self._transport is not None:
                return
            if self._port_url is not None:
                transport: _PtyTransport | _SerialTransport = _SerialTransport(
                    self._port_url, self._baudrate
                )
            else:
                transport = _PtyTransport()
            self._path = transport.path
            if self._link is not None:
                tmp = self._link.with_name(self._link.name + ".new")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(transport.path)
                tmp.replace(self._link)
            self._transport = transport
        with self._lock:
            self._splitter.reset()

    def _unplug(self) -> None:
        with self._io_lock:
            if self._transport is None:
                return
            if self._link is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._link.unlink()
            self._transport.close()
            self._transport = None

    # -- fault switches and the emulated person ----------------------------------------------

    def configure(
        self,
        address: int,
        *,
        silent: bool | None = None,
        reply_delay_s: float | None = None,
        corrupt_checksum: bool | None = None,
        split: tuple[int, float] | None = None,
        noise: bytes | None = None,
        answer_unlock: bool | None = None,
        lock_bit_locked: int | None = None,
    ) -> None:
        """Change board-level switches; None leaves a switch as it is.

        ``silent``: the board neither acts nor replies (unpowered, cable cut).
        ``reply_delay_s``: every reply is written this late.
        ``corrupt_checksum``: replies carry a wrong SUM.
        ``split``: (pieces, gap_s) replies are written in this many pieces with gaps.
        ``noise``: bytes written just before every reply.
        ``lock_bit_locked``: the board's polarity (flip it to invert).
        """
        with self._lock:
            b = self._board(address)
            if silent is not None:
                b.silent = silent
            if reply_delay_s is not None:
                b.reply_delay_s = max(0.0, reply_delay_s)
            if corrupt_checksum is not None:
                b.corrupt_checksum = corrupt_checksum
            if split is not None:
                b.split_pieces, b.split_gap_s = max(1, split[0]), max(0.0, split[1])
            if noise is not None:
                b.noise = bytes(noise)
            if answer_unlock is not None:
                b.answer_unlock = answer_unlock
            if lock_bit_locked is not None:
                if lock_bit_locked not in (0, 1):
                    raise ValueError("lock_bit_locked must be 0 or 1")
                b.lock_bit_locked = lock_bit_locked

    def configure_line(self, *, echo: bool | None = None) -> None:
        """Change bus-level switches; None leaves a switch as it is.

        ``echo``: the host's adapter hands back every byte it sends (a half-duplex RS-485
        transceiver whose receiver stays enabled while it transmits).
        """
        with self._lock:
            if echo is not None:
                self._echo = echo

    def set_jammed(self, address: int, channel: int, jammed: bool = True) -> None:
        """A jammed lock pulses its coil but the door stays shut."""
        with self._lock:
            self._set_flag(self._board(address).jammed, _index(channel), jammed)

    def set_left_open(self, address: int, channel: int, left_open: bool = True) -> None:
        """The person walks away: this door does not shut by itself (``auto_close_s``)."""
        with self._lock:
            self._set_flag(self._board(address).left_open, _index(channel), left_open)

    def force_open(self, address: int, channel: int) -> None:
        """The door is pried (or, before start, simply is) open without an unlock."""
        with self._lock:
            self._board(address).door_open[_index(channel)] = True

    def close_door(self, address: int, channel: int) -> None:
        """The person pushes the door shut; the latch engages."""
        with self._lock:
            self._board(address).door_open[_index(channel)] = False

    def set_item(self, address: int, channel: int, present: bool) -> None:
        with self._lock:
            self._board(address).item[_index(channel)] = present

    def hold(self) -> contextlib.AbstractContextManager[object]:
        """Hold the boards still: changes made inside ``with emu.hold():`` show up in the same
        reply (a person putting an item in and shutting the door between two polls)."""
        return self._lock

    # -- observation ------------------------------------------------------------------------

    @property
    def addresses(self) -> tuple[int, ...]:
        return tuple(sorted(self._boards))

    def door_open(self, address: int, channel: int) -> bool:
        with self._lock:
            return self._board(address).door_open[_index(channel)]

    def item_present(self, address: int, channel: int) -> bool:
        with self._lock:
            return self._board(address).item[_index(channel)]

    def received(self) -> list[Received]:
        """Everything received so far (frames and garbage), oldest first."""
        with self._lock:
            return list(self._received)

    def frames(self, cmd: int | None = None, board: int | None = None) -> list[tuple[float, Frame]]:
        """Received frames with their arrival times, optionally of one command / board."""
        return [
            (r.t, r.item)
            for r in self.received()
            if isinstance(r.item, Frame)
            and (cmd is None or r.item.cmd == cmd)
            and (board is None or r.item.board == board)
        ]

    def pulses(self) -> list[Pulse]:
        """Every coil pulse a board performed, oldest first."""
        now = time.monotonic()
        with self._lock:
            raw = list(self._pulses)
        out = []
        for board, channel, on in raw:
            off = on + self.pulse_s
            out.append(Pulse(board, channel, on, off if now >= off else None))
        return out

    # -- the serving loop -------------------------------------------------------------------

    def _board(self, address: int) -> _Board:
        try:
            return self._boards[address]
        except KeyError:
            raise KeyError(f"no emulated board at address {address}") from None

    @staticmethod
    def _set_flag(flags: set[int], index: int, on: bool) -> None:
        if on:
            flags.add(index)
        else:
            flags.discard(index)

    def _schedule(self, at: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), action))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                logger.exception("emulator step failed", extra={"callback_error": True})
                self._stop.wait(0.05)

    def _step(self) -> None:
        timeout = self._next_timeout()
        with self._io_lock:
            transport = self._transport
            data = b""
            if transport is not None:
                try:
                    data = transport.read(timeout)
                except OSError as exc:
                    if exc.errno not in (errno.EINTR, errno.EAGAIN):
                        raise
        if transport is None:
            self._stop.wait(timeout)
        now = time.monotonic()
        if data and self._echo:
            self._write(data)  # on the wire at once, before any board can answer
        with self._lock:
            if data:
                self._last_rx = now
                self._handle(self._splitter.feed(data), now)
            elif self._splitter.pending and now - self._last_rx >= self._quiet_gap_s:
                self._handle(self._splitter.flush(), now)
            due = []
            while self._heap and self._heap[0][0] <= now:
                due.append(heapq.heappop(self._heap)[2])
        for action in due:
            action()

    def _next_timeout(self) -> float:
        with self._lock:
            wait = _MAX_WAIT_S
            if self._heap:
                wait = min(wait, self._heap[0][0] - time.monotonic())
            if self._splitter.pending:
                wait = min(wait, self._last_rx + self._quiet_gap_s - time.monotonic())
        return max(0.0, wait)

    def _handle(self, results: list[SplitResult], now: float) -> None:
        for item in results:
            self._received.append(Received(now, item))
            if isinstance(item, Frame):
                self._on_frame(item, now)
                if self._on_frame_hook is not None:
                    self._on_frame_hook(now, item)
        if len(self._received) > _RECORD_LIMIT:
            del self._received[: len(self._received) - _RECORD_LIMIT]

    def _on_frame(self, frame: Frame, now: float) -> None:
        board = self._boards.get(frame.board)
        if board is None or board.silent:
            return
        if frame.cmd == CMD_QUERY:
            self._reply(board, board.status(), now)
        elif frame.cmd == CMD_UNLOCK:
            self._unlock(board, frame.lock_index, now)
            if board.answer_unlock:
                self._reply(board, board.status(frame.lock_index), now)
        elif frame.cmd == CMD_UNLOCK_ALL:
            # a real board fires its coils one after another
            for i in range(CHANNELS):
                self._unlock(board, i, now + i * self.pulse_s)

    def _unlock(self, board: _Board, index: int, at: float) -> None:
        self._pulses.append((board.address, index + 1, at))
        if index in board.jammed:
            return
        if self.open_delay_s <= 0 and at <= time.monotonic():
            self._swing_open(board, index)  # before any frame that follows in the same read
        else:
            self._schedule(at + self.open_delay_s, lambda: self._swing_open(board, index))

    def _swing_open(self, board: _Board, index: int) -> None:
        with self._lock:
            board.door_open[index] = True
            if self.auto_close_s is not None:
                self._schedule(
                    time.monotonic() + self.auto_close_s, lambda: self._auto_close(board, index)
                )

    def _auto_close(self, board: _Board, index: int) -> None:
        with self._lock:
            if index not in board.left_open:
                board.door_open[index] = False

    def _reply(self, board: _Board, frame: bytes, now: float) -> None:
        if board.corrupt_checksum:
            frame = frame[:-1] + bytes(((frame[-1] + 1) & 0xFF,))
        payload = board.noise + frame
        pieces = _split(payload, board.split_pieces)
        at = now + board.reply_delay_s
        for k, piece in enumerate(pieces):
            self._schedule(at + k * board.split_gap_s, functools.partial(self._write, piece))

    def _write(self, data: bytes) -> None:
        with self._io_lock:
            if self._transport is None:
                return
            try:
                self._transport.write(data)
            except OSError as exc:
                logger.warning("emulator write failed: %s", exc)


def _index(channel: int) -> int:
    if not 1 <= channel <= CHANNELS:
        raise ValueError(f"channel must be 1-{CHANNELS}, got {channel}")
    return channel - 1


def _split(data: bytes, pieces: int) -> list[bytes]:
    pieces = max(1, min(pieces, len(data)))
    size, extra = divmod(len(data), pieces)
    out, start = [], 0
    for k in range(pieces):
        end = start + size + (1 if k < extra else 0)
        out.append(data[start:end])
        start = end
    return out


# -- command line ---------------------------------------------------------------------------

_HELP = """commands (B = board address, C = channel 1-16):
  close B C        the person shuts the door        open B C        force the door open
  item B C 0|1     item absent / present            jam B C 0|1     jam the lock or free it
  leftopen B C 0|1 door does not auto-close         silent B 0|1    board stops answering
  delay B SECONDS  late replies                     corrupt B 0|1   bad checksums
  polarity B 0|1   lock_bit_locked of the board     answer B 0|1    reply to unlocks
  echo 0|1         the adapter echoes what it sends
  status           doors and items of every board   help"""


def _command(emu: KerongEmulator, words: Sequence[str]) -> str:
    """Apply one stdin command; returns the line to print."""
    if not words:
        return ""
    cmd, args = words[0], [int(w) if w.isdigit() else w for w in words[1:]]
    per_channel: dict[str, Callable[[int, int, int], None]] = {
        "item": lambda b, c, v: emu.set_item(b, c, bool(v)),
        "jam": lambda b, c, v: emu.set_jammed(b, c, bool(v)),
        "leftopen": lambda b, c, v: emu.set_left_open(b, c, bool(v)),
    }
    if cmd in ("close", "open") and len(args) == 2:
        b, c = int(args[0]), int(args[1])
        (emu.close_door if cmd == "close" else emu.force_open)(b, c)
    elif cmd in per_channel and len(args) == 3:
        per_channel[cmd](int(args[0]), int(args[1]), int(args[2]))
    elif cmd in ("silent", "corrupt", "polarity", "answer") and len(args) == 2:
        b, v = int(args[0]), int(args[1])
        if cmd == "silent":
            emu.configure(b, silent=bool(v))
        elif cmd == "corrupt":
            emu.configure(b, corrupt_checksum=bool(v))
        elif cmd == "polarity":
            emu.configure(b, lock_bit_locked=v)
        else:
            emu.configure(b, answer_unlock=bool(v))
    elif cmd == "echo" and len(args) == 1:
        emu.configure_line(echo=bool(int(args[0])))
    elif cmd == "delay" and len(args) == 2:
        emu.configure(int(args[0]), reply_delay_s=float(args[1]))
    elif cmd == "status":
        return _status_text(emu)
    else:
        return _HELP
    return "ok"


def _status_text(emu: KerongEmulator) -> str:
    lines = []
    for addr in emu.addresses:
        doors = "".join("O" if emu.door_open(addr, c) else "." for c in range(1, CHANNELS + 1))
        items = "".join("I" if emu.item_present(addr, c) else "." for c in range(1, CHANNELS + 1))
        lines.append(f"board {addr}: doors {doors} items {items}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardware.emulators.kerong",
        description="Emulate Kerong KR-CU16 lock boards on a pty; prints the pty path.",
    )
    parser.add_argument("--boards", type=int, nargs="+", default=[0], help="board addresses")
    parser.add_argument("--lock-bit-locked", type=int, choices=(0, 1), default=1)
    parser.add_argument("--pulse", type=float, default=0.5, help="boards' unlock pulse, s")
    parser.add_argument("--auto-close", type=float, default=None, help="doors shut after s")
    parser.add_argument("--answer-unlock", action="store_true")
    parser.add_argument("--link", help="keep a symlink to the pty at this path")
    parser.add_argument("--port", help="serve on this pySerial URL instead of a pty")
    args = parser.parse_args(argv)
    # SIGTERM ends the process like Ctrl-C, through the same clean-up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        emu = KerongEmulator(
            args.boards,
            lock_bit_locked=args.lock_bit_locked,
            pulse_s=args.pulse,
            auto_close_s=args.auto_close,
            answer_unlock=args.answer_unlock,
            port=args.port,
            link=args.link,
        )
        path = emu.start()
    except (ValueError, OSError, serial.SerialException) as exc:
        print(f"kerong_emulator: {exc}", file=sys.stderr)
        return 2
    print(path, flush=True)
    try:
        for line in sys.stdin:
            try:
                reply = _command(emu, line.split())
            except (ValueError, KeyError) as exc:
                reply = f"error: {exc}"
            if reply:
                print(reply, flush=True)
        threading.Event().wait()  # stdin closed (started by the simulator): serve until killed
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
