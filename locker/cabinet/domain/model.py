"""The locker's state as plain, immutable data.

Everything the state machine decides on lives here: compartments, parcels, armed credential
tags, consumed token ids, executed command ids, the throttle and a few flags. ``LockerState``
is replaced, never mutated: ``locker.cabinet.domain.machine`` returns a new one,
``locker.cabinet.store`` persists the difference. The keypad entry buffer, the refusal bursts and
the scanner's work bound are volatile (``VOLATILE_FIELDS``, never persisted: a half-typed code
or a count of mashed keys is not worth an fsync, nor keeping across a crash).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from locker.cabinet.domain.table import Table
from locker.ports import DoorState

SIZE_RANK = {"S": 0, "M": 1, "L": 2, "XL": 3}
# A code that stopped working (used, expired, cancelled) is still recognised for this long
# afterwards: typed again it gets its own reason, never "wrong code" and never a guess (DESIGN
# 6: only an entry that matches no live tag is a guess). Three days covers a customer who
# tries the code again the next days; the table stays bounded (``Spent``).
SPENT_KEEP_S = 3 * 24 * 3600.0


class ParcelStatus(enum.StrEnum):
    RESERVED = "reserved"  # waiting for its drop-off
    DEPOSITED = "deposited"  # inside, pickup armed
    EXPIRED = "expired"  # pickup window over, waiting for a courier retrieval
    CANCELLED = "cancelled"  # cancelled after deposit, waiting for a courier retrieval


class Step(enum.StrEnum):
    """What a credential does, and why a door was unlocked."""

    DROPOFF = "dropoff"
    PICKUP = "pickup"
    RETRIEVE = "retrieve"
    REMOTE = "remote"


class Occupancy(enum.StrEnum):
    FREE = "free"
    RESERVED = "reserved"
    OCCUPIED = "occupied"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Parcel:
    id: str
    kind: str  # "delivery" | "return"
    size: str
    compartment: str
    status: ParcelStatus
    dropoff_until: float
    pickup_hours: float
    pickup_until: float | None = None
    deposited_at: float | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """A keypad code, known only by its tag. Kept while its parcel exists; ``armed`` says
    whether typing it opens anything now."""

    tag: str
    parcel: str
    step: Step
    valid_from: float
    valid_until: float | None
    armed: bool


@dataclass(frozen=True, slots=True)
class Unlock:
    """An unlock granted and committed: pending until the door is seen open, then the open
    session until it closes. ``credential`` is a tag or ``qr:<token id hex>``, never a code."""

    purpose: Step
    parcel: str | None
    credential: str | None
    source: str  # keypad | scanner | remote
    deadline: float  # door must open before this
    token_expires: float | None = None  # for QR, to re-arm on a jam


@dataclass(frozen=True, slots=True)
class Compartment:
    id: str
    size: str
    in_service: bool = True
    service_reason: str = ""
    door: DoorState = DoorState.UNKNOWN
    item: bool | None = None
    parcel: str | None = None
    pending: Unlock | None = None  # unlock sent, door not yet seen open
    session: Unlock | None = None  # door open for this unlock, waiting for it to close
    open_since: float | None = None
    left_open_next: float | None = None
    pulses: tuple[float, ...] = ()  # recent unlock times, to bound jam retries
    sensor_fault: bool = False  # the door sensor is not trusted (unstable, or stuck open)

    @property
    def busy(self) -> bool:
        return self.pending is not None or self.session is not None


@dataclass(frozen=True, slots=True)
class SpentTag:
    """The tag of a code that no longer opens anything, kept until ``forget_at`` (Unix s) so
    that typing it again is answered with why (``reason``: the ``access_denied`` reason,
    ``already_used`` or ``expired``; ``detail``: e.g. ``cancelled``). Never the code."""

    reason: str
    forget_at: float
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Throttle:
    consecutive: int = 0
    # failures within the last hour, as (minute since the epoch, count): at most 61 pairs
    # however many failures there are, so a failure costs the same at any rate
    recent: tuple[tuple[int, int], ...] = ()
    blocked_until: float = 0.0
    locked_out: bool = False
    locked_until: float = 0.0  # a hard lock-out ends by itself then (security.lockout_s)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command that was executed or refused after verification, kept until ``exp`` so a
    repeated ``jti`` is answered ``duplicate`` with the stored outcome."""

    jti: str
    exp: float
    status: str
    result: Mapping[str, Any] | None = None
    error: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Burst:
    """Refusals of one (source, reason) within an aggregation window: the first was reported
    on its own, ``count`` more were only counted and are reported together at ``until``."""

    until: float
    count: int = 0
    detail: str | None = None
    compartment: str | None = None  # the door the latest refusal was about (the panel shows it)


