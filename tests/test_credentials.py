"""Keypad code tags and LK1 QR tokens (DESIGN section 6), against independent encodings."""

from __future__ import annotations

import hashlib
import hmac
import string
import struct
from collections import Counter

import base45
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from locker.contract import credentials as cr
from locker.contract.credentials import (
    CodeFormatError,
    CredentialError,
    Token,
    TokenAction,
    TokenError,
)

DEVICE_KEY = bytes(range(32))
# HMAC-SHA256(key=00 01 .. 1f, "12345678"), computed with `openssl dgst -sha256 -mac HMAC`.
OPENSSL_TAG = "b2be66f797c511bd2a34dfb060838661a6882b3f98f54af9cd34a6c66ae8afe4"

LOCKER = "LKR-0001"
PARCEL = "PCL-42"
NOT_BEFORE = 1_700_000_000
EXPIRES = NOT_BEFORE + 72 * 3600


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def token_text(signing_key: Ed25519PrivateKey) -> str:
    return cr.mint_token(
        signing_key, 1, LOCKER, TokenAction.PICKUP, PARCEL, NOT_BEFORE, EXPIRES, b"\x01" * 8
    )


def _keys(key: Ed25519PrivateKey, kid: int = 1) -> dict[int, Ed25519PublicKey]:
    return {kid: key.public_key()}


# --- code tags -------------------------------------------------------------------------------


def test_tag_matches_openssl_vector() -> None:
    assert cr.code_tag(DEVICE_KEY, "12345678") == OPENSSL_TAG


def test_tag_matches_hmac_for_every_length() -> None:
    key = hashlib.sha256(b"another device").digest()
    for length in range(cr.CODE_MIN_DIGITS, cr.CODE_MAX_DIGITS + 1):
        code = "9876543210123456"[:length]
        expected = hmac.new(key, code.encode("ascii"), hashlib.sha256).hexdigest()
        assert cr.code_tag(key, code) == expected
        assert cr.valid_tag(expected)


@pytest.mark.parametrize(
    "code",
    [
        "123",
        "1234",
        "12345",
        "1" * 17,
        "12a4",
        "1234 ",
        " 1234",
        "1234\n",
        "",
        "\uff11\uff12\uff13\uff14",
        "12.4",
    ],
)
def test_bad_code_is_rejected_without_echoing_it(code: str) -> None:
    with pytest.raises(CodeFormatError) as err:
        cr.code_tag(DEVICE_KEY, code)
    if code.strip():
        assert code.strip() not in str(err.value)


def test_non_string_code_is_rejected() -> None:
    with pytest.raises(CodeFormatError):
        cr.code_tag(DEVICE_KEY, 12345678)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "k" * 32, bytearray(32)])
def test_device_key_must_be_32_bytes(key: object) -> None:
    with pytest.raises(CredentialError):
        cr.code_tag(key, "12345678")  # type: ignore[arg-type]


def test_tags_equal() -> None:
    tag = cr.code_tag(DEVICE_KEY, "12345678")
    other = cr.code_tag(DEVICE_KEY, "12345679")
    assert cr.tags_equal(tag, str(tag))
    assert not cr.tags_equal(tag, other)
    assert not cr.tags_equal(tag, tag[:-1])
    assert not cr.tags_equal(tag, "\udcff")
    assert not cr.tags_equal(tag, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "candidate",
    ["a" * 63, "a" * 65, "A" * 64, "g" * 64, "a" * 63 + "\n", "", None, b"a" * 64, "\u0660" * 64],
)
def test_valid_tag_rejects(candidate: object) -> None:
    assert not cr.valid_tag(candidate)


# --- code generation -------------------------------------------------------------------------


@pytest.mark.parametrize("digits", range(6, 17))
def test_generate_code_length_and_charset(digits: int) -> None:
    for _ in range(50):
        code = cr.generate_code(digits)
        assert len(code) == digits
        assert set(code) <= set(string.digits)
        cr.check_code(code)


@pytest.mark.parametrize("digits", [5, 17, 0, -8, True, 8.0])
def test_generate_code_bounds(digits: object) -> None:
    with pytest.raises(CredentialError):
        cr.generate_code(digits)  # type: ignore[arg-type]


def test_generate_code_default_is_8_digits() -> None:
    assert len(cr.generate_code()) == 8


def test_generated_codes_are_unique() -> None:
    codes = [cr.generate_code(16) for _ in range(5000)]
    assert len(set(codes)) == len(codes)


def test_generated_digits_are_uniform() -> None:
    codes = [cr.generate_code(8) for _ in range(2000)]
    counts = Counter("".join(codes))
    expected = len(codes) * 8 / 10
    chi_square = sum((counts[d] - expected) ** 2 / expected for d in string.digits)
    # 9 degrees of freedom: P(chi2 > 45) is about 1e-6, so this flakes practically never.
    assert chi_square < 45, chi_square
    # Every position, including the first, takes every digit (leading zeros are kept).
    for position in range(8):
        assert {code[position] for code in codes} == set(string.digits)


