"""Serial input devices: the QR scanner and the serial keypad, on any pySerial URL.

The byte rules are pure and separate from the port so they can be fuzzed:

- :class:`LineAssembler` frames scanner lines (DESIGN section 7): terminated by CR, LF or CRLF
  (one terminator), at most :data:`MAX_LINE` bytes, printable ASCII only, empty lines ignored,
  an identical line repeated within ``repeat_window_s`` of the previous one ignored, a partial
  line left without terminator for ``idle_timeout_s`` dropped. Its buffer never holds more
  than :data:`MAX_LINE` bytes whatever arrives. A scanner set to send the AIM symbology
  identifier (ISO/IEC 15424: ``]`` + code character + modifier, ``]Q1`` for a QR Code) has it
  recognised and removed, so the token behind it is read as it would be without.
- :class:`KeyDecoder` turns serial keypad bytes into keys: ``0-9 * #``, CR or LF as ``#``
  (CRLF once); a run of other bytes is one rejection.

:class:`SerialScanner` and :class:`SerialKeypad` run one reader thread each. A port that cannot
be opened or fails while reading (USB unplugged) is reported once as ``HardwareFault``; the
thread then retries with jittered exponential back-off capped at ``retry_max_s`` (half a second:
a cable that flaps must not leave the port closed for seconds while someone scans; a failed
open of an absent device costs one syscall) and reports ``HardwareRecovered`` when the port
opens again. ``start`` returns only after the first attempt to open the port, so a daemon that
says READY has its inputs open (pySerial discards what is pending when it opens a port).
Nothing here raises into the daemon.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Protocol, TypedDict, Unpack

import serial

from hardware.serial_io.ports import waiting
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
    LineScanned,
    deliver,
    guarded,
)

logger = logging.getLogger(__name__)

MAX_LINE: Final = 512
REPEAT_WINDOW_S: Final = 2.0
IDLE_TIMEOUT_S: Final = 1.0
RETRY_BASE_S: Final = 0.05
RETRY_MAX_S: Final = 0.5
START_WAIT_S: Final = 2.0  # longest ``start`` waits for the first open attempt

CR: Final = 0x0D
LF: Final = 0x0A
DEL: Final = 0x7F

ScannerEvent = LineScanned | InputRejected
KeypadEvent = KeyPressed | InputRejected
Clock = Callable[[], float]
Opener = Callable[[], serial.SerialBase]


def _scanner_rejected(reason: str) -> InputRejected:
    return InputRejected(InputSource.SCANNER, reason)


def strip_aim(text: str) -> str:
    """``text`` without a leading AIM symbology identifier (ISO/IEC 15424 ``]cm``: ``]``, a
    code character A-Z/a-z, a modifier 0-9/A-Z). No token or code starts with ``]``."""
    if len(text) >= 3 and text[0] == "]" and text[1].isalpha() and text[2].isalnum():
        return text[3:]
    return text


def _byte_fault(byte: int) -> str | None:
    """Why a non-terminator byte may not be part of a scanned line (None: it may)."""
    if byte < 0x20 or byte == DEL:
        return "control byte"
    if byte > DEL:
        return "non-ASCII byte"
    return None


class LineAssembler:
    """Frames scanner bytes into checked lines (rules in the module docstring).

    :param clock: monotonic seconds; injectable so tests control the repeat window and the
        inter-byte timeout.
    """

    def __init__(
        self,
        *,
        max_len: int = MAX_LINE,
        repeat_window_s: float = REPEAT_WINDOW_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_len < 1:
            raise ValueError("max_len must be positive")
        self._max_len = max_len
        self._repeat_window_s = repeat_window_s
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._buf = bytearray()
        self._discarding = False  # rest of a rejected line, until its terminator
        self._after_cr = False  # an LF right after a CR is the same terminator
        self._last_byte_at = 0.0
        self._last_line: tuple[str, float] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[ScannerEvent]:
        """Take the next bytes from the port; return what they completed."""
        if not data:
            return []
        now = self._clock()
        out = self._drop_stale(now)
        for byte in data:
            if byte in (CR, LF):
                if byte == LF and self._after_cr:
                    self._after_cr = False
                    continue
                self._after_cr = byte == CR
                out.extend(self._end_line(now))
                continue
            self._after_cr = False
            if not self._discarding:
                self._take(byte, out)
        self._last_byte_at = now
        return out

    def idle(self) -> list[ScannerEvent]:
        """Nothing arrived for a while: drop a partial line older than the idle timeout."""
        return self._drop_stale(self._clock())

    def flush(self) -> list[ScannerEvent]:
        """Forget a partial line (the port went away); report it if there was one."""
        out: list[ScannerEvent] = [_scanner_rejected("incomplete line")] if self._buf else []
        self._buf.clear()
        self._discarding = False
        self._after_cr = False
        return out

    def _take(self, byte: int, out: list[ScannerEvent]) -> None:
        reason = _byte_fault(byte)
        if reason is None and len(self._buf) >= self._max_len:
            reason = "too long"
        if reason is None:
            self._buf.append(byte)
            return
        out.append(_scanner_rejected(reason))
        self._buf.clear()
        self._discarding = True

    def _end_line(self, now: float) -> list[ScannerEvent]:
        if self._discarding:
            self._discarding = False
            return []
        if not self._buf:
            return []
        text = strip_aim(self._buf.decode("ascii"))
        self._buf.clear()
        if not text:
            return []
        last, self._last_line = self._last_line, (text, now)
        # the window slides: a code held in front of a continuous-mode scanner counts once
        if last is not None and last[0] == text and now - last[1] < self._repeat_window_s:
            return []
        return [LineScanned(text)]

    def _drop_stale(self, now: float) -> list[ScannerEvent]:
        if now - self._last_byte_at < self._idle_timeout_s:
            return []
        # a rejected line in discard mode was reported already
        return self.flush()


class KeyDecoder:
    """Serial keypad bytes -> keys (rules in the module docstring)."""

    KEYS: Final = frozenset(ord(k) for k in LOCKER_KEYS)

    def __init__(self) -> None:
        self._after_cr = False
        self._bad_run = False

    def feed(self, data: bytes) -> list[KeypadEvent]:
        out: list[KeypadEvent] = []
        for byte in data:
            key = self._key(byte)
            if key is not None:
                self._bad_run = False
                out.append(KeyPressed(key))
            elif byte == LF:
                continue  # the LF of a CRLF
            elif not self._bad_run:
                self._bad_run = True
                out.append(InputRejected(InputSource.KEYPAD, "unsupported byte"))
        return out

    def idle(self) -> list[KeypadEvent]:
        """A quiet line ends a run of bad bytes: the next garbage is reported again."""
        self._bad_run = False
        return []

    def flush(self) -> list[KeypadEvent]:
        self._after_cr = False
        return self.idle()

    def _key(self, byte: int) -> str | None:
        """The key a byte stands for; None for a swallowed LF or an unsupported byte."""
        after_cr, self._after_cr = self._after_cr, byte == CR
        if byte in self.KEYS:
            return chr(byte)
        if byte == CR or (byte == LF and not after_cr):
            return "#"
        return None


class Decoder(Protocol):
    """The byte rules a reader applies (:class:`LineAssembler`, :class:`KeyDecoder`)."""

    def feed(self, data: bytes) -> Sequence[HardwareEvent]: ...

    def idle(self) -> Sequence[HardwareEvent]: ...

    def flush(self) -> Sequence[HardwareEvent]: ...


class PortOptions(TypedDict, total=False):
    """:class:`SerialInput`'s optional port options, for subclasses that add their own."""

    name: str | None
    read_timeout_s: float
    retry_base_s: float
    retry_max_s: float
    opener: Opener | None


