"""How the state database's rows map to the domain model: values to compact JSON, JSON rows back
to the model's dataclasses (old row shapes converted, not lost), and which rows of a table
changed. Used by locker.cabinet.store only; no database access here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from locker.cabinet.domain.model import (
    CommandRecord,
    Compartment,
    Credential,
    Parcel,
    ParcelStatus,
    Step,
    Throttle,
    Unlock,
)
from locker.ports import DoorState

__all__ = [
    "CREDENTIAL_COLUMNS",
    "changed_rows",
    "credential_columns",
    "credentials_from_columns",
    "dump",
    "jsonable",
    "load_command",
    "load_compartment",
    "load_parcel",
    "load_throttle",
    "load_unlock",
]


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    return value  # StrEnum members serialise as their value


def dump(value: Any) -> str:
    return json.dumps(jsonable(value), separators=(",", ":"), sort_keys=True)


def load_unlock(raw: dict[str, Any] | None) -> Unlock | None:
    if raw is None:
        return None
    return Unlock(**{**raw, "purpose": Step(raw["purpose"])})


def load_compartment(raw: dict[str, Any]) -> Compartment:
    return Compartment(
        **{
            **raw,
            "door": DoorState(raw["door"]),
            "pending": load_unlock(raw["pending"]),
            "session": load_unlock(raw["session"]),
            "pulses": tuple(raw["pulses"]),
        }
    )


def load_parcel(raw: dict[str, Any]) -> Parcel:
    return Parcel(**{**raw, "status": ParcelStatus(raw["status"])})


# The credentials table's columns (schema 2), in the order of ``credential_columns``.
CREDENTIAL_COLUMNS = "tag, parcel, step, valid_from, valid_until, armed"
_STEPS = {str(s): s for s in Step}  # a dict look-up: Step(value) is slower, 100,000 times


def credential_columns(c: Credential) -> tuple[str, str, str, float, float | None, int]:
    """A credential as the values of ``CREDENTIAL_COLUMNS``."""
    return (c.tag, c.parcel, str(c.step), c.valid_from, c.valid_until, int(c.armed))


def credentials_from_columns(
    rows: Iterable[tuple[Any, ...]], parcels: Mapping[str, object]
) -> dict[str, Credential]:
    """Stored credential rows (``CREDENTIAL_COLUMNS``) whose parcel is in ``parcels``, by tag.
    Each credential's parcel id is the very string of ``parcels``' key: 100,000 codes on a
    few parcels share a few strings, not 100,000 copies."""
    ids = {pid: pid for pid in parcels}
    steps = _STEPS
    out: dict[str, Credential] = {}
    for tag, parcel, step, valid_from, valid_until, armed in rows:
        pid = ids.get(parcel)
        if pid is not None:
            out[tag] = Credential(tag, pid, steps[step], valid_from, valid_until, bool(armed))
    return out


def changed_rows(
    old: Mapping[str, Any], new: Mapping[str, Any], keys: Collection[str] | None
) -> Iterator[tuple[str, Any]]:
    """(key, new value) of every row that differs, None for a row that is gone. ``keys``:
    the only keys that may differ (None: compare the whole table)."""
    if old is new:
        return
    for k in new.keys() | old.keys() if keys is None else keys:
        v, was = new.get(k), old.get(k)
        if v is None:
            if was is not None:
                yield k, None
        elif was is not v and was != v:
            yield k, v


def load_throttle(raw: dict[str, Any]) -> Throttle:
    """The stored throttle. ``recent`` was a list of failure times before it became
    per-minute buckets: an old record is converted, not lost."""
    buckets: dict[int, int] = {}
    for item in raw.get("recent", ()):
        minute, n = (int(item[0]), int(item[1])) if isinstance(item, list) else (int(item // 60), 1)
        buckets[minute] = buckets.get(minute, 0) + n
    return Throttle(**{**raw, "recent": tuple(sorted(buckets.items()))})


def load_command(raw: dict[str, Any]) -> CommandRecord:
    return CommandRecord(**raw)
