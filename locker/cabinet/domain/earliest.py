"""The earliest deadline of a small table, computed once per version of the table (issue 10).

Every input (every key typed) runs the machine's expiry pass, and the controller asks for the
next deadline twice per turn. The compartments and parcels tables (one row per compartment at
most) are immutable and replaced, never changed, when they change (``Draft.finish``), so the
earliest deadline over them is a pure function of the table objects (and the rules): it is
remembered per table identity and recomputed only when a table was replaced. The tables that
grow with history keep their own deadline index instead (``locker.cabinet.domain.table``).

The same memo serves any answer that is a pure function of frozen tables (the front panel's
active doors). A memo, not state: results depend only on the arguments. Tables still being edited (a
``Draft``'s plain dicts) are never remembered. The controller thread is the only caller.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

T = TypeVar("T")

_memo: dict[str, tuple[tuple[object, ...], Any]] = {}


def earliest(
    name: str,
    tables: tuple[Mapping[Any, Any], ...],
    compute: Callable[[], T],
    *also: object,
) -> T:
    """``compute()`` (for a deadline: the earliest over ``tables``, ``math.inf`` for none),
    remembered under ``name`` for as long as every table is the very same frozen object
    (and each of ``also``, what else the answer depends on, such as the rules, the very
    same object too)."""
    if not all(type(t) is MappingProxyType for t in tables):
        return compute()  # a plain dict may still change: never remembered
    return remembered(name, (*tables, *also), compute)


def remembered(name: str, key: tuple[object, ...], compute: Callable[[], T]) -> T:
    """``compute()``, remembered under ``name`` for as long as every object of ``key`` is the
    very same object. The caller vouches that they are immutable."""
    hit = _memo.get(name)
    if hit is not None and len(hit[0]) == len(key) and all(map(operator.is_, hit[0], key)):
        value: T = hit[1]
        return value
    value = compute()
    _memo[name] = (key, value)
    return value


def minimum(values: Any) -> float:
    """The smallest of ``values``; ``math.inf`` when there is none."""
    return min(values, default=math.inf)
