"""The earliest deadline of a small table, computed once per version of the table (issue 10).

Every input runs the machine's expiry pass, and the controller asks for the next deadline
twice per turn. The parcels table (one row per compartment at most) is immutable and
replaced, never changed, when it changes (``Draft.finish``), so the earliest deadline over it
is a pure function of the table object: it is remembered per table identity and recomputed
only when the table was replaced. The tables that grow with history keep their own deadline
index instead (``locker.cabinet.domain.table``).

A memo, not state: results depend only on the arguments. Tables still being edited (a
``Draft``'s plain dicts) are never remembered. The controller thread is the only caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

_memo: dict[str, tuple[tuple[object, ...], float]] = {}


def earliest(
    name: str,
    tables: tuple[Mapping[str, Any], ...],
    compute: Callable[[], float],
) -> float:
    """``compute()`` (the earliest deadline over ``tables``, ``math.inf`` for none),
    remembered under ``name`` for as long as every table is the very same frozen object."""
    frozen = all(type(t) is MappingProxyType for t in tables)
    hit = _memo.get(name)
    if frozen and hit is not None and all(a is b for a, b in zip(hit[0], tables, strict=True)):
        return hit[1]
    value = compute()
    if frozen:
        _memo[name] = (tables, value)
    return value


def minimum(values: Any) -> float:
    """The smallest of ``values``; ``math.inf`` when there is none."""
    return min(values, default=math.inf)
