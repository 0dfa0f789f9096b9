"""The integer ranges of the MQTT contract (DESIGN section 5, ``schemas/*.json``).

Every counter a locker publishes (``seq``, ``last_seq``, ``outbox_depth``, ``rev``) and the
server's ``upto_seq`` is stored by both ends in a signed 64-bit integer column (SQLite's
INTEGER, PostgreSQL's BIGINT), so the contract bounds them there: a larger number could never
have been stored by the locker that claims it, and binding it to a database parameter raises
``OverflowError`` (sqlite3) or a data error (PostgreSQL). The schemas carry the same
``maximum``; ``tests/test_schemas.py`` keeps the two equal. Times are uint32 Unix seconds
(``locker.contract.actions.MAX_UINT32``, as in the QR token).
"""

from __future__ import annotations

from typing import Any

from locker.contract.actions import MAX_UINT32

MAX_INT64 = 2**63 - 1  # SQLite INTEGER / PostgreSQL BIGINT, signed 64-bit
MAX_COUNT = MAX_INT64  # seq, last_seq, outbox_depth, rev, upto_seq

__all__ = ["MAX_COUNT", "MAX_INT64", "MAX_UINT32", "count", "unix_s"]


def count(value: Any, minimum: int = 0) -> int | None:
    """``value`` when it is a JSON integer (not a bool) in ``[minimum, MAX_COUNT]``, else None."""
    if type(value) is int and minimum <= value <= MAX_COUNT:
        return value
    return None


def unix_s(value: Any) -> int | None:
    """``value`` when it is an integer Unix time in ``[0, MAX_UINT32]``, else None."""
    if type(value) is int and 0 <= value <= MAX_UINT32:
        return value
    return None