class SerialInput(InputDevice):
    """A reader thread on one pySerial port, with fault reporting and reconnection.

    :param url: any pySerial URL or device path.
    :param read_timeout_s: how long one read blocks; bounds how fast ``close`` returns.
    :param retry_base_s: first back-off after a failure; doubles up to ``retry_max_s`` while
        the port keeps failing, and starts again from here after every successful open.
    :param opener: builds the open port (tests pass a ``loop://`` port they also write to);
        default ``serial.serial_for_url(url, baudrate, timeout=read_timeout_s)``.
    """

    default_name: ClassVar[str] = "serial"  # ``name`` when none is given

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        baudrate: int,  # [keypad]/[scanner] baudrate: the config model holds the default
        read_timeout_s: float = 0.1,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        opener: Opener | None = None,
    ) -> None:
        name = name or self.default_name
        if not 0 < read_timeout_s <= 1.0:
            raise ValueError(f"read_timeout_s must be in (0, 1], got {read_timeout_s}")
        if not 0 < retry_base_s <= retry_max_s:
            raise ValueError("need 0 < retry_base_s <= retry_max_s")
        self.name = name
        self.url = url
        self._baudrate = baudrate
        self._read_timeout_s = read_timeout_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._opener = opener or self._open_url
        self._sink: EventSink | None = None
        self._stop = threading.Event()
        self._faulted = False
        self._port_lock = threading.Lock()
        self._port: serial.SerialBase | None = None
        self._first_attempt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-reader", daemon=True)

    @property
    def connected(self) -> bool:
        """True while the port is open and being read."""
        with self._port_lock:
            return self._port is not None

    def start(self, sink: EventSink) -> None:
        if self._sink is not None or self._stop.is_set():
            raise RuntimeError(f"{self.name} already started or closed")
        self._sink = sink
        self._thread.start()
        # READY means every input is open: wait for the first open (or its failure, reported)
        if not self._first_attempt.wait(START_WAIT_S):
            logger.warning("%s: port not open after %.1f s", self.name, START_WAIT_S)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the reader and close the port; idempotent, returns within a read timeout."""
        self._stop.set()
        with self._port_lock:
            port = self._port
        if port is not None and hasattr(port, "cancel_read"):
            try:
                port.cancel_read()
            except Exception:
                logger.debug("%s: cancel_read failed", self.name, exc_info=True)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("%s: reader did not stop within %.1fs", self.name, timeout)

    @abc.abstractmethod
    def _decoder(self) -> Decoder: ...

    # -- reader thread --------------------------------------------------------------------

    def _open_url(self) -> serial.SerialBase:
        return serial.serial_for_url(
            self.url, baudrate=self._baudrate, timeout=self._read_timeout_s, exclusive=True
        )

    def _run(self) -> None:
        decoder = self._decoder()
        delay = self._retry_base_s
        while not self._stop.is_set():
            port = self._try_open()
            if port is not None:
                with self._port_lock:
                    self._port = port
                self._first_attempt.set()
                delay = self._retry_base_s
                self._serve(port, decoder)
            self._first_attempt.set()
            if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                break
            delay = min(delay * 2, self._retry_max_s)
        self._first_attempt.set()

    def _try_open(self) -> serial.SerialBase | None:
        try:
            port = self._opener()
        except Exception as exc:
            # SerialException/OSError (absent, unplugged, busy), ValueError (bad URL) and
            # anything else: this thread must outlive every failure of the device
            self._fault(f"cannot open: {exc}")
            return None
        if self._faulted:
            self._faulted = False
            logger.warning("%s: port open again", self.name)
            self._emit(HardwareRecovered(self.name))
        return port

    def _serve(self, port: serial.SerialBase, decoder: Decoder) -> None:
        try:
            while not self._stop.is_set():
                data = port.read(max(1, waiting(port)))
                self._handle(decoder, data)
        except Exception as exc:
            if not self._stop.is_set():
                self._fault(f"read failed: {exc}")
        finally:
            with self._port_lock:
                self._port = None
            self._close_port(port)
            lost = decoder.flush()
            if not self._stop.is_set():
                for event in lost:
                    self._emit(event)

    @guarded(logger)
    def _handle(self, decoder: Decoder, data: bytes) -> None:
        for event in decoder.feed(data) if data else decoder.idle():
            self._emit(event)

    def _fault(self, detail: str) -> None:
        if self._faulted:
            return
        self._faulted = True
        logger.error("%s: %s", self.name, detail)
        self._emit(HardwareFault(self.name, detail))

    def _close_port(self, port: serial.SerialBase) -> None:
        try:
            port.close()
        except Exception:
            logger.debug("%s: closing the port failed", self.name, exc_info=True)

    def _emit(self, event: HardwareEvent) -> None:
        deliver(self._sink, event, self.name)


class SerialScanner(SerialInput):
    """A QR scanner in USB-CDC serial mode: reports ``LineScanned`` / ``InputRejected``.

    Port options as :class:`SerialInput`; ``clock`` drives the repeat window and the
    inter-byte timeout (tests inject one).
    """

    default_name = "scanner"

    def __init__(
        self,
        url: str,
        *,
        baudrate: int,  # [keypad]/[scanner] baudrate: the config model holds the default
        repeat_window_s: float = REPEAT_WINDOW_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        clock: Clock = time.monotonic,
        **port: Unpack[PortOptions],
    ) -> None:
        super().__init__(url, baudrate=baudrate, **port)
        self._repeat_window_s = repeat_window_s
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock

    def _decoder(self) -> Decoder:
        return LineAssembler(
            repeat_window_s=self._repeat_window_s,
            idle_timeout_s=self._idle_timeout_s,
            clock=self._clock,
        )


class SerialKeypad(SerialInput):
    """A keypad that sends one ASCII byte per key: reports ``KeyPressed`` / ``InputRejected``.
    Port options as :class:`SerialInput`."""

    default_name = "keypad"

    def _decoder(self) -> Decoder:
        return KeyDecoder()
