"""A copy-on-write editor for ``LockerState``, used inside one machine step.

The machine reads like ordinary imperative code (``d.set_compartment(...)``, ``d.emit(...)``)
while the input state is never touched: tables are copied the first time they change and the
result is frozen again by ``finish``. Unchanged rows stay the very same objects, which is what
lets the store write only what changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from locker.cabinet.domain.model import (
    CommandRecord,
    Compartment,
    Credential,
    LockerState,
    Out,
    Parcel,
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
        self._tables: dict[str, dict[str, Any]] = {}
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
        """The table's copy for this step, noting that ``key`` is written."""
        if name not in self._tables:
            self._tables[name] = dict(getattr(self.base, name))
            self._touched[name] = set()
        self._touched[name].add(key)
        return self._tables[name]

    @property
    def compartments(self) -> Mapping[str, Compartment]:
        return self._table("compartments")

    @property
    def parcels(self) -> Mapping[str, Parcel]:
        return self._table("parcels")

    @property
    def credentials(self) -> Mapping[str, Credential]:
        return self._table("credentials")

    @property
    def tokens(self) -> Mapping[str, float]:
        return self._table("tokens")

    @property
    def commands(self) -> Mapping[str, CommandRecord]:
        return self._table("commands")

    def get(self, name: str) -> Any:
        """A scalar field (throttle, lockdown, remote_opens, keypad) as it stands now."""
        return self._fields.get(name, getattr(self.base, name))

    # --- writing ---------------------------------------------------------------------------
    def put(self, name: str, value: Any) -> None:
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
        for tag in [t for t, c in self.credentials.items() if c.parcel == pid]:
            self._writable("credentials", tag).pop(tag)

    def put_credential(self, cred: Credential) -> None:
        self._writable("credentials", cred.tag)[cred.tag] = cred

    def update_credential(self, tag: str, **changes: Any) -> None:
        self.put_credential(dataclasses.replace(self.credentials[tag], **changes))

    def drop_credential(self, tag: str) -> None:
        self._writable("credentials", tag).pop(tag, None)

    def put_token(self, token_id: str, expires: float) -> None:
        self._writable("tokens", token_id)[token_id] = expires

    def drop_token(self, token_id: str) -> None:
        self._writable("tokens", token_id).pop(token_id, None)

    def put_command(self, record: CommandRecord) -> None:
        self._writable("commands", record.jti)[record.jti] = record

    def drop_command(self, jti: str) -> None:
        self._writable("commands", jti).pop(jti, None)

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
        changes.update(self._fields)
        state = dataclasses.replace(self.base, **changes) if changes else self.base
        touched = MappingProxyType({n: frozenset(k) for n, k in self._touched.items()})
        return Transition(state, tuple(self.events), tuple(self.actions), touched)
