"""The controller's two-lane inbox (issue 11 item 22): bounded people's lane, urgent first."""

from __future__ import annotations

import queue
import threading

import pytest

from locker.cabinet.domain.inputs import Tick
from locker.cabinet.inbox import OVERLOAD, Inbox
from locker.ports import (
    CommandMessage,
    DoorChanged,
    DoorState,
    InputRejected,
    InputSource,
    KeyPressed,
    LineScanned,
)


def test_urgent_events_overtake_a_full_lane_of_keys() -> None:
    box = Inbox(input_limit=3)
    for _ in range(10):
        box.put(KeyPressed("1"))
    box.put(CommandMessage(b"x"))
    box.put(DoorChanged("A1", DoorState.OPEN))
    assert isinstance(box.get_nowait(), CommandMessage)
    assert isinstance(box.get_nowait(), DoorChanged)
    assert [box.get_nowait() for _ in range(3)] == [KeyPressed("1")] * 3
    with pytest.raises(queue.Empty):
        box.get_nowait()
    assert box.take_shed() == {InputSource.KEYPAD: 7}
    assert box.take_shed() == {}


def test_a_gap_is_marked_in_band_before_the_next_accepted_input() -> None:
    box = Inbox(input_limit=2)
    for k in "12345":
        box.put(KeyPressed(k))
    box.put(LineScanned("x"))  # shed as well, for the scanner
    assert [box.get_nowait(), box.get_nowait()] == [KeyPressed("1"), KeyPressed("2")]
    box.put(KeyPressed("#"))
    assert [box.get_nowait(), box.get_nowait()] == [
        InputRejected(InputSource.KEYPAD, OVERLOAD),
        KeyPressed("#"),
    ]
    box.put(LineScanned("y"))
    assert [box.get_nowait(), box.get_nowait()] == [
        InputRejected(InputSource.SCANNER, OVERLOAD),
        LineScanned("y"),
    ]
    box.put(KeyPressed("1"))
    assert box.get_nowait() == KeyPressed("1")  # marked once per gap


def test_get_waits_for_a_put_from_another_thread_and_times_out_otherwise() -> None:
    box = Inbox()
    with pytest.raises(queue.Empty):
        box.get(timeout=0.01)
    threading.Timer(0.05, box.put, args=(Tick(),)).start()
    assert box.get(timeout=5) == Tick()
