"""A copy-on-write editor for ``LockerState``, used inside one machine step.

The machine reads like ordinary imperative code (``d.set_compartment(...)``, ``d.emit(...)``)
while the input state is never touched: the small tables (compartments, parcels: one row per
compartment at most) are copied the first time they change and frozen again by ``finish``; the
tables that grow with history (credentials, tokens, commands) are persistent
(``locker.cabinet.domain.table``), so a change copies one shard of them, never the whole
table (issue 10). Unchanged rows stay the very same objects, and the keys written are noted
(``Transition.touched``), which is what lets the store write only what changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from locker.cabinet.domain.model import (
    HISTORY_TABLES,
    CommandRecord,
    Commands,
    Compartment,
    Credential,
    Credentials,
    LockerState,
    Out,
    Parcel,
    Spent,
    SpentTag,
    Tokens,
)
from locker.ports import Feedback


@dataclasses.dataclass(frozen=True, slots=True)
class UnlockAction:
    compartment: str


@dataclasses.dataclass(frozen=True, slots=True)
class IndicateAction:
    feedback: Feedback


@dataclasses.dataclass(frozen=True, slots=True)
class ReplyAction:
    reply: Mapping[str, Any]
    correlation_data: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class ResyncAction:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class LanguageAction:
    """The person picked a language on the keypad (``*`` ``*`` then ``number``, 1-9): the
    front panel shows its ``number``-th language (DESIGN section 12). Nothing else acts on it."""

    number: int


Action = UnlockAction | IndicateAction | ReplyAction | ResyncAction | LanguageAction


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """``touched``: the keys written per table (the store writes only those rows, issue 10);
    None when unknown (the store then compares whole tables that changed)."""

    state: LockerState
    events: tuple[Out, ...] = ()
    actions: tuple[Action, ...] = ()
    touched: Mapping[str, frozenset[str]] | None = None


class Draft:
    """Mutable view of one step's changes over an immutable ``LockerState``."""

    def __init__(self, state: LockerState) -> None:
        self.base = state
        self._tables: dict[str, dict[str, Any]] = {}  # compartments, parcels: copies
        self._history: dict[str, Any] = {}  # credentials, tokens, commands: new versions
        self._touched: dict[str, set[str]] = {}
        self._fields: dict[str, Any] = {}
        self.events: list[Out] = []
        self.actions: list[Action] = []

    # --- reading ---------------------------------------------------------------------------
    def _table(self, name: str) -> Mapping[str, Any]:
        if name in self._tables:
            return self._tables[name]
        table: Mapping[str, Any] = getattr(self.base, name)
        return table

    def _writable(self, name: str, key: str) -> dict[str, Any]:
        """The small table's copy for this step, noting that ``key`` is written."""
        if name not in self._tables:
            self._tables[name] = dict(getattr(self.base, name))
        self._touched.setdefault(name, set()).add(key)
        return self._tables[name]

    def _history_table(self, name: str) -> Any:
        return self._history[name] if name in self._history else getattr(self.base, name)

    def _write(self, name: str, key: str, value: Any) -> None:
        """Set (``value`` not None) or drop ``key`` of a history table."""
        table = self._history_table(name)
        self._history[name] = table.drop(key) if value is None else table.set(key, value)
        self._touched.setdefault(name, set()).add(key)

    @property
    def compartments(self) -> Mapping[str, Compartment]:
        return self._table("compartments")

    @property
    def parcels(self) -> Mapping[str, Parcel]:
        return self._table("parcels")

    @property
    def credentials(self) -> Credentials:
        table: Credentials = self._history_table("credentials")
        return table

    @property
    def tokens(self) -> Tokens:
        table: Tokens = self._history_table("tokens")
        return table

    @property
    def commands(self) -> Commands:
        table: Commands = self._history_table("commands")
        return table

    @property
    def spent(self) -> Spent:
        table: Spent = self._history_table("spent")
        return table

    def get(self, name: str) -> Any:
        """A scalar field (throttle, lockdown, remote_opens, keypad) as it stands now."""
        return self._fields.get(name, getattr(self.base, name))

    # --- writing ---------------------------------------------------------------------------
    def put(self, name: str, value: Any) -> None:
        """Set a scalar field. Raises ``TypeError`` for a table: those change row by row
        through the methods below (``finish`` relies on it, see ``_evolve``)."""
        if name in _TABLE_FIELDS:
            raise TypeError(f"{name} is a table: change it row by row, not with put()")
        self._fields[name] = value

    def update_compartment(self, cid: str, **changes: Any) -> Compartment:
        new = dataclasses.replace(self.compartments[cid], **changes)
        self._writable("compartments", cid)[cid] = new
        return new

    def put_parcel(self, parcel: Parcel) -> None:
        self._writable("parcels", parcel.id)[parcel.id] = parcel

    def update_parcel(self, pid: str, **changes: Any) -> Parcel:
        new = dataclasses.replace(self.parcels[pid], **changes)
        self.put_parcel(new)
        return new

    def drop_parcel(self, pid: str) -> None:
        """Forget a parcel that left the locker, with every credential bound to it."""
        self._writable("parcels", pid).pop(pid, None)
        for tag in list(self.credentials.group(pid)):
            self.drop_credential(tag)

    def put_credential(self, cred: Credential) -> None:
        self._write("credentials", cred.tag, cred)
        if cred.tag in self.spent:  # a live tag is never answered as a spent one
            self._write("spent", cred.tag, None)

    def update_credential(self, tag: str, **changes: Any) -> None:
        self.put_credential(dataclasses.replace(self.credentials[tag], **changes))

    def drop_credential(self, tag: str) -> None:
        self._write("credentials", tag, None)

    def put_spent(self, tag: str, spent: SpentTag) -> None:
        self._write("spent", tag, spent)

    def drop_spent(self, tag: str) -> None:
        self._write("spent", tag, None)

    def put_token(self, token_id: str, expires: float) -> None:
        self._write("tokens", token_id, expires)

    def drop_token(self, token_id: str) -> None:
        self._write("tokens", token_id, None)

    def put_command(self, record: CommandRecord) -> None:
        self._write("commands", record.jti, record)

    def drop_command(self, jti: str) -> None:
        self._write("commands", jti, None)

    def emit(
        self,
        type_: str,
        compartment: str | None = None,
        parcel: str | None = None,
        **data: Any,
    ) -> None:
        self.events.append(Out(type_, compartment, parcel, MappingProxyType(data)))

    def act(self, action: Action) -> None:
        self.actions.append(action)

    def finish(self) -> Transition:
        changes: dict[str, Any] = {n: MappingProxyType(t) for n, t in self._tables.items()}
        changes.update(self._history)
        changes.update(self._fields)
        state = _evolve(self.base, changes) if changes else self.base
        touched = MappingProxyType({n: frozenset(k) for n, k in self._touched.items()})
        return Transition(state, tuple(self.events), tuple(self.actions), touched)


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(LockerState))
_TABLE_FIELDS = frozenset({"compartments", "parcels", *HISTORY_TABLES})
_set = object.__setattr__


def _evolve(base: LockerState, changes: Mapping[str, Any]) -> LockerState:
    """``dataclasses.replace(base, **changes)`` at a third of its cost (it ran once per key
    typed, issue 10). ``__post_init__`` is not run again: it only converts history tables
    given as plain mappings, and a draft's are always the persistent tables of ``base`` or
    their changed copies (``Table.set`` / ``Table.drop``)."""
    new = object.__new__(LockerState)
    for name in _STATE_FIELDS:
        _set(new, name, getattr(base, name))
    for name, value in changes.items():
        _set(new, name, value)
    return new
