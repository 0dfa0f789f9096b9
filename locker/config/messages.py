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

from pydantic import (
    BaseModel,
)
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


def message(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """The reason of one pydantic error, in the file's terms."""
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "missing":
        return "required section is missing" if len(loc) == 1 else "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (typo?)" + _suggestion(loc, root)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {toml_type(error.get('input'))}"
    message = str(error["msg"]).replace("Input should be", "must be", 1)
    return f"table key: {message}" if loc and loc[-1] == "[key]" and kind != "config" else message


def _suggestion(loc: Loc, root: type[BaseModel]) -> str:
    if not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], _keys_at(loc[:-1], root), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _keys_at(loc: Loc, root: type[BaseModel]) -> list[str]:
    """The keys allowed in the table at ``loc`` (empty when it is not a model)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, types.UnionType, typing.Union):
        return next(filter(None, map(_model_in, typing.get_args(annotation))), None)
    return None


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