# --- tokens: format --------------------------------------------------------------------------


def test_token_is_147_characters(token_text: str) -> None:
    assert cr.TOKEN_CHARS == 147
    assert len(token_text) == 147
    assert token_text.startswith("LK1:")


def test_token_layout_matches_design_table(token_text: str, signing_key: Ed25519PrivateKey) -> None:
    """Decode with the base45 package and struct, not with the module under test."""
    raw = base45.b45decode(token_text[4:])
    assert len(raw) == 95
    body, signature = raw[:31], raw[31:]
    signing_key.public_key().verify(signature, body)
    assert body[0] == 1
    assert body[1] == 1
    assert body[2:6] == hashlib.sha256(LOCKER.encode()).digest()[:4]
    assert body[6] == 1
    assert body[7:15] == hashlib.sha256(PARCEL.encode()).digest()[:8]
    assert body[15:23] == b"\x01" * 8
    assert struct.unpack(">II", body[23:31]) == (NOT_BEFORE, EXPIRES)


def test_independently_built_token_verifies(signing_key: Ed25519PrivateKey) -> None:
    body = (
        bytes([1, 7])
        + hashlib.sha256("Schrank-Ü".encode()).digest()[:4]
        + bytes([3])
        + hashlib.sha256(b"RET-9").digest()[:8]
        + bytes(range(8))
        + struct.pack(">II", 0, 0xFFFFFFFF)
    )
    text = "LK1:" + base45.b45encode(body + signing_key.sign(body)).decode()
    token = cr.parse_and_verify(text, _keys(signing_key, 7))
    assert token.action is TokenAction.RETRIEVE
    assert token.is_for_locker("Schrank-Ü")
    assert token.is_for_parcel("RET-9")
    assert (token.not_before, token.expires) == (0, 0xFFFFFFFF)
    assert token.token_id == bytes(range(8))


@pytest.mark.parametrize("action", list(TokenAction))
def test_round_trip(signing_key: Ed25519PrivateKey, action: TokenAction) -> None:
    text = cr.mint_token(signing_key, 200, LOCKER, action, PARCEL, NOT_BEFORE, EXPIRES)
    token = cr.parse_token(text)
    cr.verify_token(token, _keys(signing_key, 200))
    assert token.version == 1
    assert token.kid == 200
    assert token.action is action
    assert token.locker_ref == cr.locker_ref(LOCKER)
    assert token.parcel_ref == cr.parcel_ref(PARCEL)
    assert token.is_for_locker(LOCKER)
    assert not token.is_for_locker("LKR-0002")
    assert token.is_for_parcel(PARCEL)
    assert not token.is_for_parcel("PCL-43")
    assert len(token.token_id) == 8
    assert (token.not_before, token.expires) == (NOT_BEFORE, EXPIRES)
    assert len(token.body) == 31
    assert len(token.signature) == 64


def test_same_inputs_give_the_same_token_and_random_ids_differ(
    signing_key: Ed25519PrivateKey, token_text: str
) -> None:
    again = cr.mint_token(
        signing_key, 1, LOCKER, TokenAction.PICKUP, PARCEL, NOT_BEFORE, EXPIRES, b"\x01" * 8
    )
    assert again == token_text
    ids = {
        cr.parse_token(
            cr.mint_token(signing_key, 1, LOCKER, 1, PARCEL, NOT_BEFORE, EXPIRES)
        ).token_id
        for _ in range(50)
    }
    assert len(ids) == 50


def test_token_repr_hides_the_credential(token_text: str) -> None:
    token = cr.parse_token(token_text)
    assert repr(token.signature) not in repr(token)
    assert token_text[4:20] not in repr(token)


# --- tokens: rejection -----------------------------------------------------------------------


def _reencode(raw: bytes) -> str:
    return "LK1:" + str(base45.b45encode(raw).decode())


def test_every_single_bit_flip_is_rejected(token_text: str, signing_key: Ed25519PrivateKey) -> None:
    raw = base45.b45decode(token_text[4:])
    keys = _keys(signing_key)
    reasons: Counter[str] = Counter()
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(TokenError) as err:
            cr.parse_and_verify(_reencode(bytes(flipped)), keys)
        reasons[err.value.reason] += 1
    assert sum(reasons.values()) == 95 * 8
    assert set(reasons) == {"malformed", "bad_signature"}


def test_unknown_kid_is_bad_signature(token_text: str, signing_key: Ed25519PrivateKey) -> None:
    token = cr.parse_token(token_text)
    with pytest.raises(TokenError) as err:
        cr.verify_token(token, _keys(signing_key, 2))
    assert err.value.reason == "bad_signature"
    with pytest.raises(TokenError):
        cr.verify_token(token, {})


