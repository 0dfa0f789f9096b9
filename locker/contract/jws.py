"""JWS compact serialization with EdDSA over Ed25519 (RFC 7515, RFC 8037) for signed commands.

Owns the byte-level part of DESIGN section 5's command format: signing (``lockerctl``, tests)
and verifying a token over the exact bytes received, with a key chosen by ``kid``. PyJWT does
the base64url and signature work; this module pins the algorithm to EdDSA whatever the header
says (no ``none``, no HMAC with a public key as secret) and parses the payload strictly. The
meaning of the claims is judged by ``locker.contract.commands``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from locker import errors

ALGORITHM = "EdDSA"

# Three base64url segments, nothing else (no padding, no whitespace, no JSON serialization).
_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# Only EdDSA is registered, so even a bug in our header check cannot pick another algorithm.
_JWS = jwt.PyJWS(algorithms=[ALGORITHM])
# The contract's header is alg and kid; typ is tolerated because common JWT libraries add it.
_HEADER_KEYS = frozenset({"alg", "kid", "typ"})


class JwsError(errors.ContractError):
    """A token that cannot be accepted; the subclass says why."""


class MalformedJws(JwsError):  # noqa: N818 - verdicts read better as adjectives
    """Not a compact JWS of our profile (structure, header, algorithm or payload JSON)."""


class UnknownKid(JwsError):  # noqa: N818
    """The header names a key this device does not have."""


class BadSignature(JwsError):  # noqa: N818
    """The signature does not verify with the key named by ``kid``."""


def sign_command(private_key: Ed25519PrivateKey, kid: str, claims: Mapping[str, Any]) -> bytes:
    """Sign ``claims`` into a compact JWS with the header exactly ``{"alg":"EdDSA","kid":kid}``."""
    payload = json.dumps(dict(claims), separators=(",", ":"), ensure_ascii=False).encode()
    # typ=None removes PyJWT's default "typ":"JWT": the contract's header has alg and kid only.
    token = _JWS.encode(
        payload, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": None}
    )
    return token.encode("ascii")


def verify_compact(
    token: bytes, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify ``token`` (the received bytes, unmodified) and return ``(header, claims)``.

    Raises ``MalformedJws``, ``UnknownKid`` or ``BadSignature``; nothing else for any input."""
    if not isinstance(token, bytes) or not _COMPACT.fullmatch(token):
        raise MalformedJws("not a JWS compact serialization")
    try:
        header = _JWS.get_unverified_header(token)
    except jwt.exceptions.PyJWTError as err:
        raise MalformedJws(f"bad header: {err}") from None
    kid = _check_header(header)
    key = keys.get(kid)
    if key is None:
        raise UnknownKid(f"unknown kid {kid!r}")
    try:
        decoded = _JWS.decode_complete(token, key, algorithms=[ALGORITHM])
    except jwt.exceptions.InvalidSignatureError:
        raise BadSignature("signature does not verify") from None
    except jwt.exceptions.PyJWTError as err:
        raise MalformedJws(f"bad token: {err}") from None
    return header, _parse_claims(decoded["payload"])


def _check_header(header: dict[str, Any]) -> str:
    if header.get("alg") != ALGORITHM:
        raise MalformedJws("alg must be EdDSA")
    extra = set(header) - _HEADER_KEYS
    if extra:
        # Notably "crit"/"b64": we implement no JWS extension, and RFC 7515 4.1.11 says a
        # token that needs one must be refused.
        raise MalformedJws(f"unsupported header parameter(s) {sorted(extra)!r}"[:120])
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise MalformedJws("header must carry a kid")
    return kid


def _parse_claims(payload: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, one object, no duplicate keys (json keeps the last one silently, so
    two readers of the same signed bytes could disagree), no NaN or Infinity."""
    try:
        claims = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise MalformedJws(f"claims are not valid JSON: {err}") from None
    if not isinstance(claims, dict):
        raise MalformedJws("claims must be a JSON object")
    return claims


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
