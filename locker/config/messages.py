"""Error messages of the configuration file: ``file: key.path: reason``, one per mistake, in
the order of the example file, with a "did you mean" for a misspelt key."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel
from pydantic_core import InitErrorDetails, PydanticCustomError

from locker.config.fields import toml_type

# --- error messages -------------------------------------------------------------------------


Loc = tuple[str | int, ...]
Issue = tuple[Loc, str]


def file_order(loc: Loc, sections: list[str]) -> tuple[int, int]:
    """Sort key of an error: its section as the example file orders them, then its entry."""
    top = loc[0] if loc else ""
    index = sections.index(top) if top in sections else len(sections)
    return index, loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1


def detail(loc: Loc, reason: str) -> InitErrorDetails:
    error = PydanticCustomError("config", "{reason}", {"reason": reason})
    return InitErrorDetails(type=error, loc=loc, input=None)


_EXPECTED: Final = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def located(error: Mapping[str, Any], root: type[BaseModel]) -> Issue:
    """Where one pydantic error is in the file, and why, in the file's terms.

    A table that is one of several kinds (a discriminated union on its ``type`` key, such as
    ``[keypad]``) has pydantic's tag removed from the path, and its mistakes read as the kind
    they are about: ``keypad.port: required with type = "serial"``.
    """
    kind = error["type"]
    raw = tuple(error["loc"])
    loc, tag, kinds, _model = _walk(raw, root)
    if kind == "union_tag_not_found":
        return (*loc, "type"), "required key is missing"
    if kind == "union_tag_invalid":
        tags = str(error.get("ctx", {}).get("expected_tags", "")).split(", ")
        expected = " or ".join([", ".join(tags[:-1]), tags[-1]] if len(tags) > 1 else tags)
        return (*loc, "type"), f"must be {expected}"
    if kind == "missing":
        if tag is not None:
            return loc, f"required with type = {json.dumps(tag)}"
        return loc, "required section is missing" if len(loc) == 1 else "required key is missing"
    if kind == "extra_forbidden":
        if tag is not None and any(loc[-1] in m.model_fields for m in kinds):
            return loc, f"not used with type = {json.dumps(tag)}"
        parent = _walk(raw[:-1], root)[3]
        return loc, "unknown key (typo?)" + _suggestion(loc[-1], parent)
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {toml_type(error.get('input'))}"
    message = str(error["msg"]).replace("Input should be", "must be", 1)
    if loc and loc[-1] == "[key]" and kind != "config":
        return loc, f"table key: {message}"
    return loc, message


def _walk(
    raw: Loc, root: type[BaseModel]
) -> tuple[Loc, str | None, list[type[BaseModel]], type[BaseModel] | None]:
    """``raw`` without union tags, the last tag met, that union's models, and the model of
    the table ``raw`` ends at (None when it is not one)."""
    model: type[BaseModel] | None = root
    loc: list[str | int] = []
    tag: str | None = None
    kinds: list[type[BaseModel]] = []
    parts = list(raw)
    while parts:
        part = parts.pop(0)
        loc.append(part)
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        candidates = _models_in(field.annotation) if field else []
        model = candidates[0] if len(candidates) == 1 else None
        tags = {_tag_of(m): m for m in candidates} if len(candidates) > 1 else {}
        if parts and isinstance(parts[0], str) and parts[0] in tags:
            tag = str(parts.pop(0))
            model, kinds = tags[tag], candidates
    return tuple(loc), tag, kinds, model


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The models an annotation can hold (through lists, unions and ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (list, types.UnionType, typing.Union, typing.Annotated):
        args = typing.get_args(annotation)
        return [m for arg in (args[:1] if origin is typing.Annotated else args)
                for m in _models_in(arg)]  # fmt: skip
    return []


def _suggestion(key: str | int, model: type[BaseModel] | None) -> str:
    if not isinstance(key, str) or model is None:
        return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def format_loc(loc: Loc) -> str:
    """``("compartments", 2, "lock_pin")`` -> ``compartments[2].lock_pin``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            key = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{key}" if out else key
    return out
