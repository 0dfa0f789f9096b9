"""Keypad code tags and signed QR tokens: the credential formats of DESIGN section 6.

Pure functions, no I/O and no clock (time is passed in). This module owns:

- keypad codes: generation (CSPRNG), the keyed tag the locker stores instead of the code,
  and the constant-time tag comparison;
- the ``LK1:`` QR token: minting (backend side, private key), parsing and signature
  verification (locker side, public keys only), plus the small pure helpers the state machine
  uses for the remaining checks (locker, action, window).

Nothing secret ever goes into an exception message: errors carry a reason word only.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import base45
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from locker import errors

logger = logging.getLogger(__name__)

DEVICE_KEY_BYTES: Final = 32
# One range for every keypad code, configured (security.code_length) or generated: fewer than
# 6 digits is guessable under the keypad throttle (the figure is in locker.config.sections).
CODE_MIN_DIGITS: Final = 6
CODE_MAX_DIGITS: Final = 16
TAG_HEX_CHARS: Final = 64

TOKEN_PREFIX: Final = "LK1:"  # noqa: S105 (a format tag, not a secret)
TOKEN_VERSION: Final = 1
TOKEN_BODY_BYTES: Final = 31
TOKEN_SIGNATURE_BYTES: Final = 64
TOKEN_BYTES: Final = TOKEN_BODY_BYTES + TOKEN_SIGNATURE_BYTES
# Base45 turns each 2 bytes into 3 characters and a trailing odd byte into 2.
TOKEN_CHARS: Final = len(TOKEN_PREFIX) + (TOKEN_BYTES // 2) * 3 + (TOKEN_BYTES % 2) * 2
TOKEN_ID_BYTES: Final = 8
LOCKER_REF_BYTES: Final = 4
PARCEL_REF_BYTES: Final = 8
UINT32_MAX: Final = 0xFFFFFFFF

BASE45_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_TOKEN_TEXT = re.compile(
    re.escape(TOKEN_PREFIX) + "[" + re.escape(BASE45_ALPHABET) + f"]{{{TOKEN_CHARS - 4}}}"
)
# version, kid, locker_ref, action, parcel_ref, token_id, not_before, expires
_BODY = struct.Struct(">BB4sB8s8sII")
_CODE = re.compile(f"[0-9]{{{CODE_MIN_DIGITS},{CODE_MAX_DIGITS}}}")
_TAG = re.compile(f"[0-9a-f]{{{TAG_HEX_CHARS}}}")

TokenErrorReason = Literal["malformed", "bad_signature"]
WindowReason = Literal["not_yet_valid", "expired"]


class CredentialError(errors.ContractError):
    """Base of every credential error: a bad code, key, token or minting argument."""


class CodeFormatError(CredentialError):
    """A keypad code that is not 6-16 ASCII digits (the code itself is never in the message)."""


class TokenError(CredentialError):
    """A QR token rejected before the state machine's checks.

    ``reason`` is the DESIGN ``access_denied`` reason: ``malformed`` or ``bad_signature``.
    """

    def __init__(self, reason: TokenErrorReason) -> None:
        super().__init__(reason)
        self.reason: TokenErrorReason = reason


class TokenAction(enum.IntEnum):
    PICKUP = 1
    DROPOFF = 2
    RETRIEVE = 3


# --- keypad codes ----------------------------------------------------------------------------


def _check_device_key(device_key: bytes) -> None:
    if not isinstance(device_key, bytes) or len(device_key) != DEVICE_KEY_BYTES:
        raise CredentialError(f"device key must be exactly {DEVICE_KEY_BYTES} bytes")


def check_code(code: str) -> None:
    """Raise :class:`CodeFormatError` unless ``code`` is 6-16 ASCII digits."""
    if not isinstance(code, str) or _CODE.fullmatch(code) is None:
        raise CodeFormatError(f"a code must be {CODE_MIN_DIGITS}-{CODE_MAX_DIGITS} ASCII digits")


def code_tag(device_key: bytes, code: str) -> str:
    """Lower-case hex HMAC-SHA256(device_key, code's ASCII digits): what the locker stores.

    :param device_key: the locker's 32-byte secret shared with the backend.
    :param code: 6-16 ASCII digits.
    """
    _check_device_key(device_key)
    check_code(code)
    return hmac.new(device_key, code.encode("ascii"), hashlib.sha256).hexdigest()


def generate_code(digits: int = 8) -> str:
    """A uniformly random code of ``digits`` decimal digits (6-16) from the OS CSPRNG."""
    if isinstance(digits, bool) or not isinstance(digits, int):
        raise CredentialError("digits must be an integer")
    if not CODE_MIN_DIGITS <= digits <= CODE_MAX_DIGITS:
        raise CredentialError(f"digits must be between {CODE_MIN_DIGITS} and {CODE_MAX_DIGITS}")
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def valid_tag(s: object) -> bool:
    """True when ``s`` has the form of a code tag: 64 lower-case hex characters."""
    return isinstance(s, str) and _TAG.fullmatch(s) is not None


def tags_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two tags; False (never an error) for odd input."""
    try:
        return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
    except (AttributeError, UnicodeError):
        return False


# --- QR tokens -------------------------------------------------------------------------------


def _sha256_prefix(text: str, size: int, what: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise CredentialError(f"{what} must be a non-empty string")
    try:
        data = text.encode("utf-8")
    except UnicodeError:
        raise CredentialError(f"{what} is not valid text") from None
    return hashlib.sha256(data).digest()[:size]


def locker_ref(locker_id: str) -> bytes:
    """First 4 bytes of SHA-256(locker_id as UTF-8): how a token names its locker."""
    return _sha256_prefix(locker_id, LOCKER_REF_BYTES, "locker_id")


def parcel_ref(parcel: str) -> bytes:
    """First 8 bytes of SHA-256(parcel as UTF-8): how a token names its parcel."""
    return _sha256_prefix(parcel, PARCEL_REF_BYTES, "parcel")


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed ``LK1`` token. ``body`` and ``signature`` are the exact decoded bytes.

    They are kept out of ``repr`` because the pair is a bearer credential.
    """

    version: int
    kid: int
    locker_ref: bytes
    action: TokenAction
    parcel_ref: bytes
    token_id: bytes
    not_before: int
    expires: int
    body: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def is_for_locker(self, locker_id: str) -> bool:
        return hmac.compare_digest(self.locker_ref, locker_ref(locker_id))

    def is_for_parcel(self, parcel: str) -> bool:
        return hmac.compare_digest(self.parcel_ref, parcel_ref(parcel))


def _check_uint32(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT32_MAX:
        raise CredentialError(f"{what} must be an integer in 0..{UINT32_MAX}")


def _check_mint_args(
    kid: int, action: TokenAction | int, not_before: int, expires: int, token_id: bytes
) -> TokenAction:
    if isinstance(kid, bool) or not isinstance(kid, int) or not 0 <= kid <= 255:
        raise CredentialError("kid must be an integer in 0..255")
    try:
        checked_action = TokenAction(action)
    except ValueError:
        raise CredentialError("action must be 1 (pickup), 2 (dropoff) or 3 (retrieve)") from None
    _check_uint32(not_before, "not_before")
    _check_uint32(expires, "expires")
    if expires <= not_before:
        raise CredentialError("expires must be after not_before")
    if not isinstance(token_id, bytes) or len(token_id) != TOKEN_ID_BYTES:
        raise CredentialError(f"token_id must be {TOKEN_ID_BYTES} bytes")
    return checked_action


def mint_token(
    private_key: Ed25519PrivateKey,
    kid: int,
    locker_id: str,
    action: TokenAction | int,
    parcel: str,
    not_before: int,
    expires: int,
    token_id: bytes | None = None,
) -> str:
    """Sign and encode a token (backend side). Returns the 147-character ``LK1:`` text.

    :param kid: which of the locker's ``security.token_keys`` verifies it (0-255).
    :param not_before: first valid Unix second; ``expires``: first invalid Unix second.
    :param token_id: 8 bytes; random from the CSPRNG when omitted.
    """
    if token_id is None:
        token_id = secrets.token_bytes(TOKEN_ID_BYTES)
    checked_action = _check_mint_args(kid, action, not_before, expires, token_id)
    body = _BODY.pack(
        TOKEN_VERSION,
        kid,
        locker_ref(locker_id),
        checked_action,
        parcel_ref(parcel),
        token_id,
        not_before,
        expires,
    )
    signature = private_key.sign(body)
    text = TOKEN_PREFIX + bytes(base45.b45encode(body + signature)).decode("ascii")
    assert len(text) == TOKEN_CHARS
    return text


def parse_token(text: str) -> Token:
    """Length and alphabet, Base45 decode, fixed-size parse (DESIGN 6 steps 1-3).

    Raises ``TokenError("malformed")`` on any failure. The signature is NOT checked here:
    call :func:`verify_token` before trusting any field.
    """
    if not isinstance(text, str) or len(text) != TOKEN_CHARS or _TOKEN_TEXT.fullmatch(text) is None:
        raise TokenError("malformed")
    try:
        raw = bytes(base45.b45decode(text[len(TOKEN_PREFIX) :]))
    except ValueError:
        raise TokenError("malformed") from None
    if len(raw) != TOKEN_BYTES:
        raise TokenError("malformed")
    body, signature = raw[:TOKEN_BODY_BYTES], raw[TOKEN_BODY_BYTES:]
    version, kid, l_ref, action, p_ref, token_id, not_before, expires = _BODY.unpack(body)
    if version != TOKEN_VERSION:
        raise TokenError("malformed")
    try:
        checked_action = TokenAction(action)
    except ValueError:
        raise TokenError("malformed") from None
    return Token(
        version=version,
        kid=kid,
        locker_ref=l_ref,
        action=checked_action,
        parcel_ref=p_ref,
        token_id=token_id,
        not_before=not_before,
        expires=expires,
        body=body,
        signature=signature,
    )


def verify_token(token: Token, keys: Mapping[int, Ed25519PublicKey]) -> None:
    """Kid lookup and Ed25519 verification over the exact received body (DESIGN 6 steps 4-5).

    An unknown kid and a signature mismatch both raise ``TokenError("bad_signature")``.
    """
    key = keys.get(token.kid)
    if key is None:
        raise TokenError("bad_signature")
    try:
        key.verify(token.signature, token.body)
    except InvalidSignature:
        raise TokenError("bad_signature") from None


def parse_and_verify(text: str, keys: Mapping[int, Ed25519PublicKey]) -> Token:
    """:func:`parse_token` then :func:`verify_token`: a token whose fields may be trusted."""
    token = parse_token(text)
    verify_token(token, keys)
    return token


def token_window_reason(token: Token, now: float, skew_s: float = 0.0) -> WindowReason | None:
    """Why ``now`` is outside the token's window, or None inside it.

    Valid for ``not_before - skew_s <= now < expires``. The caller passes
    max(clock, durable high-water mark) as ``now`` (DESIGN 6); ``skew_s`` only forgives a
    locker clock that runs behind the issuer's, never a late presentation.
    """
    if now < token.not_before - skew_s:
        return "not_yet_valid"
    if now >= token.expires:
        return "expired"
    return None
