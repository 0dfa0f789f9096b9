"""What the REST API takes: its JSON bodies and the text of its paths and queries (DESIGN 13).

Every text an API request carries is checked here, before anything reaches a database: it
is bounded, and printable (no control characters; a note may hold line breaks and tabs). A
NUL in a reason was a 500 on PostgreSQL (``psycopg.DataError``: text columns cannot hold
U+0000), and control characters in free text end up in logs, events and terminals. A
violation is 422 ``invalid_args`` naming the field, like any other.

JSON values must have the declared JSON type (pydantic's strict mode: ``"yes"`` is not a
boolean, ``true`` is not a number), and every integer is bounded (see ``api``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from locker.contract import numbers

RETRIEVE_HOURS = 48  # a courier retrieval code's default validity (the API's valid_hours)
MAX_PICKUP_HOURS = 24 * 30
"""The longest pickup window the API sets, at issue (``pickup_hours``) or by ``extend``
(``pickup_until`` at most this far from now): a compartment is a shared resource, and a
parcel left longer than a month is a storage case for an operator, not a pickup. (The
locker's own bound is the contract's ``MAX_PICKUP_HOURS``, a year: a command can come from
lockerctl too.)"""

_LINE_BREAKS = str.maketrans("", "", "\r\n\t")
_NO_CONTROLS = r"^[^\x00-\x1f\x7f-\x9f]*$"  # a path or query value: printable, for the regex


def printable(text: str) -> str:
    """``text`` when it holds no control character. :raises ValueError: it does (why)."""
    if not text.isprintable():
        raise ValueError("must be printable text (no control characters such as NUL)")
    return text


def printable_lines(text: str) -> str:
    """``text`` when it holds no control character but line breaks and tabs.

    :raises ValueError: it does (why)."""
    if not text.translate(_LINE_BREAKS).isprintable():
        raise ValueError("must be printable text (line breaks and tabs allowed; no NUL)")
    return text


Reason = Annotated[str, Field(max_length=500), AfterValidator(printable)]
"""A reason for the audit trail (the ``commands`` table; the locker's own copy, where a
command carries one, is bounded by the contract at 200)."""
Name64 = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(printable)]
Name128 = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(printable)]


Note = Annotated[str, Field(max_length=2000), AfterValidator(printable_lines)]

LockerId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=_NO_CONTROLS, description="locker id")
]
ParcelId = Annotated[
    str, Path(min_length=1, max_length=128, pattern=_NO_CONTROLS, description="parcel id")
]
Epoch = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=_NO_CONTROLS,
        description=(
            "the locker's event stream (its ``epoch``, a new one after its state was wiped). "
            "Default: the locker's current epoch, so events of earlier epochs are listed only "
            "when asked for by name; ``after_seq`` counts within the epoch"
        ),
    ),
]


class _Body(BaseModel):
    # strict: JSON types are kept exactly ("yes" is no boolean, true no integer, 1.0 no integer)
    model_config = ConfigDict(extra="forbid", strict=True)


class ParcelIn(_Body):
    locker: Name64
    parcel: Name128
    size: Literal["S", "M", "L", "XL"]
    kind: Literal["delivery", "return"] = "delivery"
    compartment: Name64 | None = None
    pickup_hours: int | None = Field(default=None, ge=1, le=MAX_PICKUP_HOURS)
    accessible: bool = False  # only an accessible compartment (assign's own argument)


class CommandIn(_Body):
    action: Annotated[str, Field(min_length=1, max_length=32), AfterValidator(printable)]
    args: dict[str, Any] = {}
    reason: Annotated[Reason, Field(min_length=1)]


class ReasonIn(_Body):
    reason: Reason = ""


class ExtendIn(_Body):
    # Unix seconds, as the contract; later than the current window's end and at most
    # MAX_PICKUP_HOURS from now (checked against the clock and the ledger by Actions)
    pickup_until: int = Field(gt=0, le=numbers.MAX_UINT32)
    reason: Reason = ""


class RetrieveIn(_Body):
    valid_hours: int = Field(default=RETRIEVE_HOURS, ge=1, le=24 * 7)
    reason: Reason = ""


class AckIn(_Body):
    note: Note = ""
