"""``lockerctl``'s argument types: every value is judged when the command line is parsed.

argparse calls a ``type`` with the argument's text; raising ``ArgumentTypeError`` makes it
print ``lockerctl ...: error: argument --timeout: <message>`` and exit 2 before anything is
read, written or sent. So a number that means nothing (NaN, infinity, a negative or zero
duration, a port out of range) never reaches a handler, where it would hang (``wait(nan)``),
overflow a timestamp or turn into a traceback.

``utf8`` wraps any type: Python decodes an argument that is not valid UTF-8 with
``surrogateescape`` (PEP 383), and such text cannot be written into a TOML file, a certificate
or an MQTT payload. ``build_parser`` wraps every argument's type with it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Final, TypeVar

from locker.contract.actions import MAX_PICKUP_HOURS, MAX_UINT32

_T = TypeVar("_T")

MAX_WAIT_S: Final = 24 * 3600.0
"""Upper bound of ``--timeout``: a reply is never worth waiting a day for (a command lives at
most 7 days at the broker, and a longer wait only hides a typo)."""

MAX_DURATION_S: Final = 366 * 24 * 3600.0
"""Upper bound of ``watch --duration`` (a year; omit it to watch until interrupted)."""

MAX_CERT_DAYS: Final = 3650
"""Upper bound of ``locker renew --days``: ten years."""


def utf8(convert: Callable[[str], _T]) -> Callable[[str], _T]:
    """``convert`` after refusing text with undecodable bytes (surrogate escapes)."""

    def check(text: str) -> _T:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(text)
            raise argparse.ArgumentTypeError(
                f"not valid UTF-8 text: {raw!r} (use UTF-8 for names, ids and paths)"
            ) from None
        return convert(text)

    check.__name__ = getattr(convert, "__name__", "value")  # argparse names the type with it
    return check


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive(unit: str, maximum: float) -> Callable[[str], float]:
    """A positive, finite number of ``unit`` up to ``maximum``: ``--timeout``, ``--duration``
    (seconds), ``--hours``, ``--dropoff-hours`` (hours)."""

    def convert(text: str) -> float:
        value = _number(text)
        if not (math.isfinite(value) and 0 < value <= maximum):
            raise argparse.ArgumentTypeError(
                f"must be a positive number of {unit} up to {maximum:.0f}, got {text!r}"
            )
        return value

    convert.__name__ = unit
    return convert


def integer(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """A decimal integer in ``low..high`` (inclusive); ``what`` names the unit in messages."""

    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            unit = f" {what}" if what else ""
            raise argparse.ArgumentTypeError(f"must be {low}-{high}{unit}, got {text!r}")
        return value

    convert.__name__ = "integer"
    return convert


TIMEOUT = positive("seconds", MAX_WAIT_S)
DURATION = positive("seconds", MAX_DURATION_S)
HOURS = positive("hours", MAX_PICKUP_HOURS)
PORT = integer(1, 65535)
PICKUP_HOURS = integer(1, MAX_PICKUP_HOURS, "hours")
UNIX_TIME = integer(0, MAX_UINT32, "(Unix seconds)")
CERT_DAYS = integer(1, MAX_CERT_DAYS, "days")
