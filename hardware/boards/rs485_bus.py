"""The driver of one RS-485 bus of Kerong KR-CU16 lock boards (a :class:`LockBank`).

One worker thread owns the serial port and runs one transaction at a time: unlock requests
first, then the polls that are due. A reply is framed by its known structure (``02 ADDR 35``
and 9 bytes, checksum) and told apart by its command byte and board address, never by when it
arrives: the transaction ends on the reply's last byte, with no quiet-gap wait on the critical
path (DESIGN section 7, issue 10). Silence inside a frame longer than ``quiet_gap_s``, a bad
checksum or a time-out fail the transaction; the worker then waits for the line to go quiet,
discards what came in and counts the error (:meth:`KerongBus.counters`).

An adapter that echoes what it sends (a half-duplex transceiver with its receiver always on)
hands every written frame back: the echo of the frame just written is recognised and dropped
(counted as ``echoes``, logged once as "local echo"), so a healthy board never looks dead.

``unlock`` returns once the unlock frame is written when the bus can take it at once (nothing
to wait for but a transaction in flight), for at most ``unlock_wait_s``: the caller (the
controller, right after committing the unlock) then goes on with what can wait (waking the
MQTT sender, the state snapshot, the front panel) only once the frame is out, so none of it
competes with the bus worker for the interpreter before the frame (issue 10). An unlock that
must wait for the previous pulse and rest is queued and ``unlock`` returns at once.

An unlock whose write has started is never repeated: its :class:`UnlockResult` says
``sent=True`` and the door sensor tells the rest. Boards may or may not answer an unlock; an
answer is a status reading like any other (it came after the unlock), so there is no blind
window: the unlocked board is polled again at its normal interval and a door open for longer
than one poll interval is seen. A poll that is waiting for a board which has not started to
answer gives way to a queued unlock after ``preempt_after_s`` (and is retried right after), so
an unlock never waits behind a silent board. Unlock frames are spaced by the boards' pulse plus
a rest: one coil at a time per bus.

Each board is polled every ``poll_interval_s`` and only changes are reported, items before
doors so that a door closing is judged with the item state of the same reading. The schedule's
cost is estimated from the baud rate at start; a schedule the bus cannot keep is reported once
(:class:`HardwareFault` on the bus, ``poll schedule``) and late polls are counted
(``late_polls``). A board that misses ``fail_threshold`` polls in a row is declared down: its
doors become UNKNOWN, its items None, one :class:`HardwareFault` is reported, unlocks on it are
refused, and it is polled with back-off until it answers (:class:`HardwareRecovered`, then
fresh states). A failing port (the USB-RS485 adapter unplugged) does the same for the whole bus
and is reopened with back-off.

Several boards on one bus share one instance; several buses are several instances. Constructor
arguments are plain values; the daemon maps the ``[[boards]]`` configuration onto them. (Above
500 lines: the worker's transactions, line discipline and board state share one thread's
private state; splitting them would spread that state over modules.)
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
    REPLY_STATUS,
    BadChecksum,
    BoardStatus,
    Frame,
    FrameSplitter,
    Garbage,
    ProtocolError,
    SplitResult,
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
_MAX_BURST = 256  # bytes read while waiting for one reply before the line is declared babbling
_QUERY_LEN, _STATUS_LEN = 5, 9
_MAX_LOAD = 0.8  # share of the bus a poll schedule may take, leaving room for unlocks


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
    ``response_timeout_s`` bounds the wait for a reply's first byte; ``quiet_gap_s`` is the
    longest silence allowed inside a frame (longer: the frame is broken), never a wait after
    one. ``turnaround_s`` separates transactions (about 3.5 characters at 19200 baud, as
    Modbus RTU's inter-frame gap). ``preempt_after_s``: a poll whose board has not begun to
    answer by then gives way to a queued unlock. ``board_response_s`` is the boards' own
    reply latency, used only to estimate what poll schedule the bus can keep.
    ``unlock_wait_s``: the longest ``unlock`` waits for its frame to be written.
    """

    pulse_s: float  # timing.unlock_pulse_s and timing.unlock_rest_s: no defaults here, the
    rest_s: float  # config model's are the only ones
    response_timeout_s: float = 0.5
    quiet_gap_s: float = 0.025
    turnaround_s: float = 0.002
    unlock_reply_window_s: float = 0.05
    resync_quiet_s: float = 0.1
    fail_threshold: int = 3
    start_attempts: int = 2
    backoff_max_s: float = 5.0
    reopen_first_s: float = 0.2
    write_timeout_s: float = 1.0
    preempt_after_s: float = 0.03
    board_response_s: float = 0.002
    unlock_wait_s: float = 0.01

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            zero_ok = ("turnaround_s", "rest_s", "board_response_s")
            if value < 0 or (value == 0 and f.name not in zero_ok):
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
    echoes: int = 0  # our own frames handed back by the adapter (local echo), dropped
    preempted: int = 0  # polls that gave way to an unlock before their board answered
    late_polls: int = 0  # polls made more than one interval after they were due


