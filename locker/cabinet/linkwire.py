"""The MQTT link's pure parts (DESIGN section 5): payload parsing, back-off, TLS context.

Kept apart from ``link`` (one thread owning the paho client) so they can be tested and read
without a broker; nothing here imports paho.
"""

from __future__ import annotations

import errno
import json
import random
import ssl
from collections.abc import Mapping
from pathlib import Path

from locker import errors
from locker.cabinet.tlsfiles import tls_failure, tls_file_problems
from locker.contract import numbers

_MAX_ACK_BYTES = 256
_MAX_STATE_BYTES = 4 * 1024 * 1024


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Seconds before reconnect attempt ``attempt`` (1, 2, ...): random in [low, ceiling],
    the ceiling doubling from 2*low up to ``high``. The jitter spreads a fleet's reconnects
    after a broker restart; paho's own back-off has none."""
    ceiling = min(high, low * 2 ** min(attempt, 32))
    return random.uniform(low, max(low, ceiling))


def unreachable_delay(cap: float) -> float:
    """Seconds before the next attempt while no broker answers at all: random in
    [cap/2, cap]. Such an attempt costs the broker nothing (it is not there), so it is not
    backed off further, and the locker is back at most ``cap`` after the broker is; the
    jitter still spreads a fleet's reconnects over half of ``cap``."""
    return random.uniform(cap / 2, cap)


def parse_ack(payload: bytes) -> tuple[str | None, int] | None:
    """``(epoch, upto_seq)`` of a valid ``{"v":1,"epoch":E,"upto_seq":N}`` (0 <= N <=
    ``numbers.MAX_COUNT``; E a non-empty string of at most 64 characters, or absent: epoch
    None), else None."""
    if len(payload) > _MAX_ACK_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not {"v", "upto_seq"} <= set(doc) <= {"v", "epoch", "upto_seq"}:
        return None
    v, upto, epoch = doc["v"], numbers.count(doc["upto_seq"]), doc.get("epoch")
    if type(v) is not int or v != 1 or upto is None:  # upto_seq beyond the contract's range too
        return None
    if "epoch" in doc and not (isinstance(epoch, str) and 0 < len(epoch) <= 64):
        return None
    return epoch, upto


def parse_state_stream(payload: bytes) -> tuple[str | None, int | None]:
    """``(epoch, last_seq)`` of a retained state payload; None for what is absent or not
    well-formed (a state from before epochs has no epoch)."""
    try:
        doc = json.loads(payload) if len(payload) <= _MAX_STATE_BYTES else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        return None, None
    epoch, last_seq = doc.get("epoch"), doc.get("last_seq")
    return (
        epoch if isinstance(epoch, str) and 0 < len(epoch) <= 64 else None,
        numbers.count(last_seq),
    )


def unreachable(err: BaseException) -> bool:
    """Whether a connect failed before any broker answered (refused, no route, timed out,
    reset before CONNACK)."""
    if isinstance(err, ssl.SSLError):
        return False  # a TLS peer answered (and, say, refused our certificate)
    # A reset or abort before CONNACK is a broker that is starting or stopping (the socket
    # was accepted by the kernel, nothing answered yet), not one that refused us.
    gone = ConnectionRefusedError | ConnectionResetError | ConnectionAbortedError | TimeoutError
    return isinstance(err, gone | BrokenPipeError) or (
        isinstance(err, OSError) and err.errno in _UNREACHABLE_ERRNOS
    )


_UNREACHABLE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET, errno.EPIPE}
)


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """Mutual TLS: the broker is verified against our CA *and* its host name (never disabled).

    :raises locker.errors.ConfigError: a file that cannot be used (unreadable, not PEM, a key
        that is not the certificate's), one line per problem naming the options
        (``tlsfiles.tls_file_problems``; ``lockerd`` exits 78 on it). ``--check-config`` and
        lockerd's start check the same before this runs.
    """
    if not (ca_file and cert_file and key_file):
        raise errors.ConfigError("mqtt.ca_file, cert_file and key_file are required with TLS")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file, password=lambda: b"")  # never a tty prompt
    except (ssl.SSLError, OSError, ValueError) as err:
        problems = tls_file_problems(Path(ca_file), Path(cert_file), Path(key_file))
        detail = "; ".join(problems) or f"mqtt TLS files: {tls_failure(err)}"
        raise errors.ConfigError(detail) from err
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


def topic_level(name: str) -> bool:
    return 0 < len(name) <= 64 and not any(c in name for c in "/+#\0")


def to_json(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
