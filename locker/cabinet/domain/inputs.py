"""The inputs of the state machine that do not come from adapters: time, start, stop, commands.

Adapter inputs (keys, scans, doors, items, unlock results, faults) are the port types of
``locker.ports``; ``Input`` is the union of both, what ``machine.step`` accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from locker.contract.actions import Command, CommandRejected
from locker.ports import (
    DoorChanged,
    DoorState,
    HardwareFault,
    HardwareRecovered,
    InputRejected,
    ItemChanged,
    KeyPressed,
    LineScanned,
    UnlockResult,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; deadlines are checked on every input anyway."""


@dataclasses.dataclass(frozen=True, slots=True)
class Boot:
    """Start-up: the door and item sensors as read now, before anything is actuated."""

    doors: Mapping[str, DoorState]
    items: Mapping[str, bool | None]
    version: str


@dataclasses.dataclass(frozen=True, slots=True)
class Stop:
    reason: str = "signal"


@dataclasses.dataclass(frozen=True, slots=True)
class ClockSuspect:
    """The wall clock gave a reading the locker refused to trust (DESIGN section 6)."""

    reading: float
    trusted: float
    synced: bool


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateDue:
    """The locker's MQTT client certificate ends within ``certificates.RENEW_WITHIN`` (or has
    ended): the broker will refuse it then (``locker.contract.certificates``)."""

    certificate: str  # which one: the config option naming its file, ``mqtt.cert_file``
    not_after: float  # Unix seconds


@dataclasses.dataclass(frozen=True, slots=True)
class CommandArrived:
    """A command after signature checks: ``command`` when valid, ``rejected`` otherwise."""

    command: Command | None
    rejected: CommandRejected | None
    correlation_data: bytes | None


Input = (
    KeyPressed
    | LineScanned
    | InputRejected
    | DoorChanged
    | ItemChanged
    | UnlockResult
    | HardwareFault
    | HardwareRecovered
    | Tick
    | Boot
    | Stop
    | CommandArrived
    | ClockSuspect
    | CertificateDue
)