@dataclass(frozen=True, slots=True)
class ScanLimit:
    """The scanner's own work bound: recent refused scans, and the end of a cooling-off."""

    failures: tuple[float, ...] = ()
    blocked_until: float = 0.0


@dataclass(frozen=True, slots=True)
class KeypadEntry:
    digits: str = ""
    overflow: bool = False
    last_key_at: float = 0.0
    stars: int = 0  # '*' presses in a row on an empty entry: '*' '*' digit picks a language


def _frozen(d: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(d or {}))


class Credentials(Table[Credential]):
    """Armed and spent credential tags -> ``Credential``, indexed by parcel and by when a
    retrieval code is forgotten (other codes go with their parcel)."""

    __slots__ = ()
    indexed_deadline = True
    indexed_group = True

    @staticmethod
    def deadline_of(value: Credential) -> float:
        if value.step is Step.RETRIEVE and value.valid_until is not None:
            return value.valid_until
        return math.inf

    @staticmethod
    def group_of(value: Credential) -> str:
        return value.parcel


class Tokens(Table[float]):
    """Consumed QR token ids (hex) -> when the token expires (then the id is forgotten)."""

    __slots__ = ()
    indexed_deadline = True

    @staticmethod
    def deadline_of(value: float) -> float:
        return value


class Commands(Table[CommandRecord]):
    """Executed command ids (``jti``) -> ``CommandRecord``, forgotten at its ``exp``."""

    __slots__ = ()
    indexed_deadline = True

    @staticmethod
    def deadline_of(value: CommandRecord) -> float:
        return value.exp


class Spent(Table[SpentTag]):
    """Tags of codes that stopped working -> ``SpentTag``, forgotten at ``forget_at`` (a few
    days, ``SPENT_KEEP_S``): bounded by what a locker handles in that time, never by its
    whole history."""

    __slots__ = ()
    indexed_deadline = True

    @staticmethod
    def deadline_of(value: SpentTag) -> float:
        return value.forget_at


# The tables that grow with history: persistent (``Table``), never copied whole per change.
HISTORY_TABLES: Mapping[str, type[Table[Any]]] = MappingProxyType(
    {"credentials": Credentials, "tokens": Tokens, "commands": Commands, "spent": Spent}
)


# Never persisted: losing them in a crash costs nothing worth an fsync per key or refusal.
VOLATILE_FIELDS = frozenset({"keypad", "refusals", "scanner"})


@dataclass(frozen=True, slots=True)
class LockerState:
    compartments: Mapping[str, Compartment]
    parcels: Mapping[str, Parcel] = field(default_factory=_frozen)
    credentials: Credentials = field(default_factory=Credentials)
    tokens: Tokens = field(default_factory=Tokens)  # consumed token id -> expires
    commands: Commands = field(default_factory=Commands)
    spent: Spent = field(default_factory=Spent)  # tag of a code that stopped working -> why
    throttle: Throttle = Throttle()
    lockdown: bool = False
    remote_opens: tuple[float, ...] = ()
    keypad: KeypadEntry = KeypadEntry()  # volatile
    refusals: Mapping[tuple[str, str], Burst] = field(default_factory=_frozen)  # volatile
    scanner: ScanLimit = ScanLimit()  # volatile

    def __post_init__(self) -> None:
        # Any mapping is taken (tests build states from dicts); kept as its persistent table.
        for name, kind in HISTORY_TABLES.items():
            table = getattr(self, name)
            if type(table) is not kind:
                object.__setattr__(self, name, kind(table))

    def occupancy(self, compartment: Compartment) -> Occupancy:
        if compartment.parcel is None:
            return Occupancy.FREE
        status = self.parcels[compartment.parcel].status
        return {
            ParcelStatus.RESERVED: Occupancy.RESERVED,
            ParcelStatus.DEPOSITED: Occupancy.OCCUPIED,
        }.get(status, Occupancy.EXPIRED)


@dataclass(frozen=True, slots=True)
class Out:
    """An event to append to the outbox; the store gives it seq, id, time and boot id."""

    type: str
    compartment: str | None = None
    parcel: str | None = None
    data: Mapping[str, Any] = field(default_factory=_frozen)


def fresh_state(compartments: Mapping[str, str]) -> LockerState:
    """A new locker: every configured compartment (id -> size) free and in service."""
    return LockerState(
        compartments=_frozen({cid: Compartment(id=cid, size=s) for cid, s in compartments.items()})
    )


def persistent_change(old: LockerState, new: LockerState) -> bool:
    """Whether anything but the volatile fields changed (a key press or a counted refusal
    alone is not worth an fsync)."""
    return any(
        getattr(old, f.name) is not getattr(new, f.name)
        for f in fields(LockerState)
        if f.name not in VOLATILE_FIELDS
    )
