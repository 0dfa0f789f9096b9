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

from pydantic import BaseModel, Tag
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


REPORTED_ELSEWHERE: Final = "reported_by_the_relation_pass"
"""Error type of a pydantic check whose mistake the relation pass reports with more context
(a compartment with both kinds of wiring or none); such errors are dropped here."""


def located(error: Mapping[str, Any], root: type[BaseModel]) -> Issue | None:
    """Where one pydantic error is in the file, and why, in the file's terms (None: the
    relation pass reports it).

    A table that is one of several kinds (a discriminated union: ``[keypad]`` by its ``type``,
    a compartment by its wiring keys) has pydantic's tag removed from the path, and its
    mistakes read as the kind they are about (the kind's ``REQUIRED`` and ``NOT_USED``):
    ``keypad.port: required with type = "serial"``.
    """
    kind = error["type"]
    if kind == REPORTED_ELSEWHERE:
        return None
    raw = tuple(error["loc"])
    loc, tagged, kinds = _walk(raw, root)
    if kind == "union_tag_not_found":
        return (*loc, "type"), "required key is missing"
    if kind == "union_tag_invalid":
        tags = str(error.get("ctx", {}).get("expected_tags", "")).split(", ")
        expected = " or ".join([", ".join(tags[:-1]), tags[-1]] if len(tags) > 1 else tags)
        return (*loc, "type"), f"must be {expected}"
    if kind == "missing":
        if tagged is not None:
            return loc, str(getattr(tagged, "REQUIRED", "required key is missing"))
        return loc, "required section is missing" if len(loc) == 1 else "required key is missing"
    if kind == "extra_forbidden":
        if tagged is not None and any(loc[-1] in m.model_fields for m in kinds):
            return loc, str(getattr(tagged, "NOT_USED", "unknown key"))
        return loc, "unknown key (typo?)" + _suggestion(loc[-1], _table_model(raw[:-1], root))
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {toml_type(error.get('input'))}"
    message = str(error["msg"]).replace("Input should be", "must be", 1)
    if loc and loc[-1] == "[key]" and kind != "config":
        return loc, f"table key: {message}"
    return loc, message


def _walk(
    raw: Loc, root: type[BaseModel]
) -> tuple[Loc, type[BaseModel] | None, list[type[BaseModel]]]:
    """``raw`` without union tags, the kind of the last union met, and that union's kinds."""
    loc, tagged, kinds, _model = _follow(raw, root)
    return loc, tagged, kinds


def _table_model(raw: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model of the table at ``raw`` (None when it is not one model)."""
    return _follow(raw, root)[3]


def _follow(
    raw: Loc, root: type[BaseModel]
) -> tuple[Loc, type[BaseModel] | None, list[type[BaseModel]], type[BaseModel] | None]:
    model: type[BaseModel] | None = root
    loc: list[str | int] = []
    tagged: type[BaseModel] | None = None
    kinds: list[type[BaseModel]] = []
    tags: dict[str, type[BaseModel]] = {}
    for part in raw:
        if isinstance(part, str) and part in tags:  # pydantic's union tag: not a key
            model = tagged = tags[part]
            kinds, tags = list(tags.values()), {}
            continue
        loc.append(part)
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        candidates = _models_in(field.annotation) if field else []
        model = candidates[0] if len(candidates) == 1 else None
        tags = _tagged(field.annotation) if field and len(candidates) > 1 else {}
    return tuple(loc), tagged, kinds, model


def _tagged(annotation: object, tag: str | None = None) -> dict[str, type[BaseModel]]:
    """The kinds of a discriminated union by tag: ``Tag`` metadata or a Literal ``type``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        return _tagged(inner, next((m.tag for m in meta if isinstance(m, Tag)), tag))
    if origin in (list, types.UnionType, typing.Union):
        return {t: m for arg in typing.get_args(annotation) for t, m in _tagged(arg).items()}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get("type")
        literal = typing.get_args(field.annotation) if field else ()
        name = tag or (literal[0] if len(literal) == 1 else None)
        return {name: annotation} if isinstance(name, str) else {}
    return {}


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
