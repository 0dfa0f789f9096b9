"""The driver of one RS-485 bus of Kerong KR-CU16 lock boards (a :class:`LockBank`).

One worker thread owns the serial port and runs one transaction at a time: unlock requests
first, then the polls that are due. A reply ends on a quiet gap, never on an assumed length.
After a time-out, a bad checksum, a wrong address or stray bytes, the worker waits for the line
to go quiet, discards what came in and counts the error (:meth:`KerongBus.counters`), so a late
reply is never read as the answer to the next query.

An unlock whose write has started is never repeated: its :class:`UnlockResult` says
``sent=True`` and the door sensor tells the rest. Boards may or may not answer an unlock; an
answer arriving within a short window is consumed and ignored, and the unlocked board is not
queried again before a response time-out has passed (at most the unlock spacing), so a late
answer cannot pass for its status. Unlock frames are spaced by the boards' pulse plus a rest:
one coil at a time per bus.

Each board is polled every ``poll_interval_s`` and only changes are reported, items before
doors so that a door closing is judged with the item state of the same reading. A board that
misses ``fail_threshold`` polls in a row is declared down: its doors become UNKNOWN, its items
None, one :class:`HardwareFault` is reported, unlocks on it are refused, and it is polled with
back-off until it answers (:class:`HardwareRecovered`, then fresh states). A failing port (the
USB-RS485 adapter unplugged) does the same for the whole bus and is reopened with back-off.

Several boards on one bus share one instance; several buses are several instances. Constructor
arguments are plain values; the daemon maps the ``[[boards]]`` configuration onto them.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import termios
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import serial

from hardware.boards.kerong import (
    CHANNELS,
    MAX_BOARD,
    BadChecksum,
    BoardStatus,
    Frame,
    FrameSplitter,
    Garbage,
    ProtocolError,
    Truncated,
    decode_status,
    encode_query,
    encode_unlock,
)
from hardware.serial_io.ports import waiting
from locker.errors import HardwareError
from locker.ports import (
    DoorChanged,
    DoorState,
    EventSink,
    HardwareEvent,
    HardwareFault,
    HardwareRecovered,
    HardwareUnavailable,
    ItemChanged,
    LockBank,
    UnlockResult,
    guarded,
)

logger = logging.getLogger(__name__)

# What a failing port raises: pySerial wraps most errors, but not tcdrain's (termios.error).
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)
_MAX_BURST = 256  # bytes read for one reply before the line is declared babbling


@dataclass(frozen=True, slots=True)
class BoardSpec:
    """One board of the bus, as configured (``[[boards]]``)."""

    # No defaults: the config model's are the only ones (locker.config.sections.Board).
    name: str
    address: int
    lock_bit_locked: int
    poll_interval_s: float
    item_sensors: bool  # False: IR inputs not wired, items are reported as None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("board name must not be empty")
        if not 0 <= self.address <= MAX_BOARD:
            raise ValueError(f"board {self.name}: address must be 0-{MAX_BOARD}")
        if self.lock_bit_locked not in (0, 1):
            raise ValueError(f"board {self.name}: lock_bit_locked must be 0 or 1")
        if not 0 < self.poll_interval_s <= 60:
            raise ValueError(f"board {self.name}: poll_interval_s must be in (0, 60]")


@dataclass(frozen=True, slots=True)
class BusTiming:
    """Timing and tolerance of one bus (defaults suit 19200 baud and a USB-RS485 adapter).

    ``pulse_s`` is the boards' own unlock pulse; the next unlock frame on the bus is written no
    sooner than ``pulse_s + rest_s`` after the previous one, so at most one coil is on.
    """

    pulse_s: float  # timing.unlock_pulse_s and timing.unlock_rest_s: no defaults here, the
    rest_s: float  # config model's are the only ones
    response_timeout_s: float = 0.5
    quiet_gap_s: float = 0.025
    turnaround_s: float = 0.005
    unlock_reply_window_s: float = 0.1
    resync_quiet_s: float = 0.1
    fail_threshold: int = 3
    start_attempts: int = 2
    backoff_max_s: float = 5.0
    reopen_first_s: float = 0.2
    write_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value < 0 or (value == 0 and f.name not in ("turnaround_s", "rest_s")):
                raise ValueError(f"bus timing {f.name} must be positive, got {value}")


@dataclass(slots=True)
class BusCounters:
    """What the bus saw since start (a snapshot from :meth:`KerongBus.counters`)."""

    polls: int = 0
    replies: int = 0
    timeouts: int = 0
    bad_checksums: int = 0
    wrong_address: int = 0
    unexpected_frames: int = 0
    truncated: int = 0
    garbage_bytes: int = 0
    late_bytes: int = 0
    unlocks_sent: int = 0
    unlock_replies: int = 0
    unlocks_refused: int = 0
    port_errors: int = 0
    reopens: int = 0


class _Link(enum.Enum):
    PENDING = "pending"  # not read since start or since the port came back
    UP = "up"
    DOWN = "down"


@dataclass(eq=False)
class _Board:
    spec: BoardSpec
    channels: dict[int, str]  # channel -> compartment
    link: _Link = _Link.PENDING
    failures: int = 0
    interval: float = 0.0
    next_poll: float = 0.0
    unlocked_at: float = float("-inf")  # last unlock frame written to this board

    @property
    def device(self) -> str:
        return f"board:{self.spec.name}"

    @property
    def compartments(self) -> tuple[str, ...]:
        return tuple(self.channels[ch] for ch in sorted(self.channels))


class _PortError(HardwareError):
    pass


class _StopRequested(Exception):  # noqa: N818 - control flow, not an error
    pass


class KerongBus(LockBank):
    """The boards on one serial port.

    :param name: this bank's name (used in logs and the bus device name ``bus:<name>``).
    :param port: any pySerial URL (``/dev/ttyUSB1``, ``socket://host:port``, a pty path).
    :param boards: the boards on this bus (distinct names and addresses).
    :param compartments: compartment id -> (board name, channel 1-16).
    :param baudrate: 19200 for Kerong boards unless reconfigured.
    :param timing: time-outs, gaps, pulse and rest, fault threshold and back-off.
    """

    def __init__(
        self,
        name: str,
        port: str,
        boards: Sequence[BoardSpec],
        compartments: Mapping[str, tuple[str, int]],
        *,
        baudrate: int,
        timing: BusTiming,
    ) -> None:
        self.name = name
        self._url = port
        self._baudrate = baudrate
        self._t = timing
        self._boards = _build_boards(boards, compartments)
        self._where: dict[str, tuple[_Board, int]] = {}
        for board in self._boards:
            for ch, comp in board.channels.items():
                self._where[comp] = (board, ch)
        self._compartments = tuple(compartments)
        self._device = f"bus:{name}"
        self._slice = min(0.01, self._t.quiet_gap_s / 2)

        self._cond = threading.Condition()  # guards everything below that unlock()/doors() read
        self._unlocks: deque[str] = deque()
        self._doors = {c: DoorState.UNKNOWN for c in self._compartments}
        self._items: dict[str, bool | None] = {c: None for c in self._compartments}
        self._port_ok = False
        self._started = False
        self._closed = False

        # worker-thread state
        self._sink: EventSink | None = None
        self._port: serial.SerialBase | None = None
        self._bus_fault_open = False
        self._reopen_at = 0.0
        self._reopen_delay = self._t.reopen_first_s
        self._next_unlock_at = 0.0
        self._last_io = 0.0
        self._counters = BusCounters()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- LockBank -----------------------------------------------------------------------------

    @property
    def compartments(self) -> tuple[str, ...]:
        return self._compartments

    def start(self, sink: EventSink) -> None:
        """Open the port, read every board once, report every door, then poll in background.

        Returns within a bounded time; boards that do not answer are reported UNKNOWN with a
        fault, an unusable port as one bus fault (it is reopened in the background)."""
        with self._cond:
            if self._started or self._closed:
                raise RuntimeError(f"bus {self.name} was already started or closed")
            self._started = True
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name=f"kerong-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_bound()):
            logger.warning("bus %s: first reading of the boards is late", self.name)

    def unlock(self, compartment: str) -> None:
        """Queue one unlock; :class:`HardwareUnavailable` if the port or board is known down."""
        try:
            board, _ = self._where[compartment]
        except KeyError:
            raise KeyError(f"compartment {compartment!r} is not on bus {self.name}") from None
        with self._cond:
            if self._closed or not self._started:
                raise HardwareUnavailable(f"bus {self.name} is not running")
            if not self._port_ok:
                raise HardwareUnavailable(f"bus {self.name}: port unavailable")
            if board.link is not _Link.UP:
                raise HardwareUnavailable(f"board {board.spec.name} is not answering")
            self._unlocks.append(compartment)
            self._cond.notify_all()

    def doors(self) -> Mapping[str, DoorState]:
        with self._cond:
            return dict(self._doors)

    def items(self) -> Mapping[str, bool | None]:
        with self._cond:
            return dict(self._items)

    def close(self) -> None:
        """Stop the worker (pending unlocks end as ``sent=False``) and release the port."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0 + self._t.write_timeout_s)
            if self._thread.is_alive():
                logger.error("bus %s: worker did not stop", self.name)

    # -- observation --------------------------------------------------------------------------

    def counters(self) -> BusCounters:
        """A snapshot of the error and traffic counters."""
        return dataclasses.replace(self._counters)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    # -- worker -------------------------------------------------------------------------------

    def _start_bound(self) -> float:
        t = self._t
        attempt = t.response_timeout_s + t.resync_quiet_s * 11 + t.quiet_gap_s + t.turnaround_s
        return 2.0 + len(self._boards) * t.start_attempts * attempt

    def _run(self) -> None:
        try:
            try:
                self._initial_round()
            except _StopRequested:
                raise
            except Exception:
                logger.exception("bus %s: start failed", self.name, extra={"callback_error": True})
                self._port_failed("internal error", force=True)
            self._ready.set()
            while not self._stop.is_set():
                self._step_guarded()
        except _StopRequested:
            pass
        finally:
            self._ready.set()
            self._close_port()
            self._refuse_pending("bus closed")

    def _step_guarded(self) -> None:
        try:
            self._step()
        except _StopRequested:
            raise
        except Exception:
            # a bug, not a bus fault: log it loudly, start over from a fresh port
            logger.exception(
                "bus %s: worker step failed", self.name, extra={"callback_error": True}
            )
            self._port_failed("internal error")
            self._stop.wait(0.1)

    def _initial_round(self) -> None:
        try:
            self._open_port()
            for board in self._boards:
                status = None
                for _ in range(self._t.start_attempts):
                    status = self._poll_once(board)
                    if status is not None:
                        break
                if status is not None:
                    self._board_ok(board, status, force=True)
                else:
                    self._board_down(board, "no reply at start", force=True)
        except _PortError as exc:
            self._port_failed(str(exc), force=True)

    def _step(self) -> None:
        now = time.monotonic()
        if self._port is None:
            if now >= self._reopen_at:
                self._try_reopen()
            else:
                self._idle_until(self._reopen_at)
            return
        try:
            compartment = self._take_unlock(now)
            if compartment is not None:
                self._unlock(compartment)
                return
            board = self._due_board(now)
            if board is not None:
                self._poll(board)
                return
        except _PortError as exc:
            self._port_failed(str(exc))
            return
        self._idle_until(self._next_wakeup())

    def _take_unlock(self, now: float) -> str | None:
        """The next unlock to handle: when the rest is over, or at once if it will be refused."""
        with self._cond:
            if not self._unlocks:
                return None
            board, _ = self._where[self._unlocks[0]]
            if now >= self._next_unlock_at or board.link is not _Link.UP:
                return self._unlocks.popleft()
        return None

    def _due_board(self, now: float) -> _Board | None:
        with self._cond:
            if self._unlocks and now + self._t.response_timeout_s > self._next_unlock_at:
                return None  # a poll now could delay an unlock past its earliest time
        due = [b for b in self._boards if self._poll_time(b) <= now]
        return min(due, key=self._poll_time) if due else None

    def _poll_time(self, board: _Board) -> float:
        # A board that answers an unlock late could have its answer read as the reply to the
        # next query (same bytes when channel 1 was unlocked): leave it a response time-out,
        # but no more than the unlock spacing, so back-to-back unlocks cannot starve its polls.
        hold_off = min(self._t.response_timeout_s, self._t.pulse_s + self._t.rest_s)
        return max(board.next_poll, board.unlocked_at + hold_off)

    def _next_wakeup(self) -> float:
        t = min(self._poll_time(b) for b in self._boards)
        with self._cond:
            if self._unlocks:
                t = min(t, self._next_unlock_at)
        return t

    def _idle_until(self, t: float) -> None:
        with self._cond:
            if self._stop.is_set():
                return
            if self._unlocks and time.monotonic() >= self._next_unlock_at:
                return
            timeout = t - time.monotonic()
            if timeout > 0:
                self._cond.wait(min(timeout, 1.0))

    # -- transactions -------------------------------------------------------------------------

    def _unlock(self, compartment: str) -> None:
        board, channel = self._where[compartment]
        with self._cond:
            up = board.link is _Link.UP
        if not up:
            self._counters.unlocks_refused += 1
            self._emit(UnlockResult(compartment, False, f"board {board.spec.name} unreachable"))
            return
        try:
            self._settle()
            if self._stop.is_set():
                raise _StopRequested
        except (_StopRequested, _PortError) as exc:
            self._emit(UnlockResult(compartment, False, f"not sent: {str(exc) or 'bus closing'}"))
            raise
        try:
            self._write(encode_unlock(board.spec.address, channel))
        except _PortError as exc:
            self._emit(UnlockResult(compartment, True, f"write failed, outcome unknown: {exc}"))
            raise
        finally:
            board.unlocked_at = time.monotonic()
            self._next_unlock_at = board.unlocked_at + self._t.pulse_s + self._t.rest_s
        self._counters.unlocks_sent += 1
        self._emit(UnlockResult(compartment, True))
        if self._read_burst(self._t.unlock_reply_window_s):
            self._counters.unlock_replies += 1  # some boards answer an unlock; not a poll reply

    def _poll(self, board: _Board) -> None:
        status = self._poll_once(board)
        if status is not None:
            self._board_ok(board, status)
        else:
            self._board_failed(board)
        board.next_poll = time.monotonic() + board.interval

    def _poll_once(self, board: _Board) -> BoardStatus | None:
        """One query/reply; None (after resync) if it failed."""
        self._settle()
        self._counters.polls += 1
        self._write(encode_query(board.spec.address))
        burst = self._read_burst(self._t.response_timeout_s)
        if not burst:
            self._counters.timeouts += 1
            self._resync()
            return None
        status = self._parse_reply(burst, board)
        if status is None:
            self._resync()
            return None
        self._counters.replies += 1
        return status

    def _parse_reply(self, burst: bytes, board: _Board) -> BoardStatus | None:
        splitter = FrameSplitter()
        frames: list[Frame] = []
        broken = False
        for item in splitter.feed(burst) + splitter.flush():
            if isinstance(item, Frame):
                frames.append(item)
            elif isinstance(item, Garbage):
                self._counters.garbage_bytes += item.n  # line noise around a frame is tolerated
            elif isinstance(item, BadChecksum):
                self._counters.bad_checksums += 1
                broken = True
            elif isinstance(item, Truncated):
                self._counters.truncated += 1
                broken = True
        if broken or not frames:
            return None
        if len(frames) > 1:
            self._counters.unexpected_frames += 1  # a late reply plus ours: trust neither
            return None
        (frame,) = frames
        if frame.addr != board.spec.address << 4:
            self._counters.wrong_address += 1
            return None
        try:
            return decode_status(frame)
        except ProtocolError:
            self._counters.unexpected_frames += 1
            return None

    # -- line discipline ----------------------------------------------------------------------

    def _port_or_fail(self) -> serial.SerialBase:
        if self._port is None:
            raise _PortError("port closed")
        return self._port

    def _write(self, frame: bytes) -> None:
        port = self._port_or_fail()
        try:
            port.write(frame)
            port.flush()
        except _PORT_ERRORS as exc:
            raise _PortError(f"write failed: {exc}") from exc
        self._last_io = time.monotonic()

    def _read_some(self) -> bytes:
        port = self._port_or_fail()
        try:
            return bytes(port.read(max(1, waiting(port))))
        except _PORT_ERRORS as exc:
            raise _PortError(f"read failed: {exc}") from exc

    def _pending(self) -> int:
        port = self._port_or_fail()
        try:
            return waiting(port)
        except _PORT_ERRORS as exc:
            raise _PortError(f"port status failed: {exc}") from exc

    def _read_burst(self, first_byte_timeout: float) -> bytes:
        """Bytes from the first one until the line is quiet for ``quiet_gap_s`` (b"" if none
        arrived within ``first_byte_timeout``)."""
        deadline = time.monotonic() + first_byte_timeout
        buf = bytearray()
        last: float | None = None
        while len(buf) <= _MAX_BURST:
            if self._stop.is_set():
                raise _StopRequested
            now = time.monotonic()
            if (last is None and now >= deadline) or (
                last is not None and now - last >= self._t.quiet_gap_s
            ):
                break
            chunk = self._read_some()
            if chunk:
                buf += chunk
                last = time.monotonic()
        if buf:
            self._last_io = time.monotonic()
        return bytes(buf)

    def _resync(self) -> None:
        """Wait until the line has been quiet for ``resync_quiet_s``, discarding what comes."""
        t = self._t
        give_up = time.monotonic() + t.resync_quiet_s * 10
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < t.resync_quiet_s:
            if self._stop.is_set():
                raise _StopRequested
            if time.monotonic() > give_up:
                logger.warning("bus %s: line does not go quiet", self.name)
                break
            chunk = self._read_some()
            if chunk:
                self._counters.late_bytes += len(chunk)
                quiet_since = time.monotonic()
        self._last_io = time.monotonic()

    def _settle(self) -> None:
        """Before a transaction: no stray bytes pending, and the turnaround gap respected."""
        if self._pending():
            self._counters.late_bytes += len(self._read_some())
            self._resync()
        rest = self._last_io + self._t.turnaround_s - time.monotonic()
        if rest > 0 and self._stop.wait(rest):
            raise _StopRequested

    # -- board and port state -----------------------------------------------------------------

    def _board_ok(self, board: _Board, status: BoardStatus, force: bool = False) -> None:
        events: list[HardwareEvent] = []
        with self._cond:
            was = board.link
            board.link, board.failures = _Link.UP, 0
            board.interval = board.spec.poll_interval_s
        if self._bus_fault_open:
            self._bus_fault_open = False
            events.append(HardwareRecovered(self._device, self._compartments))
        if was is _Link.DOWN:
            events.append(HardwareRecovered(board.device, board.compartments))
        events += self._publish(board, status, force)
        self._emit_all(events)

    def _board_failed(self, board: _Board) -> None:
        board.failures += 1
        if board.link is _Link.DOWN:
            board.interval = min(board.interval * 2, self._t.backoff_max_s)
        elif board.failures >= self._t.fail_threshold:
            self._board_down(board, f"no valid reply to {board.failures} polls")

    def _board_down(self, board: _Board, detail: str, force: bool = False) -> None:
        with self._cond:
            board.link = _Link.DOWN
            board.interval = min(board.spec.poll_interval_s * 2, self._t.backoff_max_s)
        logger.warning("bus %s: board %s down: %s", self.name, board.spec.name, detail)
        events: list[HardwareEvent] = [HardwareFault(board.device, detail, board.compartments)]
        events += self._unknown(board, force)
        self._emit_all(events)

    def _publish(self, board: _Board, status: BoardStatus, force: bool) -> list[HardwareEvent]:
        items: list[HardwareEvent] = []
        doors: list[HardwareEvent] = []
        with self._cond:
            for ch in sorted(board.channels):
                comp = board.channels[ch]
                state = status.channel(ch, board.spec.lock_bit_locked)
                door = DoorState.CLOSED if state.locked else DoorState.OPEN
                if force or self._doors[comp] is not door:
                    self._doors[comp] = door
                    doors.append(DoorChanged(comp, door))
                present = state.item_present if board.spec.item_sensors else None
                if (force and board.spec.item_sensors) or self._items[comp] != present:
                    self._items[comp] = present
                    items.append(ItemChanged(comp, present))
        return items + doors

    def _unknown(self, board: _Board, force: bool) -> list[HardwareEvent]:
        items: list[HardwareEvent] = []
        doors: list[HardwareEvent] = []
        with self._cond:
            for comp in board.compartments:
                if force or self._doors[comp] is not DoorState.UNKNOWN:
                    self._doors[comp] = DoorState.UNKNOWN
                    doors.append(DoorChanged(comp, DoorState.UNKNOWN))
                if (force and board.spec.item_sensors) or self._items[comp] is not None:
                    self._items[comp] = None
                    items.append(ItemChanged(comp, None))
        return items + doors

    def _open_port(self) -> None:
        try:
            port = serial.serial_for_url(
                self._url,
                baudrate=self._baudrate,
                timeout=self._slice,
                write_timeout=self._t.write_timeout_s,
                exclusive=True,
            )
        except (*_PORT_ERRORS, ValueError) as exc:
            raise _PortError(f"cannot open {self._url}: {exc}") from exc
        self._port = port
        now = time.monotonic()
        self._last_io = now
        with self._cond:
            self._port_ok = True
        for board in self._boards:
            board.next_poll = now

    def _try_reopen(self) -> None:
        try:
            self._open_port()
        except _PortError as exc:
            logger.debug("bus %s: %s", self.name, exc)
            self._reopen_delay = min(self._reopen_delay * 2, self._t.backoff_max_s)
            self._reopen_at = time.monotonic() + self._reopen_delay
            return
        self._counters.reopens += 1
        self._reopen_delay = self._t.reopen_first_s
        logger.info("bus %s: port reopened", self.name)

    def _port_failed(self, detail: str, force: bool = False) -> None:
        self._counters.port_errors += 1
        self._close_port()
        self._reopen_at = time.monotonic() + self._reopen_delay
        self._refuse_pending(f"not sent: {detail}")
        events: list[HardwareEvent] = []
        if not self._bus_fault_open:
            self._bus_fault_open = True
            logger.warning("bus %s: %s", self.name, detail)
            events.append(HardwareFault(self._device, detail, self._compartments))
        for board in self._boards:
            with self._cond:
                if board.link is _Link.UP:
                    board.link, board.failures = _Link.PENDING, 0
            events += self._unknown(board, force)
        self._emit_all(events)

    def _close_port(self) -> None:
        with self._cond:
            self._port_ok = False
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except _PORT_ERRORS as exc:
                logger.debug("bus %s: close: %s", self.name, exc)

    def _refuse_pending(self, detail: str) -> None:
        with self._cond:
            pending = list(self._unlocks)
            self._unlocks.clear()
        self._counters.unlocks_refused += len(pending)
        self._emit_all([UnlockResult(c, False, detail) for c in pending])

    # -- events -------------------------------------------------------------------------------

    def _emit_all(self, events: list[HardwareEvent]) -> None:
        for event in events:
            self._emit(event)

    @guarded(logger)
    def _emit(self, event: HardwareEvent) -> None:
        if self._sink is not None:
            self._sink(event)


def _build_boards(
    boards: Sequence[BoardSpec], compartments: Mapping[str, tuple[str, int]]
) -> list[_Board]:
    if not boards:
        raise ValueError("a bus needs at least one board")
    by_name: dict[str, _Board] = {}
    addresses: set[int] = set()
    for spec in boards:
        if spec.name in by_name or spec.address in addresses:
            raise ValueError(f"board {spec.name}: name or address {spec.address} used twice")
        by_name[spec.name] = _Board(spec, {}, interval=spec.poll_interval_s)
        addresses.add(spec.address)
    for comp, (board_name, channel) in compartments.items():
        board = by_name.get(board_name)
        if board is None:
            raise ValueError(f"compartment {comp}: no board named {board_name!r} on this bus")
        if not 1 <= channel <= CHANNELS:
            raise ValueError(f"compartment {comp}: channel must be 1-{CHANNELS}")
        if channel in board.channels:
            raise ValueError(
                f"compartment {comp}: {board_name} channel {channel} already used by "
                f"{board.channels[channel]}"
            )
        board.channels[channel] = comp
    return list(by_name.values())
