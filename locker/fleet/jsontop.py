"""The top level of a JSON object too deeply nested for ``json.loads`` (RecursionError).

An event whose ``data`` is ``[[[...]]]`` 200,000 deep (well within the 64 KiB a message may
have) makes Python's parser recurse past its limit. Its ``epoch`` and ``seq`` are still
plain members of the top-level object: :func:`top_level` reads them without recursion, so
the event can be held as an ``invalid_event`` placeholder and its stream goes on, rather
than being dropped and blocking the stream at that seq for good (every resend meets the same
error). Nested values are skipped by counting brackets (strings skipped whole by the standard
library's ``raw_decode``, escapes included); keys and scalars are read by ``raw_decode`` too,
which does not recurse for them. JSON: RFC 8259.
"""

from __future__ import annotations

import json
import re
from typing import Any

NESTED = None
"""What a nested member (object or array) is replaced with."""

_WS = re.compile(r"[ \t\n\r]*")
_BRACKET_OR_QUOTE = re.compile(r'[\[\]{}"]')
_DECODER = json.JSONDecoder()


def top_level(payload: bytes) -> dict[str, Any] | None:
    """The members of the JSON object ``payload``, each nested value replaced by ``NESTED``;
    None when ``payload`` is not UTF-8 or not one well-formed JSON object at its top level
    (what is nested is only bracket-matched, not checked)."""
    try:
        text = payload.decode("utf-8")
        return _object(text)
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError):
        return None


def _ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return match.end() if match else i


def _object(text: str) -> dict[str, Any] | None:
    i = _ws(text, 0)
    if text[i] != "{":
        return None
    out: dict[str, Any] = {}
    i = _ws(text, i + 1)
    if text[i] == "}":
        return out if _ws(text, i + 1) == len(text) else None
    while True:
        if text[i] != '"':
            return None
        key, i = _DECODER.raw_decode(text, i)  # a string: no recursion
        i = _ws(text, i)
        if text[i] != ":":
            return None
        i = _ws(text, i + 1)
        if text[i] in "[{":
            out[key], i = NESTED, _skip_nested(text, i)
        else:
            out[key], i = _DECODER.raw_decode(text, i)
        i = _ws(text, i)
        if text[i] == "}":
            return out if _ws(text, i + 1) == len(text) else None
        if text[i] != ",":
            return None
        i = _ws(text, i + 1)


def _skip_nested(text: str, i: int) -> int:
    """The index just past the object or array that starts at ``i`` (iterative)."""
    depth = 0
    while True:
        match = _BRACKET_OR_QUOTE.search(text, i)
        if match is None:
            raise ValueError("unterminated nested value")
        char, i = match.group(), match.end()
        if char == '"':
            _, i = _DECODER.raw_decode(text, i - 1)  # skip the whole string, escapes too
        elif char in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i
