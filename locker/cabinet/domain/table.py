"""Persistent tables for the parts of the state that grow with history (issue 10).

Credentials, consumed token ids and executed command ids can number 100,000 in one cabinet,
and every input of the state machine derives a new ``LockerState`` from the old one. A plain
frozen dict would be copied whole on every change, and its expiry found by a scan of every
row; here a change costs the same at any size:

- :class:`Table` is an immutable mapping split into shards by key hash. A changed copy
  copies one shard and the (short) tuple of shards; every other shard, and every row
  object, is shared with the original, which stays valid and unchanged (the controller
  keeps it to roll back to when a commit fails; tests keep old states to compare).
- :class:`Deadlines` is an immutable sorted sequence of ``(time, key)`` in chunks, with the
  same copy-one-chunk rule: the earliest deadline is its first item, the rows due are a
  prefix.

A table keeps the index of its rows' deadlines when its class says how to read one
(``deadline_of``), and an index of keys by group (``group_of``, e.g. a credential's parcel).
The standard library has no persistent mapping; this one is ~150 lines, instead of a
dependency (a HAMT library would do the mapping, but not the sorted index). Shard sizes keep
a change at a few microseconds up to millions of rows (measured in bench/per_input.py).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

V = TypeVar("V")
T = TypeVar("T")
Item = tuple[float, str]

SHARD_ROWS = 512  # a table grows to 16 times more shards when its average shard passes this
CHUNK = 256  # a deadline chunk is split past twice this, merged below half of it


class Deadlines:
    """An immutable sorted collection of ``(time, key)`` pairs (no duplicates)."""

    __slots__ = ("_chunks", "_lasts", "_len")

    def __init__(self, items: Iterable[Item] = ()) -> None:
        ordered = sorted(items)
        chunks = [tuple(ordered[i : i + CHUNK]) for i in range(0, len(ordered), CHUNK)]
        if len(chunks) > 1 and len(chunks[-1]) < CHUNK // 2:
            chunks[-2:] = [chunks[-2] + chunks[-1]]  # no chunk under half full
        self._chunks: tuple[tuple[Item, ...], ...] = tuple(chunks)
        self._lasts: tuple[Item, ...] = tuple(c[-1] for c in self._chunks)
        self._len = len(ordered)

    @classmethod
    def _of(cls, chunks: tuple[tuple[Item, ...], ...], n: int) -> Deadlines:
        new = cls.__new__(cls)
        new._chunks, new._lasts, new._len = chunks, tuple(c[-1] for c in chunks), n
        return new

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Item]:
        for chunk in self._chunks:
            yield from chunk

    def first(self) -> float:
        """The earliest time, ``math.inf`` when empty."""
        return self._chunks[0][0][0] if self._chunks else math.inf

    def before(self, t: float) -> list[str]:
        """The keys whose time is strictly before ``t``, earliest first."""
        out: list[str] = []
        for chunk in self._chunks:
            for when, key in chunk:
                if when >= t:
                    return out
                out.append(key)
        return out

    def add(self, item: Item) -> Deadlines:
        chunks = self._chunks
        if not chunks:
            return Deadlines._of(((item,),), 1)
        i = min(bisect_left(self._lasts, item), len(chunks) - 1)
        chunk = chunks[i]
        j = bisect_left(chunk, item)
        if j < len(chunk) and chunk[j] == item:
            return self
        new = (*chunk[:j], item, *chunk[j:])
        if len(new) > 2 * CHUNK:
            half = len(new) // 2
            return Deadlines._of(
                (*chunks[:i], new[:half], new[half:], *chunks[i + 1 :]), self._len + 1
            )
        return Deadlines._of((*chunks[:i], new, *chunks[i + 1 :]), self._len + 1)

    def remove(self, item: Item) -> Deadlines:
        chunks = self._chunks
        i = bisect_left(self._lasts, item)
        if i == len(chunks):
            return self
        chunk = chunks[i]
        j = bisect_left(chunk, item)
        if j == len(chunk) or chunk[j] != item:
            return self
        new = chunk[:j] + chunk[j + 1 :]
        lo, hi = i, i + 1
        if len(new) < CHUNK // 2 and len(chunks) > 1:
            # merged with a neighbour, so chunks stay at least half full: the tuple of chunks
            # stays short however the rows come and go
            if i + 1 < len(chunks):
                new, hi = new + chunks[i + 1], i + 2
            else:
                new, lo = chunks[i - 1] + new, i - 1
        if len(new) > 2 * CHUNK:
            half = len(new) // 2
            parts: tuple[tuple[Item, ...], ...] = (new[:half], new[half:])
        else:
            parts = (new,) if new else ()
        return Deadlines._of((*chunks[:lo], *parts, *chunks[hi:]), self._len - 1)


class Table(Mapping[str, V], Generic[V]):
    """An immutable ``str`` -> ``V`` mapping whose changed copies share all but one shard.

    ``set`` and ``drop`` return a new table; the original is never changed. Iteration order
    is by shard, then insertion (nothing may depend on it). A subclass may name how to read a
    row's deadline (``deadline_of``: when the row is forgotten, ``math.inf`` for never) and
    its group (``group_of``); the table then keeps both indexes, so ``earliest``, ``due``
    and ``group`` cost no scan.
    """

    __slots__ = ("_due", "_groups", "_len", "_mask", "_shards")

    indexed_deadline: ClassVar[bool] = False
    indexed_group: ClassVar[bool] = False

    @staticmethod
    def deadline_of(value: Any) -> float:
        return math.inf

    @staticmethod
    def group_of(value: Any) -> str:
        return ""

    def __init__(self, rows: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        items = dict(rows)
        shards = 1
        while len(items) > SHARD_ROWS * shards:
            shards *= 16
        parts: list[dict[str, V]] = [{} for _ in range(shards)]
        for k, v in items.items():
            parts[hash(k) & (shards - 1)][k] = v
        self._shards: tuple[dict[str, V], ...] = tuple(parts)
        self._mask = shards - 1
        self._len = len(items)
        self._due = (
            Deadlines((t, k) for k, v in items.items() if (t := self.deadline_of(v)) != math.inf)
            if self.indexed_deadline
            else Deadlines()
        )
        groups: dict[str, dict[str, None]] = {}
        if self.indexed_group:
            for k, v in items.items():
                groups.setdefault(self.group_of(v), {})[k] = None
        self._groups: Mapping[str, Table[None]] = {g: Table(m) for g, m in groups.items()}

    # --- reading ---------------------------------------------------------------------------

    def __getitem__(self, key: str) -> V:
        return self._shards[hash(key) & self._mask][key]

    @overload
    def get(self, key: str, /) -> V | None: ...
    @overload
    def get(self, key: str, default: V | T, /) -> V | T: ...
    def get(self, key: str, default: Any = None, /) -> Any:
        return self._shards[hash(key) & self._mask].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & self._mask]

    def __iter__(self) -> Iterator[str]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and all(
            k in other and other[k] == v for s in self._shards for k, v in s.items()
        )

    # a mapping compared by content is unhashable, like dict
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"

    def earliest(self) -> float:
        """The earliest deadline of any row (``math.inf`` for none)."""
        return self._due.first()

    def due(self, now: float) -> list[str]:
        """The keys whose deadline is strictly before ``now``, earliest first."""
        return self._due.before(now)

    def group(self, name: str) -> Iterable[str]:
        """The keys of the rows in group ``name`` (empty if none)."""
        return self._groups.get(name, ())

    # --- changed copies --------------------------------------------------------------------

    def set(self, key: str, value: V) -> Self:
        """A copy with ``key`` -> ``value``."""
        return self._with(key, value, True)

    def drop(self, key: str) -> Self:
        """A copy without ``key`` (the same table if it is absent)."""
        if key not in self:
            return self
        return self._with(key, None, False)

    def _with(self, key: str, value: Any, present: bool) -> Self:
        i = hash(key) & self._mask
        shard = dict(self._shards[i])
        old = shard.get(key, _ABSENT)
        if present:
            shard[key] = value
        else:
            del shard[key]
        new = type(self).__new__(type(self))
        new._shards = (*self._shards[:i], shard, *self._shards[i + 1 :])
        new._mask = self._mask
        new._len = self._len + (old is _ABSENT) - (not present)
        new._due = self._reindex_deadline(key, old, value, present)
        new._groups = self._regroup(key, old, value, present)
        if new._len > SHARD_ROWS * (self._mask + 1):
            return type(self)(new)  # regrown into more shards (rare: at 16x steps of size)
        return new

    def _reindex_deadline(self, key: str, old: Any, value: Any, present: bool) -> Deadlines:
        if not self.indexed_deadline:
            return self._due
        before = math.inf if old is _ABSENT else self.deadline_of(old)
        after = self.deadline_of(value) if present else math.inf
        due = self._due
        if before != after:
            if before != math.inf:
                due = due.remove((before, key))
            if after != math.inf:
                due = due.add((after, key))
        return due

    def _regroup(self, key: str, old: Any, value: Any, present: bool) -> Mapping[str, Table[None]]:
        before = None if old is _ABSENT else self.group_of(old)
        after = self.group_of(value) if present else None
        if not self.indexed_group or before == after:
            return self._groups
        groups = dict(self._groups)
        if before is not None:
            rest = groups[before].drop(key)
            if rest:
                groups[before] = rest
            else:
                del groups[before]
        if after is not None:
            groups[after] = groups.get(after, _EMPTY_KEYS).set(key, None)
        return groups


_ABSENT: Any = object()
_EMPTY_KEYS: Table[None] = Table()
