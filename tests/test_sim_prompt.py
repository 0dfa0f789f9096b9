"""The simulator's prompt and work directory: typing mistakes and a second run are handled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from locker.contract.actions import Action, usage_line
from locker.sim import prompt
from locker.sim.story import Story
from locker.sim.workdir import WORKDIR_MARKER, WorkdirError, claim_default, claim_workdir


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('key "123', "cannot read that line"),
        ("key", "usage: key CODE"),
        ("qr", "usage: qr PARCEL"),
        ("assign", "usage: assign SIZE [COMPARTMENT]"),
        ("force", "usage: force B1-B6"),
        ("cmd", "usage: cmd ACTION"),
        ("state now", "usage: state"),
        ("open A1", "unknown command 'open'"),
    ],
)
def test_bad_lines_get_a_message_not_a_traceback(line: str, message: str) -> None:
    with pytest.raises(prompt.PromptError, match=re.escape(message)):
        prompt.parse_line(line)


def test_good_lines_are_split_like_a_shell() -> None:
    assert prompt.parse_line("") == []
    assert prompt.parse_line('cmd open compartment=A1 "reason=a customer called"') == [
        "cmd",
        "open",
        "compartment=A1",
        "reason=a customer called",
    ]


def test_command_arguments_follow_the_models() -> None:
    assert prompt.command_args("lockdown", ["on=true"]) == (Action.LOCKDOWN, {"on": True})
    assert prompt.command_args("resync", []) == (Action.RESYNC, {})
    for action, words, message in (
        ("open_all", [], "unknown action"),
        ("lockdown", ["on=maybe"], "on"),
        ("lockdown", ["on"], "expected NAME=VALUE"),
        ("open", ["compartment=A1"], "reason"),
        ("resync", ["full=1"], "full"),
    ):
        with pytest.raises(prompt.PromptError, match=message):
            prompt.command_args(action, words)


def test_help_lists_every_action_with_its_arguments() -> None:
    text = prompt.help_text()
    for action in Action:
        assert f"cmd {usage_line(action)}" in text


def test_the_prompt_survives_every_mistake_until_quit(capsys: pytest.CaptureFixture[str]) -> None:
    lines: Iterator[str] = iter(['key "1', "key", "cmd lockdown on=maybe", "help", "", "quit"])
    story = cast(Story, SimpleNamespace(cab=None, server=None))
    prompt.interact(story, lambda: next(lines))
    out = capsys.readouterr().out
    assert "No closing quotation" in out and "usage: key CODE" in out
    assert "lockdown on=true|false" in out  # the usage after the refused value, and in help
    assert "Traceback" not in out and "list index out of range" not in out
    assert next(lines, None) is None  # every line was read: quit ended it, nothing else did


def test_end_of_input_ends_the_prompt() -> None:
    def eof() -> str:
        raise EOFError

    prompt.interact(cast(Story, SimpleNamespace(cab=None, server=None)), eof)


# --- the work directory --------------------------------------------------------------------------


def test_a_folder_the_simulator_did_not_make_is_never_emptied(tmp_path: Path) -> None:
    work = tmp_path / "mine"
    work.mkdir()
    (work / "thesis.tex").write_text("precious")
    with pytest.raises(WorkdirError, match="did not make it"):
        claim_workdir(work)
    assert (work / "thesis.tex").read_text() == "precious"


def test_an_empty_or_marked_folder_is_taken_and_emptied(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    work.mkdir()
    with claim_workdir(work):
        assert (work / WORKDIR_MARKER).is_file()
        (work / "old.db").write_text("x")
    with claim_workdir(work):
        assert sorted(p.name for p in work.iterdir()) == [WORKDIR_MARKER]


def test_a_second_simulator_never_wipes_a_running_one(tmp_path: Path) -> None:
    base = tmp_path / "sim"
    first, lock = claim_default(base)
    with lock:
        (first / "lockerd.db").write_text("in use")
        with pytest.raises(WorkdirError, match="in use by another simulator"):
            claim_workdir(base)
        second, lock2 = claim_default(base)
        with lock2:
            assert second == tmp_path / "sim-2"
        assert (first / "lockerd.db").read_text() == "in use"
