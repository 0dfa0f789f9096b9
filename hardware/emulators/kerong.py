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
takes simple commands on stdin (``help`` lists them); that command line is in
:mod:`hardware.emulators.kerong_cli`, the pty and serial transports in
:mod:`hardware.emulators.transport`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

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
from hardware.emulators.transport import MAX_WAIT_S as _MAX_WAIT_S
from hardware.emulators.transport import PtyTransport, SerialTransport, Transport

logger = logging.getLogger(__name__)

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
        self._transport: Transport | None = None
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
                transport: PtyTransport | SerialTransport = SerialTransport(
                    self._port_url, self._baudrate
                )
            else:
                transport = PtyTransport()
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


if __name__ == "__main__":
    # The command line lives in kerong_cli; ``python -m hardware.emulators.kerong`` still runs it.
    from hardware.emulators.kerong_cli import main

    sys.exit(main())
