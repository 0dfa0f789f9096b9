"""The Kerong CU16 codec: reference frames, round trips and the stream splitter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.boards.kerong import (
    CMD_QUERY,
    CMD_UNLOCK,
    CMD_UNLOCK_ALL,
    MAX_FRAME,
    REPLY_STATUS,
    BadChecksum,
    BoardStatus,
    ChannelState,
    Frame,
    FrameSplitter,
    Garbage,
    ProtocolError,
    SplitResult,
    Truncated,
    checksum,
    decode_status,
    encode_frame,
    encode_query,
    encode_status,
    encode_unlock,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- reference vectors (DESIGN section 7, lockers.md section 4.1) ---------------------------------


@pytest.mark.parametrize(
    ("board", "channel", "wire"),
    [(0, 1, "02 00 31 03 36"), (0, 16, "02 0F 31 03 45"), (1, 1, "02 10 31 03 46")],
)
def test_unlock_reference_frames(board: int, channel: int, wire: str) -> None:
    assert encode_unlock(board, channel) == h(wire)


@pytest.mark.parametrize(("board", "wire"), [(0, "02 00 30 03 35"), (1, "02 10 30 03 45")])
def test_query_reference_frames(board: int, wire: str) -> None:
    assert encode_query(board) == h(wire)


def test_status_reply_is_nine_bytes_and_round_trips() -> None:
    # board 1: locks 1 and 16 set, items 1 and 2 present
    wire = encode_status(1, lock_bits=0x8001, item_bits=0x0003)
    assert wire == h("02 10 35 01 80 03 00 03 CE")
    assert len(wire) == 9
    assert wire[-1] == sum(wire[:-1]) & 0xFF
    (frame,) = FrameSplitter().feed(wire)
    assert isinstance(frame, Frame)
    assert (frame.board, frame.cmd, frame.raw) == (1, REPLY_STATUS, wire)
    assert decode_status(frame) == BoardStatus(board=1, lock_bits=0x8001, item_bits=0x0003)


def test_status_bits_map_to_channels_with_either_polarity() -> None:
    status = decode_status(Frame(0x00, REPLY_STATUS, h("01 80 02 00")))
    assert status.channel(1, lock_bit_locked=1) == ChannelState(locked=True, item_present=False)
    assert status.channel(2, lock_bit_locked=1) == ChannelState(locked=False, item_present=True)
    assert status.channel(16, lock_bit_locked=1).locked is True
    assert status.channel(1, lock_bit_locked=0).locked is False
    assert status.channel(2, lock_bit_locked=0).locked is True
    channels = status.channels(lock_bit_locked=1)
    assert [c.locked for c in channels] == [True] + [False] * 14 + [True]
    assert [c.item_present for c in channels] == [False, True] + [False] * 14


@given(
    board=st.integers(0, 15),
    locks=st.integers(0, 0xFFFF),
    items=st.integers(0, 0xFFFF),
    lock_index=st.integers(0, 15),
)
def test_status_round_trip(board: int, locks: int, items: int, lock_index: int) -> None:
    (frame,) = FrameSplitter().feed(encode_status(board, locks, items, lock_index))
    assert isinstance(frame, Frame)
    assert frame.lock_index == lock_index
    assert decode_status(frame) == BoardStatus(board, locks, items)


@given(board=st.integers(0, 15), channel=st.integers(1, 16))
def test_unlock_round_trip(board: int, channel: int) -> None:
    wire = encode_unlock(board, channel)
    (frame,) = FrameSplitter().feed(wire)
    assert frame == Frame((board << 4) | (channel - 1), CMD_UNLOCK)
    assert isinstance(frame, Frame)
    assert (frame.board, frame.lock_index + 1) == (board, channel)


# -- refusals ------------------------------------------------------------------------------------


def test_unlock_all_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="never sent"):
        encode_frame(0x00, CMD_UNLOCK_ALL)
    assert encode_frame(0x00, CMD_QUERY) == h("02 00 30 03 35")


@pytest.mark.parametrize(("board", "channel"), [(-1, 1), (16, 1), (0, 0), (0, 17)])
def test_out_of_range_addresses_are_refused(board: int, channel: int) -> None:
    with pytest.raises(ValueError):
        encode_unlock(board, channel)


def test_bad_polarity_and_bits_are_refused() -> None:
    with pytest.raises(ValueError):
        BoardStatus(0, 0, 0).channel(1, lock_bit_locked=2)
    with pytest.raises(ValueError):
        encode_status(0, 0x10000, 0)
    with pytest.raises(ValueError):
        encode_query(16)


def test_decode_status_rejects_other_frames() -> None:
    with pytest.raises(ProtocolError):
        decode_status(Frame(0x00, CMD_QUERY))
    with pytest.raises(ProtocolError):
        decode_status(Frame(0x00, REPLY_STATUS, h("00 00 00")))


# -- the splitter --------------------------------------------------------------------------------

STATUS = encode_status(0, 0xFFFE, 0x0001)


def test_garbage_before_a_frame_is_reported_and_skipped() -> None:
    out = FrameSplitter().feed(h("00 ff 55") + STATUS)
    assert out == [Garbage(h("00 ff 55")), Frame(0x00, REPLY_STATUS, STATUS[3:7])]
    assert out[0].n == 3  # type: ignore[union-attr]


def test_frame_split_across_reads_is_joined() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(STATUS[:2]) == []
    assert splitter.feed(STATUS[2:6]) == []
    assert splitter.pending == 6
    assert splitter.feed(STATUS[6:]) == [Frame(0x00, REPLY_STATUS, STATUS[3:7])]
    assert splitter.pending == 0


def test_bad_checksum_is_typed_and_the_next_frame_still_read() -> None:
    bad = STATUS[:-1] + bytes(((STATUS[-1] + 1) & 0xFF,))
    out = FrameSplitter().feed(bad + encode_query(3))
    assert out == [BadChecksum(bad, STATUS[-1], bad[-1]), Frame(0x30, CMD_QUERY)]


def test_missing_etx_resyncs_on_the_next_stx() -> None:
    broken = h("02 00 30 04 35")
    assert FrameSplitter().feed(broken + encode_query(0)) == [
        Garbage(broken),
        Frame(0x00, CMD_QUERY),
    ]


def test_stray_stx_before_a_frame_is_resolved_on_flush() -> None:
    splitter = FrameSplitter()
    out = splitter.feed(h("02") + STATUS)  # the stray STX makes "02 02 00 35 ..." ambiguous
    out += splitter.flush()
    assert out == [Garbage(h("02")), Frame(0x00, REPLY_STATUS, STATUS[3:7])]


def test_flush_reports_a_truncated_frame() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(h("aa") + STATUS[:5]) == [Garbage(h("aa"))]
    assert splitter.flush() == [Truncated(STATUS[:5])]
    assert splitter.pending == 0


def test_unknown_command_is_framed_by_etx_and_sum() -> None:
    pulse_time = encode_frame(0x00, 0x37, h("00 32"))
    assert len(pulse_time) == 7
    assert FrameSplitter().feed(pulse_time) == [Frame(0x00, 0x37, h("00 32"))]


# -- properties ----------------------------------------------------------------------------------


def _consumed(results: list[SplitResult]) -> int:
    return sum(len(r.raw) for r in results)


@settings(max_examples=300)
@given(stream=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=20))
def test_any_byte_stream_gives_only_typed_results_in_bounded_memory(
    stream: bytes, cuts: list[int]
) -> None:
    splitter = FrameSplitter()
    results: list[SplitResult] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        results += splitter.feed(stream[start:cut])
        assert splitter.pending < MAX_FRAME
        start = max(start, cut)
    results += splitter.flush()
    assert splitter.pending == 0
    assert all(isinstance(r, Frame | Garbage | BadChecksum | Truncated) for r in results)
    # every input byte lands in exactly one result, in order
    assert b"".join(r.raw for r in results) == stream
    assert _consumed(results) == len(stream)
    for r in results:
        if isinstance(r, Frame):
            assert r.raw[-1] == checksum(r.raw[:-1])


noise_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\x02", b""))
frames = st.one_of(
    st.builds(encode_query, st.integers(0, 15)),
    st.builds(encode_unlock, st.integers(0, 15), st.integers(1, 16)),
    st.builds(encode_status, st.integers(0, 15), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
)


@settings(max_examples=300)
@given(parts=st.lists(st.tuples(noise_bytes, frames), max_size=8), chunk=st.integers(1, 12))
def test_frames_between_noise_are_all_recovered(
    parts: list[tuple[bytes, bytes]], chunk: int
) -> None:
    stream = b"".join(noise + frame for noise, frame in parts)
    splitter = FrameSplitter()
    results: list[SplitResult] = []
    for i in range(0, len(stream), chunk):
        results += splitter.feed(stream[i : i + chunk])
    results += splitter.flush()
    assert [r.raw for r in results if isinstance(r, Frame)] == [frame for _, frame in parts]
    assert not [r for r in results if isinstance(r, BadChecksum | Truncated)]
