"""The simulator's ``locker>`` prompt: you are the courier, the customer and the operator.

Every line is checked before it runs (balanced quotes, a known command, the right number of
words, and for ``cmd`` the action's argument model, as ``lockerctl cmd send`` checks it), so a
typing mistake gets a message and the prompt again, never a traceback or the end of the
simulation. ``help`` lists the prompt's commands and every signed action with its arguments.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from locker import errors
from locker.contract.actions import SIZES, Action, args_from_text, args_to_json, usage_line
from locker.contract.credentials import TokenAction

if TYPE_CHECKING:
    from locker.sim.cabinet import SimCabinet
    from locker.sim.story import Server, Story

BOLD, RED, RESET = "\033[1m", "\033[31m", "\033[0m"

HELP = """commands:
  assign SIZE [COMPARTMENT]   reserve a compartment (S M L XL); prints both codes
  key CODE                    type CODE and # on the keypad
  qr PARCEL                   scan a pickup QR code for PARCEL
  force ID / shut ID / jam ID / unjam ID   board compartments B1-B6 only (emulator)
  cmd ACTION [NAME=VALUE ...] any signed command, e.g. cmd lockdown on=true
  state                       the locker's retained state snapshot
  log                         the last lines of lockerd's log
  quit"""

# verb -> (least, most) words after it, and its usage line
_ARITY: dict[str, tuple[int, int, str]] = {
    "assign": (1, 2, "assign SIZE [COMPARTMENT]"),
    "key": (1, 1, "key CODE"),
    "qr": (1, 1, "qr PARCEL"),
    "force": (1, 1, "force B1-B6"),
    "shut": (1, 1, "shut B1-B6"),
    "jam": (1, 1, "jam B1-B6"),
    "unjam": (1, 1, "unjam B1-B6"),
    "cmd": (1, 99, "cmd ACTION [NAME=VALUE ...]"),
    "state": (0, 0, "state"),
    "log": (0, 0, "log"),
    "help": (0, 0, "help"),
    "quit": (0, 0, "quit"),
}
_BOARD = {f"B{i}": i for i in range(1, 7)}


class PromptError(errors.UsageError):
    """A prompt line that cannot be run; the message says what to type instead."""


def help_text() -> str:
    """The prompt's commands, then every signed action with its arguments (from the models)."""
    actions = "\n".join(f"  cmd {usage_line(a)}" for a in Action)
    return f"{HELP}\nsigned actions ([optional]):\n{actions}"


def parse_line(line: str) -> list[str]:
    """Split a prompt line like a shell would.

    :raises PromptError: unbalanced quotes, an unknown command, or the wrong number of words.
    """
    try:
        words = shlex.split(line)
    except ValueError as err:  # "No closing quotation", "No escaped character"
        raise PromptError(f"cannot read that line: {err}") from None
    if not words:
        return words
    verb, rest = words[0], words[1:]
    if verb not in _ARITY:
        raise PromptError(f"unknown command {verb!r}; type 'help'")
    least, most, usage = _ARITY[verb]
    if not least <= len(rest) <= most:
        raise PromptError(f"usage: {usage}")
    return words


def command_args(action_name: str, words: Sequence[str]) -> tuple[Action, dict[str, Any]]:
    """``cmd ACTION NAME=VALUE ...`` checked against the action's model, as lockerctl does.

    :raises PromptError: unknown action, a word without ``=``, or arguments the model refuses.
    """
    try:
        action = Action(action_name)
    except ValueError:
        known = ", ".join(a.value for a in Action)
        raise PromptError(f"unknown action {action_name!r} (one of: {known})") from None
    raw: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise PromptError(f"expected NAME=VALUE, got {word!r}; usage: {usage_line(action)}")
        raw[name] = value
    try:
        return action, args_to_json(args_from_text(action, raw))
    except errors.UsageError as err:
        raise PromptError(f"{err}; usage: {usage_line(action)}") from None


def interact(story: Story, lines: Callable[[], str] = lambda: input("locker> ")) -> None:
    """The prompt: one command per line until ``quit`` or end of input. A bad line gets a
    message and the prompt again; nothing a person types ends the simulator but ``quit``."""
    cab, server = story.cab, story.server
    print(f"\n{BOLD}Your turn.{RESET} Type 'help'.")
    while True:
        try:
            words = parse_line(lines().strip())
        except EOFError:
            return
        except PromptError as err:
            print(f"{RED}{err}{RESET}")
            continue
        if not words:
            continue
        if words[0] == "quit":
            return
        try:
            _one(story, cab, server, words)
        except PromptError as err:
            print(f"{RED}{err}{RESET}")
        except Exception as err:  # the locker's or the broker's trouble: report, keep the prompt
            print(f"{RED}{type(err).__name__}: {err}{RESET}")


def _one(story: Story, cab: SimCabinet, server: Server, words: list[str]) -> None:
    verb, rest = words[0], words[1:]
    if verb == "help":
        print(help_text())
    elif verb == "assign":
        size = rest[0].upper()
        if size not in SIZES:
            raise PromptError(f"size must be one of {' '.join(SIZES)}")
        story.assign(size, rest[1] if len(rest) > 1 else None)
    elif verb == "key":
        cab.press(rest[0].rstrip("#") + "#")
    elif verb == "qr":
        cab.scan(cab.token(rest[0], TokenAction.PICKUP))
    elif verb in ("force", "shut", "jam", "unjam"):
        emu, ch = cab.emulator, _BOARD.get(rest[0].upper())
        if emu is None or ch is None:
            raise PromptError(f"{verb} works on the board compartments B1-B6 only")
        {
            "force": lambda: emu.force_open(0, ch),
            "shut": lambda: emu.close_door(0, ch),
            "jam": lambda: emu.set_jammed(0, ch),
            "unjam": lambda: emu.set_jammed(0, ch, False),
        }[verb]()
    elif verb == "cmd":
        action, args = command_args(rest[0], rest[1:])
        server.command(cab, action.value, args)
    elif verb == "state":
        for c in server.state.get("compartments", []):
            print(
                f"  {c['id']:<4} {c['size']:<3} {c['state']:<9} door={c['door']:<8}"
                f" {'' if c['in_service'] else 'OUT OF SERVICE '}{c['parcel'] or ''}"
            )
    elif verb == "log":
        print("\n".join(cab.log().splitlines()[-20:]))