def test_wrong_key_is_bad_signature(token_text: str) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(TokenError) as err:
        cr.parse_and_verify(token_text, _keys(other))
    assert err.value.reason == "bad_signature"
    assert str(err.value) == "bad_signature"


def _malformed_variants(text: str) -> list[object]:
    invalid_group = "LK1:" + ":::" + text[7:]  # 44+44*45+44*45^2 > 0xFFFF
    return [
        text[:-1],
        text + "0",
        text[:-3],
        text + "000",
        text.lower(),
        "lk1:" + text[4:],
        "LK2:" + text[4:],
        "LK1" + text[4:] + "0",
        text + "\n",
        " " + text[:-1],
        text[:50] + "\x00" + text[51:],
        text[:50] + "é" + text[51:],
        invalid_group,
        "",
        "LK1:",
        "garbage",
        "x" * 10_000,
        text.encode(),
        None,
        147,
    ]


def test_malformed_strings(token_text: str, signing_key: Ed25519PrivateKey) -> None:
    for variant in _malformed_variants(token_text):
        with pytest.raises(TokenError) as err:
            cr.parse_and_verify(variant, _keys(signing_key))  # type: ignore[arg-type]
        assert err.value.reason == "malformed", variant
        assert str(err.value) == "malformed"


def _signed_raw(key: Ed25519PrivateKey, version: int, action: int) -> str:
    body = struct.pack(
        ">BB4sB8s8sII", version, 1, cr.locker_ref(LOCKER), action, bytes(8), bytes(8), 1, 2
    )
    return _reencode(body + key.sign(body))


@pytest.mark.parametrize(("version", "action"), [(2, 1), (0, 1), (255, 1), (1, 0), (1, 4)])
def test_signed_but_unknown_version_or_action_is_malformed(
    signing_key: Ed25519PrivateKey, version: int, action: int
) -> None:
    with pytest.raises(TokenError) as err:
        cr.parse_token(_signed_raw(signing_key, version, action))
    assert err.value.reason == "malformed"


def test_signed_raw_helper_is_otherwise_valid(signing_key: Ed25519PrivateKey) -> None:
    token = cr.parse_and_verify(_signed_raw(signing_key, 1, 2), _keys(signing_key))
    assert token.action is TokenAction.DROPOFF


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_gives_token_or_token_error(text: str) -> None:
    try:
        assert isinstance(cr.parse_token(text), Token)
    except TokenError as err:
        assert err.reason == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=cr.BASE45_ALPHABET, min_size=143, max_size=143))
def test_arbitrary_base45_bodies_give_token_or_token_error(payload: str) -> None:
    try:
        token = cr.parse_token("LK1:" + payload)
    except TokenError as err:
        assert err.reason == "malformed"
    else:
        assert token.version == 1
        assert len(token.body) + len(token.signature) == 95


# --- minting arguments and the time window ---------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"kid": 256},
        {"kid": -1},
        {"kid": True},
        {"action": 4},
        {"locker_id": ""},
        {"parcel": ""},
        {"parcel": "\udcff"},
        {"not_before": -1},
        {"expires": 2**32},
        {"not_before": EXPIRES, "expires": EXPIRES},
        {"not_before": EXPIRES + 1},
        {"token_id": bytes(7)},
        {"token_id": "01234567"},
    ],
)
def test_mint_rejects_bad_arguments(
    signing_key: Ed25519PrivateKey, overrides: dict[str, object]
) -> None:
    args: dict[str, object] = {
        "kid": 1,
        "locker_id": LOCKER,
        "action": TokenAction.PICKUP,
        "parcel": PARCEL,
        "not_before": NOT_BEFORE,
        "expires": EXPIRES,
        "token_id": None,
    }
    args.update(overrides)
    with pytest.raises(CredentialError):
        cr.mint_token(signing_key, **args)  # type: ignore[arg-type]


def test_window(token_text: str) -> None:
    token = cr.parse_token(token_text)
    assert cr.token_window_reason(token, NOT_BEFORE - 1) == "not_yet_valid"
    assert cr.token_window_reason(token, NOT_BEFORE - 0.001) == "not_yet_valid"
    assert cr.token_window_reason(token, NOT_BEFORE) is None
    assert cr.token_window_reason(token, EXPIRES - 0.5) is None
    assert cr.token_window_reason(token, EXPIRES) == "expired"
    assert cr.token_window_reason(token, EXPIRES + 10**6) == "expired"
    assert cr.token_window_reason(token, NOT_BEFORE - 60, skew_s=60) is None
    assert cr.token_window_reason(token, NOT_BEFORE - 61, skew_s=60) == "not_yet_valid"
    assert cr.token_window_reason(token, EXPIRES, skew_s=60) == "expired"


def test_errors_form_one_hierarchy() -> None:
    assert issubclass(TokenError, CredentialError)
    assert issubclass(CodeFormatError, CredentialError)
    assert issubclass(CredentialError, ValueError)
