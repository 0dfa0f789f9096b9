"""What the state machine needs from configuration, as plain values (DESIGN section 8).

The defaults here are the domain's; ``locker.cabinet.config`` fills every field from the
validated file, so a field's default only matters to tests that build ``Rules`` by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from locker.cabinet.domain import throttle


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """Everything the machine needs from configuration, as plain values."""

    locker_id: str
    device_key: bytes = dataclasses.field(repr=False)
    token_keys: Mapping[int, Ed25519PublicKey] = dataclasses.field(repr=False)
    compartment_order: tuple[str, ...] = ()
    door_open_timeout_s: float = 10.0
    door_left_open_s: float = 120.0
    keypad_entry_timeout_s: float = 20.0
    pickup_hours: float = 72.0
    dropoff_hours: float = 48.0
    max_remote_opens_per_hour: int = 20
    limits: throttle.Limits = dataclasses.field(default_factory=throttle.Limits)