def frame_time_s(n_bytes: int, baudrate: int) -> float:
    """Time ``n_bytes`` take on the wire at 8N1 (10 bits a byte)."""
    return n_bytes * 10 / baudrate


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

    @property
    def device(self) -> str:
        return f"board:{self.spec.name}"

    @property
    def compartments(self) -> tuple[str, ...]:
        return tuple(self.channels[ch] for ch in sorted(self.channels))


class _Outcome(enum.Enum):
    TIMEOUT = "timeout"  # no complete reply in time
    BROKEN = "broken"  # bad checksum or a frame cut short
    PREEMPTED = "preempted"  # gave way to an unlock before the board began to answer


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
        self._queued = 0  # unlocks ever queued, and of those ever written or refused:
        self._done = 0  # unlock() waits for its own number (bounded by unlock_wait_s)
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
        self._last_rx = 0.0
        self._last_written = b""
        self._rx = FrameSplitter()  # carries a partial frame from one read to the next
        # one poll on the wire: what an unlock due sooner than this does not wait behind
        self._poll_cost = (
            frame_time_s(_QUERY_LEN + _STATUS_LEN, baudrate)
            + self._t.board_response_s
            + self._t.turnaround_s
        )
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
            self._queued += 1
            ticket = self._queued
            self._cond.notify_all()
            if time.monotonic() >= self._next_unlock_at:
                # due now: give the worker the interpreter until the frame is out
                self._cond.wait_for(
                    lambda: self._done >= ticket or self._closed, self._t.unlock_wait_s
                )

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

    def schedule_load(self) -> float:
        """The share of the bus the configured poll schedule needs (1.0 = all of it),
        estimated from the baud rate: query and reply frames, the boards' reply latency and
        the turnaround gap per poll."""
        t = self._t
        per_poll = (
            frame_time_s(_QUERY_LEN + _STATUS_LEN, self._baudrate)
            + t.board_response_s
            + t.turnaround_s
        )
        return sum(per_poll / b.spec.poll_interval_s for b in self._boards)

    def _run(self) -> None:
        try:
            self._check_schedule()
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

    def _check_schedule(self) -> None:
        """Say so once when the configured poll intervals need more than the bus can carry
        (boards would be polled late, so their doors would be seen late)."""
        load = self.schedule_load()
        if load <= _MAX_LOAD:
            return
        rate = sum(1 / b.spec.poll_interval_s for b in self._boards)
        detail = (
            f"poll schedule needs {load:.0%} of the bus ({rate:.0f} polls/s at "
            f"{self._baudrate} baud): boards will be polled late; raise poll_interval_s "
            f"or split the boards over more buses"
        )
        logger.warning("bus %s: %s", self.name, detail)
        self._emit(HardwareFault(self._device, detail, ()))

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
                    status = self._poll_once(board, preemptible=False)
                    if isinstance(status, BoardStatus):
                        break
                if isinstance(status, BoardStatus):
                    self._board_ok(board, status, force=True)
                else:
                    self._board_down(board, self._no_reply_detail("no reply at start"), True)
        except _PortError as exc:
            self._port_failed(str(exc), force=True)

    def _no_reply_detail(self, what: str) -> str:
        if self._counters.echoes and not self._counters.replies:
            return f"{what} (the adapter echoes what it sends: local echo)"
        return what

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
                self._poll(board, now)
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
            if self._unlocks and now + self._poll_cost > self._next_unlock_at:
                return None  # this poll would still be running when the unlock falls due
        due = [b for b in self._boards if b.next_poll <= now]
        return min(due, key=lambda b: b.next_poll) if due else None

    def _next_wakeup(self) -> float:
        t = min(b.next_poll for b in self._boards)
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

    def _unlock_due(self) -> bool:
        with self._cond:
            return bool(self._unlocks) and time.monotonic() >= self._next_unlock_at

    # -- transactions -------------------------------------------------------------------------

    def _unlock(self, compartment: str) -> None:
        board, _ = self._where[compartment]
        try:
            written = self._write_unlock(compartment)
        finally:
            with self._cond:
                self._done += 1
                self._cond.notify_all()
        if not written:
            return
        # Some boards answer an unlock with their status: a reading like any other. Waiting
        # for it (ended by its last byte) keeps the next query from colliding with it.
        reply = self._await_status(board, self._t.unlock_reply_window_s, preemptible=False)
        if isinstance(reply, BoardStatus):
            self._counters.unlock_replies += 1
            self._board_ok(board, reply)
        elif reply is _Outcome.BROKEN:
            self._resync()

    def _write_unlock(self, compartment: str) -> bool:
        """Write one unlock frame and report its ``UnlockResult``; False: refused, not
        written."""
        board, channel = self._where[compartment]
        with self._cond:
            up = board.link is _Link.UP
        if not up:
            self._counters.unlocks_refused += 1
            self._emit(UnlockResult(compartment, False, f"board {board.spec.name} unreachable"))
            return False
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
            self._next_unlock_at = time.monotonic() + self._t.pulse_s + self._t.rest_s
        self._counters.unlocks_sent += 1
        self._emit(UnlockResult(compartment, True))
        return True

    def _poll(self, board: _Board, now: float) -> None:
        if now - board.next_poll > board.interval:
            self._counters.late_polls += 1
        status = self._poll_once(board, preemptible=True)
        if status is _Outcome.PREEMPTED:
            return  # not the board's fault: polled again right after the unlock
        if isinstance(status, BoardStatus):
            self._board_ok(board, status)
        else:
            self._board_failed(board)
        board.next_poll = max(board.next_poll + board.interval, time.monotonic())
        if board.link is not _Link.UP:
            board.next_poll = time.monotonic() + board.interval

    def _poll_once(self, board: _Board, *, preemptible: bool) -> BoardStatus | _Outcome:
        """One query and its reply; on failure (after resync) the outcome."""
        self._settle()
        self._counters.polls += 1
        self._write(encode_query(board.spec.address))
        reply = self._await_status(board, self._t.response_timeout_s, preemptible=preemptible)
        if reply is _Outcome.PREEMPTED:
            self._counters.polls -= 1
            self._counters.preempted += 1
        elif reply is _Outcome.TIMEOUT:
            self._counters.timeouts += 1
            self._resync()
        elif reply is _Outcome.BROKEN:
            self._resync()
        else:
            self._counters.replies += 1
        return reply

    def _await_status(
        self, board: _Board, first_byte_timeout: float, *, preemptible: bool
    ) -> BoardStatus | _Outcome:
        """Read until a status frame of ``board`` is complete: its last byte ends the wait.

        Frames of other kinds are classified and counted on the way (our own echo, another
        board's status, stray frames, noise). ``preemptible``: give way to a due unlock while
        the board has not begun to answer after ``preempt_after_s``."""
        start = time.monotonic()
        deadline = start + first_byte_timeout
        seen = 0
        while True:
            if self._stop.is_set():
                raise _StopRequested
            now = time.monotonic()
            if (
                self._rx.pending
                and now - self._last_rx >= self._t.quiet_gap_s
                and (cut := self._classify(self._rx.flush(), board)) is not None
            ):
                return cut  # silence inside a frame: it was cut short
            if not self._rx.pending and now >= deadline:
                return _Outcome.TIMEOUT
            if seen > _MAX_BURST:
                self._counters.garbage_bytes += self._rx.pending
                return _Outcome.BROKEN
            if (
                preemptible
                and not self._rx.pending
                and now - start >= self._t.preempt_after_s
                and self._unlock_due()
            ):
                return _Outcome.PREEMPTED
            chunk = self._read_some()
            if not chunk:
                continue
            seen += len(chunk)
            self._last_rx = time.monotonic()
            found = self._classify(self._rx.feed(chunk), board)
            if found is not None:
                return found

    def _classify(self, items: list[SplitResult], board: _Board) -> BoardStatus | _Outcome | None:
        """Sort what the splitter cut: the status of ``board`` ends the wait, a broken frame
        fails it, the rest is counted and dropped (None: keep waiting)."""
        for i, item in enumerate(items):
            if isinstance(item, Garbage):
                self._counters.garbage_bytes += item.n  # line noise around a frame is tolerated
            elif isinstance(item, BadChecksum):
                self._counters.bad_checksums += 1
                return _Outcome.BROKEN
            elif isinstance(item, Truncated):
                self._counters.truncated += 1
                return _Outcome.BROKEN
            elif item.raw == self._last_written:
                self._echo()
            elif item.cmd != REPLY_STATUS:
                self._counters.unexpected_frames += 1
            elif item.board != board.spec.address:
                self._counters.wrong_address += 1
            else:
                try:
                    status = decode_status(item)
                except ProtocolError:
                    self._counters.unexpected_frames += 1
                    continue
                self._drop_rest(items[i + 1 :])
                return status
        return None

    def _drop_rest(self, items: list[SplitResult]) -> None:
        """What followed the awaited frame in the same read: counted as late, not used."""
        for item in items:
            if isinstance(item, Frame) and item.raw == self._last_written:
                self._echo()
            else:
                self._counters.late_bytes += len(item.raw)

    def _echo(self) -> None:
        self._counters.echoes += 1
        if self._counters.echoes == 1:
            logger.warning(
                "bus %s: the adapter echoes every frame it sends (local echo); echoes are dropped",
                self.name,
            )

    # -- line discipline ----------------------------------------------------------------------

    def _port_or_fail(self) -> serial.SerialBase:
        if self._port is None:
            raise _PortError("port closed")
        return self._port

    def _write(self, frame: bytes) -> None:
        port = self._port_or_fail()
        self._last_written = frame
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

    def _resync(self) -> None:
        """Wait until the line has been quiet for ``resync_quiet_s``, discarding what comes."""
        t = self._t
        self._counters.late_bytes += self._rx.pending
        self._rx.reset()
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
        """Before a transaction: what arrived since the last one (a late answer, an echo) is
        counted and dropped without waiting for silence, and the turnaround gap is kept."""
        if self._pending():
            for item in self._rx.feed(self._read_some()):
                if isinstance(item, Frame) and item.raw == self._last_written:
                    self._echo()
                else:
                    self._counters.late_bytes += len(item.raw)
            self._last_rx = time.monotonic()
        if self._rx.pending and time.monotonic() - self._last_rx >= self._t.quiet_gap_s:
            self._counters.late_bytes += self._rx.pending
            self._rx.reset()
        rest = max(self._last_io, self._last_rx) + self._t.turnaround_s - time.monotonic()
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
            self._done += len(pending)
            self._cond.notify_all()
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
