"""locker.contract.jws: EdDSA compact JWS, pinned algorithm, strict header and claims."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from locker.contract import jws

KEY = Ed25519PrivateKey.generate()
KEYS = {"ops1": KEY.public_key()}


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forge(
    header: dict[str, Any], claims: bytes | dict[str, Any], key: Ed25519PrivateKey = KEY
) -> bytes:
    """A token with any header, signed correctly with ``key`` over what it carries."""
    body = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(body)
    return signing_input + b"." + b64(key.sign(signing_input))


def test_round_trip_and_exact_header() -> None:
    token = jws.sign_command(KEY, "ops1", {"aud": "L1", "n": 1})
    header_segment = token.split(b".")[0]
    assert base64.urlsafe_b64decode(header_segment + b"==") == b'{"alg":"EdDSA","kid":"ops1"}'
    header, claims = jws.verify_compact(token, KEYS)
    assert header == {"alg": "EdDSA", "kid": "ops1"}
    assert claims == {"aud": "L1", "n": 1}


def test_interoperates_with_plain_pyjwt_tokens() -> None:
    """An independent server using PyJWT's defaults adds "typ":"JWT"; that is accepted."""
    token = jwt.encode({"aud": "L1"}, KEY, algorithm="EdDSA", headers={"kid": "ops1"})
    _header, claims = jws.verify_compact(token.encode(), KEYS)
    assert claims == {"aud": "L1"}


def test_unknown_kid() -> None:
    token = jws.sign_command(KEY, "ops2", {"a": 1})
    with pytest.raises(jws.UnknownKid):
        jws.verify_compact(token, KEYS)


def test_signature_by_another_key() -> None:
    token = jws.sign_command(Ed25519PrivateKey.generate(), "ops1", {"a": 1})
    with pytest.raises(jws.BadSignature):
        jws.verify_compact(token, KEYS)


def test_any_changed_byte_breaks_the_signature() -> None:
    token = jws.sign_command(KEY, "ops1", {"aud": "L1", "act": "open"})
    header, _payload, sig = token.split(b".")
    tampered = json.dumps({"aud": "L1", "act": "lockdown"}).encode()
    with pytest.raises(jws.BadSignature):
        jws.verify_compact(b".".join([header, b64(tampered), sig]), KEYS)


def test_alg_none_is_refused() -> None:
    header = b64(b'{"alg":"none","kid":"ops1"}')
    token = header + b"." + b64(b'{"aud":"L1"}') + b"."
    with pytest.raises(jws.MalformedJws):
        jws.verify_compact(token, KEYS)
    with pytest.raises(jws.MalformedJws):  # with a junk "signature" segment too
        jws.verify_compact(token + b"AAAA", KEYS)


def test_hs256_with_the_public_key_as_secret_is_refused() -> None:
    """Algorithm confusion: an attacker HMACs with the (public) verification key."""
    public_raw = KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    token = jwt.api_jws.PyJWS().encode(
        b'{"aud":"L1"}', public_raw, algorithm="HS256", headers={"kid": "ops1"}
    )
    with pytest.raises(jws.MalformedJws, match="EdDSA"):
        jws.verify_compact(token.encode(), KEYS)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "EdDSA"},  # no kid
        {"alg": "EdDSA", "kid": ""},
        {"alg": "EdDSA", "kid": 7},
        {"alg": "EdDSA", "kid": "ops1", "crit": ["b64"], "b64": False},
        {"alg": "EdDSA", "kid": "ops1", "jku": "https://evil.example/keys"},
        {"kid": "ops1"},
        {"alg": "ES256", "kid": "ops1"},
    ],
)
def test_header_outside_the_profile(header: dict[str, Any]) -> None:
    with pytest.raises(jws.MalformedJws):
        jws.verify_compact(forge(header, {"aud": "L1"}), KEYS)


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"not a token",
        b"a.b",
        b"a.b.c.d",
        b"eyJ.eyJ.!!!",
        b" " + jws.sign_command(KEY, "ops1", {"a": 1}),
        jws.sign_command(KEY, "ops1", {"a": 1}) + b"\n",
        b"\xff\xfe.\x00.\x01",
    ],
)
def test_not_compact_serialization(token: bytes) -> None:
    with pytest.raises(jws.MalformedJws):
        jws.verify_compact(token, KEYS)


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(jws.MalformedJws):
        jws.verify_compact("a.b.c", KEYS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b'{"aud":"L1","aud":"L2"}',  # duplicate keys: two parsers could disagree
        b'{"exp":NaN}',
        b'{"exp":Infinity}',
        b"[1,2]",
        b'"text"',
        b"\xff\xfe",
        b'{"a":',
        b"1" * 5000,  # beyond Python's int-parsing digit limit
    ],
)
def test_signed_but_malformed_claims(body: bytes) -> None:
    with pytest.raises(jws.MalformedJws):
        jws.verify_compact(forge({"alg": "EdDSA", "kid": "ops1"}, body), KEYS)


def test_padding_is_refused() -> None:
    token = jws.sign_command(KEY, "ops1", {"a": 1})
    header, payload, sig = token.split(b".")
    with pytest.raises(jws.MalformedJws):
        jws.verify_compact(header + b"=." + payload + b"." + sig, KEYS)
