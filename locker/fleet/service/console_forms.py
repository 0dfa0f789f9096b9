"""Validation of the console's action forms: every field checked, nothing guessed.

A form that does not validate sends nothing; the caller shows every problem on one page.
Before this module, ``flag`` was ``form.get("flag") == "true"``: ``flag=maybe`` took a
compartment out of service and a lockdown form without ``flag`` lifted the lockdown; a reason
was cut at 200 characters and an alarm note at 500 without a word. Now each field has one
limit, the REST API's (``REASON_MAX``, ``NOTE_MAX``: the ``max_length`` of its request
bodies), and a value above it is refused with a message, never truncated.

Shapes: :func:`locker_action` takes the posted form (a mapping of field name to string) and
the locker's compartment ids and returns a :class:`LockerAction` or a :class:`Problems` (a
list of human sentences, one per bad field).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from locker.fleet.service import bodies

REASON_MAX = 500  # the API's CommandBody.reason max_length
NOTE_MAX = 2000  # the API's alarm AckBody.note max_length
FLAGS = {"true": True, "false": False}
COMMON = frozenset({"csrf", "action", "reason"})
FIELDS: dict[str, frozenset[str]] = {
    "open": frozenset({"compartment"}),
    "set_service": frozenset({"compartment", "flag"}),
    "lockdown": frozenset({"flag"}),
    "reset_lockout": frozenset(),
}
FLAG_WORDS = {
    "set_service": "in service (true) or out of service (false)",
    "lockdown": "on (true) or off (false)",
}


@dataclass(frozen=True)
class LockerAction:
    action: str
    args: dict[str, Any]
    reason: str


@dataclass
class Problems:
    lines: list[str] = field(default_factory=list)


def _text(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return None if value is None else str(value)


def reason_problem(reason: str, what: str = "reason") -> str | None:
    """The problem with a stripped reason, or None: required, at most ``REASON_MAX``."""
    if not reason:
        return f"A {what} is required: say why, it goes into the locker's own record."
    if len(reason) > REASON_MAX:
        return (
            f"The {what} has {len(reason)} characters; at most {REASON_MAX} are kept. "
            "Shorten it and send again."
        )
    return _control_problem(reason, what, bodies.printable)


def note_problem(note: str) -> str | None:
    """The problem with an alarm's note, or None: at most ``NOTE_MAX``, printable (line
    breaks allowed), as the API's ``Note``."""
    if len(note) > NOTE_MAX:
        return (
            f"The note has {len(note)} characters; at most {NOTE_MAX} are kept. "
            "Shorten it and send again."
        )
    return _control_problem(note, "note", bodies.printable_lines)


def _control_problem(text: str, what: str, check: Callable[[str], str]) -> str | None:
    # the API's own check: a NUL was a 500 on PostgreSQL (text columns cannot hold U+0000)
    try:
        check(text)
    except ValueError as err:
        return f"The {what} {err}."
    return None


def locker_action(
    form: Mapping[str, Any], compartments: Collection[str]
) -> LockerAction | Problems:
    """Check one posted action form (see the module doc)."""
    problems = Problems()
    action = _text(form, "action") or ""
    if action not in FIELDS:
        known = ", ".join(FIELDS)
        problems.lines.append(f"Unknown action {action[:32]!r}: expected one of {known}.")
        return problems
    allowed = COMMON | FIELDS[action]
    extra = sorted(str(k)[:32] for k in form if k not in allowed)
    if extra:
        problems.lines.append(f"Fields {', '.join(extra)} do not belong to {action}.")
    args: dict[str, Any] = {}
    if "compartment" in FIELDS[action]:
        comp = _text(form, "compartment") or ""
        if comp not in compartments:
            problems.lines.append(
                f"Compartment {comp[:16]!r} is not one of this locker's "
                f"({', '.join(sorted(compartments)) or 'none reported'})."
            )
        args["compartment"] = comp
    if "flag" in FIELDS[action]:
        raw = _text(form, "flag")
        if raw not in FLAGS:
            shown = "missing" if raw is None else repr(raw[:16])
            problems.lines.append(f"The new state is {shown}: choose {FLAG_WORDS[action]}.")
        else:
            args["in_service" if action == "set_service" else "on"] = FLAGS[raw]
    reason = (_text(form, "reason") or "").strip()
    why = reason_problem(reason)
    if why:
        problems.lines.append(why)
    if problems.lines:
        return problems
    return LockerAction(action, args, reason)


def reply_note(action: str, result: Mapping[str, Any] | None) -> str:
    """What the operator should know from a done command's ``result`` beyond "done" (empty
    when nothing): for ``set_service``, a reservation the locker moved elsewhere (``moved``)
    or a parcel the compartment still holds (``holds``: its codes are refused while it is out
    of service). Shapes: docs/commands.md, ``set_service``."""
    if action != "set_service" or not result:
        return ""
    where = str(result.get("compartment", "?"))
    moved, holds = result.get("moved"), result.get("holds")
    if isinstance(moved, Mapping):
        return f"; reservation {moved.get('parcel')} moved from {where} to {moved.get('to')}"
    if isinstance(holds, Mapping):
        return (
            f"; {where} still holds parcel {holds.get('parcel')} ({holds.get('status')}): "
            "its codes are refused while the compartment is out of service"
        )
    return ""
