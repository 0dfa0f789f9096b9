"""What the state machine needs from configuration, as plain values (DESIGN section 8).

No defaults here: the assembly fills every field from the validated file, so the config
model (``locker.config``) holds the only defaults.
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
    door_open_timeout_s: float
    door_left_open_s: float
    keypad_entry_timeout_s: float
    pickup_hours: float
    dropoff_hours: float
    max_remote_opens_per_hour: int
    code_length: int  # keypad entries of another length are malformed, never guesses
    limits: throttle.Limits
    # Compartments within reach of a wheelchair user (DESIGN 8); none unless configured.
    accessible: frozenset[str] = frozenset()
