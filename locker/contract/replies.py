"""The shape of a command's reply on ``{p}/res`` and the contract's timestamp format
(DESIGN section 5). Light on purpose: the cabinet's store and domain import it without pulling
in pydantic or PyJWT."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from locker.contract.actions import CommandRejected

ReplyStatus = Literal["done", "rejected", "failed", "duplicate", "expired"]


def reply_payload(
    cmd_id: str | None,
    status: ReplyStatus,
    error: tuple[str, str] | None = None,
    result: Mapping[str, object] | None = None,
    *,
    ts: float,
) -> dict[str, object]:
    """The ``{p}/res`` document. ``error`` is ``(code, message)``; ``ts`` Unix seconds."""
    reply: dict[str, object] = {"v": 1, "cmd_id": cmd_id, "status": status}
    if error is not None:
        reply["error"] = {"code": error[0], "message": error[1]}
    if result is not None:
        reply["result"] = dict(result)
    reply["ts"] = rfc3339(ts)
    return reply


def rejection_reply(rejection: CommandRejected, *, ts: float) -> dict[str, object]:
    """The reply for a failed verification: an expired command is answered ``expired``."""
    status: ReplyStatus = "expired" if rejection.code == "expired" else "rejected"
    return reply_payload(rejection.cmd_id, status, (rejection.code, rejection.message), ts=ts)


def rfc3339(ts: float) -> str:
    """UTC, millisecond precision, ``Z`` suffix: ``2026-11-21T06:53:00.123Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
