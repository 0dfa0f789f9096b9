"""``schemas/command.json`` generated from the argument models and the verifier's constants.

The JSON Schema of a command's claims is not written by hand: ``command_schema()`` builds it from
``locker.contract.actions`` (one pydantic class per action: ``$defs/args_<action>``) and from the
limits ``locker.contract.commands`` enforces (``jti``, times). ``tests/test_schemas.py`` fails
when the committed file differs from the generated one; regenerate it with::

    python -m locker.contract.schema

The AsyncAPI document (``asyncapi.yaml``) refers to the file, so it follows too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from locker.contract.actions import (
    ACTION_SUMMARY,
    LONG_LIFETIME_S,
    SHORT_LIFETIME_S,
    SHORT_LIVED_ACTIONS,
    Action,
    args_adapter,
)
from locker.contract.commands import JTI_PATTERN

SCHEMA_DIR = Path(__file__).parent / "schemas"
COMMAND_SCHEMA_FILE = SCHEMA_DIR / "command.json"
BASE_URI = "https://schemas.parcel-locker.invalid/v1/"


def _untitled(node: Any) -> Any:
    """Drop pydantic's generated ``title`` keys: noise for readers of the contract."""
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def args_schema(action: Action) -> dict[str, Any]:
    """The JSON Schema of ``action``'s ``args`` object, from its model."""
    schema: dict[str, Any] = _untitled(args_adapter(action).json_schema())
    schema["description"] = ACTION_SUMMARY[action]
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    return schema


def command_schema() -> dict[str, Any]:
    """The whole ``command.json`` document (JSON Schema 2020-12)."""
    short = ", ".join(sorted(a.value for a in SHORT_LIVED_ACTIONS))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE_URI}command.json",
        "title": "JWS claims of a {p}/cmd payload (EdDSA over Ed25519, RFC 8037)",
        "description": (
            f"Generated from locker/contract/actions.py by `python -m locker.contract.schema`. "
            f"exp - iat is at most {SHORT_LIFETIME_S} s for {short}, at most "
            f"{LONG_LIFETIME_S // 86400} days for the others; the device also checks aud, the "
            f"time window and that jti is new."
        ),
        "type": "object",
        "required": ["aud", "jti", "iat", "exp", "act", "args"],
        "additionalProperties": False,
        "properties": {
            "aud": {"type": "string", "minLength": 1, "maxLength": 64, "description": "locker_id"},
            "jti": {
                "type": "string",
                "pattern": JTI_PATTERN,
                "description": "unique command id: 8-128 printable ASCII characters, no space",
            },
            "iat": {"$ref": "common.json#/$defs/unix_s"},
            "nbf": {"$ref": "common.json#/$defs/unix_s"},
            "exp": {"$ref": "common.json#/$defs/unix_s"},
            "act": {"enum": [a.value for a in Action]},
            "args": {"type": "object"},
        },
        "$defs": {f"args_{a.value}": args_schema(a) for a in Action},
        "allOf": [
            {
                "if": {"properties": {"act": {"const": a.value}}, "required": ["act"]},
                "then": {"properties": {"args": {"$ref": f"#/$defs/args_{a.value}"}}},
            }
            for a in Action
        ],
    }


def render() -> str:
    """The file's exact text: two-space indent, trailing newline."""
    return json.dumps(command_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    COMMAND_SCHEMA_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {COMMAND_SCHEMA_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
