"""The contract documents in docs/ are kept in step with the code.

Every action (with its exact usage line), argument and reject code appears in commands.md;
every event type and denial reason of the schemas appears in mqtt.md; relative links resolve;
nothing points outside the repository.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from locker.contract.actions import Action, RejectCode, arg_fields, usage_line
from tests import contract

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMON = contract.schemas()["common"]["$defs"]


def text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("action", list(Action))
def test_every_action_and_argument_is_documented(action: Action) -> None:
    doc = text("commands.md")
    assert f"### `{action.value}`" in doc
    assert f"`{usage_line(action)}`" in doc, "usage line differs from the model"
    for field in arg_fields(action):
        assert f"{field.name}=" in doc


def test_every_reject_code_is_documented() -> None:
    doc = text("commands.md")
    for code in typing.get_args(RejectCode):
        assert f"`{code}`" in doc, code


@pytest.mark.parametrize("event_type", COMMON["event_type"]["enum"])
def test_every_event_type_is_documented(event_type: str) -> None:
    assert f"`{event_type}`" in text("mqtt.md")


def test_every_denial_reason_is_documented() -> None:
    doc = text("mqtt.md")
    for reason in COMMON["denied_reason"]["enum"]:
        assert f"`{reason}`" in doc, reason


def test_every_mqtt_channel_is_documented() -> None:
    doc = text("mqtt.md")
    for channel in ("status", "state", "evt/{type}", "ack", "cmd", "res"):
        assert f"`{{p}}/{channel}`" in doc, channel


@pytest.mark.parametrize("path", sorted([*DOCS.glob("*.md"), ROOT / "README.md"]))
def test_links_stay_inside_the_repository_and_resolve(path: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"
        assert resolved.exists(), f"{path.name}: {target} does not exist"


def test_readme_points_to_the_contract_documents() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in readme
    assert "(docs/" in readme
