"""The Kerong KR-CU16 wire protocol: frames, checksum, a stream splitter and status decoding.

Pure code, no I/O. Host->board frames are ``02 ADDR CMD 03 SUM`` with
``ADDR = (board << 4) | lock_index`` and SUM the low byte of the sum of every preceding byte;
a board's status reply is ``02 ADDR 35 L1-8 L9-16 IR1-8 IR9-16 03 SUM`` (DESIGN section 7,
reference ``lockers.md`` section 4.1).

The encoder offers exactly what the daemon may send: unlock one lock (``31``) and query one
board (``30``). "Unlock all" (``33``) is deliberately absent and refused by the generic
encoder, so no code path of the daemon can open a whole board by mistake. The status encoder is
here for the emulator.

:class:`FrameSplitter` cuts an arbitrary byte stream into typed results (:class:`Frame`,
:class:`Garbage`, :class:`BadChecksum`, :class:`Truncated`); every input byte ends up in exactly
one result and it never holds more than :data:`MAX_FRAME` - 1 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from locker.errors import ContractError

STX = 0x02
ETX = 0x03

CMD_QUERY = 0x30
CMD_UNLOCK = 0x31
CMD_QUERY_ALL = 0x32
CMD_UNLOCK_ALL = 0x33
REPLY_STATUS = 0x35
REPLY_STATUS_ALL = 0x36

CHANNELS = 16
MAX_BOARD = 15
MAX_FRAME = 16
"""No frame of this protocol family is longer; a start byte that has not become a frame within
this many bytes was noise."""

# Frame lengths fixed by the command byte. Other command bytes are framed by ETX + valid SUM.
_KNOWN_LENGTHS: dict[int, int] = {
    CMD_QUERY: 5,
    CMD_UNLOCK: 5,
    CMD_QUERY_ALL: 5,
    CMD_UNLOCK_ALL: 5,
    REPLY_STATUS: 9,
    REPLY_STATUS_ALL: 9,
}
_REFUSED_COMMANDS = frozenset({CMD_UNLOCK_ALL})


class ProtocolError(ContractError):
    """A well-formed frame that is not what was expected (wrong command, address or size)."""


def checksum(data: bytes | bytearray) -> int:
    """Low byte of the arithmetic sum of ``data``."""
    return sum(data) & 0xFF


def _check_board(board: int) -> None:
    if not 0 <= board <= MAX_BOARD:
        raise ValueError(f"board address must be 0-{MAX_BOARD}, got {board}")


def _check_channel(channel: int) -> None:
    if not 1 <= channel <= CHANNELS:
        raise ValueError(f"channel must be 1-{CHANNELS}, got {channel}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame with a valid ETX and checksum."""

    addr: int
    cmd: int
    data: bytes = b""

    @property
    def board(self) -> int:
        return self.addr >> 4

    @property
    def lock_index(self) -> int:
        return self.addr & 0x0F

    @property
    def raw(self) -> bytes:
        body = bytes((STX, self.addr, self.cmd, *self.data, ETX))
        return body + bytes((checksum(body),))


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that belong to no frame (line noise, the tail of a lost frame)."""

    raw: bytes

    @property
    def n(self) -> int:
        return len(self.raw)


@dataclass(frozen=True, slots=True)
class BadChecksum:
    """A frame whose ETX is in place but whose SUM does not match."""

    raw: bytes
    expected: int
    actual: int


@dataclass(frozen=True, slots=True)
class Truncated:
    """The start of a frame that the stream ended in (only from :meth:`FrameSplitter.flush`)."""

    raw: bytes


FrameError = Garbage | BadChecksum | Truncated
SplitResult = Frame | FrameError


def encode_frame(addr: int, cmd: int, data: bytes = b"") -> bytes:
    """Build any host frame except the refused ones (``33``, unlock all)."""
    if not 0 <= addr <= 0xFF or not 0 <= cmd <= 0xFF:
        raise ValueError("address and command are single bytes")
    if cmd in _REFUSED_COMMANDS:
        raise ValueError(f"command {cmd:#04x} is never sent")
    if len(data) > MAX_FRAME - 5:
        raise ValueError("frame data too long")
    return Frame(addr, cmd, bytes(data)).raw


def encode_unlock(board: int, channel: int) -> bytes:
    """Unlock one lock: ``channel`` 1-16 on ``board`` 0-15 (``02 00 31 03 36`` = 0/1)."""
    _check_board(board)
    _check_channel(channel)
    return encode_frame((board << 4) | (channel - 1), CMD_UNLOCK)


def encode_query(board: int) -> bytes:
    """Ask one board for its lock and item bits (``02 00 30 03 35`` for board 0)."""
    _check_board(board)
    return encode_frame(board << 4, CMD_QUERY)


@dataclass(frozen=True, slots=True)
class ChannelState:
    locked: bool
    item_present: bool


@dataclass(frozen=True, slots=True)
class BoardStatus:
    """Raw bits of one status reply: bit ``ch - 1`` is channel ``ch``."""

    board: int
    lock_bits: int
    item_bits: int

    def channel(self, channel: int, lock_bit_locked: int) -> ChannelState:
        """The state of ``channel`` 1-16, the lock bit read with the configured polarity."""
        _check_channel(channel)
        _check_polarity(lock_bit_locked)
        bit = (self.lock_bits >> (channel - 1)) & 1
        return ChannelState(
            locked=bit == lock_bit_locked,
            item_present=bool((self.item_bits >> (channel - 1)) & 1),
        )

    def channels(self, lock_bit_locked: int) -> tuple[ChannelState, ...]:
        return tuple(self.channel(ch, lock_bit_locked) for ch in range(1, CHANNELS + 1))


def _check_polarity(lock_bit_locked: int) -> None:
    if lock_bit_locked not in (0, 1):
        raise ValueError(f"lock_bit_locked must be 0 or 1, got {lock_bit_locked}")


def encode_status(board: int, lock_bits: int, item_bits: int, lock_index: int = 0) -> bytes:
    """A board's 9-byte status reply (the emulator's side). Bits are little-endian u16."""
    _check_board(board)
    if not 0 <= lock_bits <= 0xFFFF or not 0 <= item_bits <= 0xFFFF:
        raise ValueError("lock and item bits are 16-bit values")
    if not 0 <= lock_index <= 0x0F:
        raise ValueError("lock index is 0-15")
    data = lock_bits.to_bytes(2, "little") + item_bits.to_bytes(2, "little")
    return Frame((board << 4) | lock_index, REPLY_STATUS, data).raw


def decode_status(frame: Frame) -> BoardStatus:
    """Read a status reply; :class:`ProtocolError` if the frame is not one."""
    if frame.cmd != REPLY_STATUS:
        raise ProtocolError(f"expected a status reply (35), got command {frame.cmd:02x}")
    if len(frame.data) != 4:
        raise ProtocolError(f"status reply carries 4 data bytes, got {len(frame.data)}")
    return BoardStatus(
        board=frame.board,
        lock_bits=int.from_bytes(frame.data[0:2], "little"),
        item_bits=int.from_bytes(frame.data[2:4], "little"),
    )


class _NeedMore:
    pass


class _NotAFrame:
    pass


_NEED_MORE = _NeedMore()
_NOT_A_FRAME = _NotAFrame()


_Match = tuple[Frame | BadChecksum, int] | _NeedMore | _NotAFrame


def _match(buf: bytearray, i: int) -> _Match:
    """Try to read a frame starting at ``buf[i]`` (an STX)."""
    if len(buf) - i < 3:
        return _NEED_MORE
    length = _KNOWN_LENGTHS.get(buf[i + 2])
    if length is None:
        return _match_by_etx(buf, i)
    if len(buf) - i < length:
        return _NEED_MORE
    if buf[i + length - 2] != ETX:
        return _NOT_A_FRAME
    expected = checksum(buf[i : i + length - 1])
    raw = bytes(buf[i : i + length])
    if raw[-1] != expected:
        return BadChecksum(raw, expected, raw[-1]), length
    return Frame(raw[1], raw[2], raw[3:-2]), length


def _match_by_etx(buf: bytearray, i: int) -> _Match:
    """A command of unknown length: the frame ends at the first ETX followed by a valid SUM."""
    for k in range(i + 3, min(len(buf) - 1, i + MAX_FRAME - 1)):
        if buf[k] == ETX and buf[k + 1] == checksum(buf[i : k + 1]):
            raw = bytes(buf[i : k + 2])
            return Frame(raw[1], raw[2], raw[3:-2]), k + 2 - i
    return _NOT_A_FRAME if len(buf) - i >= MAX_FRAME else _NEED_MORE


class FrameSplitter:
    """Cuts a byte stream into frames and typed errors, resynchronising on the next STX.

    ``feed`` keeps an incomplete frame for the next call; ``flush`` (call it when the line went
    quiet) resolves whatever is left. Consecutive garbage bytes come out as one :class:`Garbage`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame (always < :data:`MAX_FRAME`)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[SplitResult]:
        self._buf += data
        return self._process(final=False)

    def flush(self) -> list[SplitResult]:
        return self._process(final=True)

    def reset(self) -> None:
        self._buf.clear()

    def _process(self, final: bool) -> list[SplitResult]:
        buf = self._buf
        out: list[SplitResult] = []
        junk_start: int | None = None
        i = 0

        def end_junk(at: int) -> None:
            nonlocal junk_start
            if junk_start is not None:
                out.append(Garbage(bytes(buf[junk_start:at])))
                junk_start = None

        while i < len(buf):
            if buf[i] != STX:
                junk_start = i if junk_start is None else junk_start
                i += 1
                continue
            found = _match(buf, i)
            if isinstance(found, tuple):
                end_junk(i)
                out.append(found[0])
                i += found[1]
                continue
            if isinstance(found, _NotAFrame) or (final and STX in buf[i + 1 :]):
                # a stray STX: drop it alone, a real frame may start right after
                junk_start = i if junk_start is None else junk_start
                i += 1
                continue
            end_junk(i)
            if final:
                out.append(Truncated(bytes(buf[i:])))
                i = len(buf)
            break
        end_junk(i)
        del buf[:i]
        return out
