"""Helpers for the end-to-end tests that run the real ``lockerd`` against a real Mosquitto.

- ``Cabinets``: makes ``SimCabinet``s (one workdir each under ``tmp_path``) and closes them.
- Reading the daemon's SQLite file from outside (read-only): ``db_last_seq``,
  ``db_outbox_depth``; ground truth for "every event the locker created".
- What the server holds (one ``ServerClient`` or several standing for one backend across its
  restarts): ``unique_events`` (dedup by ``seq``, duplicates must be identical),
  ``assert_exactly_once``, ``all_delivered``, ``replies``/``reply_for``, ``assert_ran_once``.
- Driving the cabinet: ``start_online`` (start and wait for the birth), ``guess_burst``
  (wrong codes on the keypad: one ``access_denied``/``unknown_code`` event each, since
  counted guesses are reported one by one; the cabinets made here let the throttle take
  ``GUESSER_SECURITY``), ``signed`` (a command with any claims) and ``command`` (send, wait
  for the reply echoing the CorrelationData). Refusals that are not guesses (garbage scans)
  are aggregated per burst (issue 11 item 22), so they no longer make one event each.
- ``TcpProxy`` (from ``locker.sim.proxy``): a loopback TCP relay whose ``cut()`` closes every
  relayed connection at both ends at once, for network drops that neither end causes.
- ``never_within``: the one way to assert that something does NOT happen during a window.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from locker.contract import jws
from locker.sim.broker import Broker
from locker.sim.cabinet import COMMAND_KID, SimCabinet
from tests.broker import ServerClient
from tests.conftest import wait_for

# --- cabinets ---------------------------------------------------------------------------------

# A throttle that lets ``guess_burst`` make one event per wrong code for a million codes.
GUESSER_SECURITY: Mapping[str, int] = {
    "failures_before_backoff": 1_000_000,
    "hard_lockout_failures": 1_000_000,
    "max_failures_per_hour": 1_000_000,
}
GUESS_CHUNK = 10  # codes typed at once (90 keys)
IN_FLIGHT_KEYS = 225  # keys typed but not committed, below the controller's input lane (256)


class Cabinets:
    """Makes simulated cabinets under one directory and closes them all at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[SimCabinet] = []

    def make(self, broker: Broker, name: str = "cab", **kwargs: Any) -> SimCabinet:
        kwargs.setdefault("security", GUESSER_SECURITY)
        cab = SimCabinet(self.root / name, broker=broker, **kwargs)
        self.made.append(cab)
        return cab

    def close(self) -> None:
        for cab in self.made:
            cab.close()


@pytest.fixture
def cabinets(tmp_path: Path) -> Iterator[Cabinets]:
    made = Cabinets(tmp_path)
    try:
        yield made
    finally:
        made.close()


def failure_context(cab: SimCabinet, broker: Broker | None = None) -> str:
    """The tails of the daemon's and the broker's logs, for assertion messages."""
    text = "--- lockerd log ---\n" + cab.log()[-4000:]
    if broker is not None:
        text += "\n--- mosquitto log ---\n" + broker.log()[-2000:]
    return text


# --- the daemon's database, read from outside ------------------------------------------------


def _db(cab: SimCabinet) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{cab.state_dir / 'locker.db'}?mode=ro", uri=True, timeout=10)


def db_last_seq(cab: SimCabinet, db: sqlite3.Connection | None = None) -> int:
    """The last seq the daemon committed (seqs are 1, 2, ... with no holes); ``db``: a
    read-only connection to reuse (a poll loop opening one per look costs a core's tenth)."""
    if db is None:
        with contextlib.closing(_db(cab)) as own:
            return db_last_seq(cab, own)
    (top,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
    row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    return max(int(top), int(json.loads(row[0])) if row else 0)


def db_outbox_depth(cab: SimCabinet) -> int:
    """Committed events the server has not acknowledged yet."""
    with contextlib.closing(_db(cab)) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(n)


def db_commands(cab: SimCabinet) -> dict[str, str]:
    """Every remembered command id and its outcome (done / rejected)."""
    with contextlib.closing(_db(cab)) as db:
        rows = db.execute("SELECT jti, row FROM commands").fetchall()
    return {jti: json.loads(row)["status"] for jti, row in rows}


# --- what the server holds --------------------------------------------------------------------


Servers = ServerClient | Sequence[ServerClient]


def _all(srvs: Servers) -> Sequence[ServerClient]:
    return [srvs] if isinstance(srvs, ServerClient) else srvs


def unique_events(srvs: Servers, locker_id: str) -> dict[int, dict[str, Any]]:
    """What the server(s) hold, deduplicated by seq; a duplicate must be the very same event.

    Several ``ServerClient``s stand for one backend across its own restarts."""
    held: dict[int, dict[str, Any]] = {}
    for srv in _all(srvs):
        for ev in srv.events(locker_id):
            first = held.setdefault(ev["seq"], ev)
            assert first == ev, f"seq {ev['seq']} arrived twice with different content"
    return held


def event_types(srvs: Servers, locker_id: str) -> list[str]:
    """Event types in seq order, after dedup."""
    held = unique_events(srvs, locker_id)
    return [held[s]["type"] for s in sorted(held)]


def assert_exactly_once(srvs: Servers, cab: SimCabinet) -> dict[int, dict[str, Any]]:
    """The server holds every event the daemon committed, once each after dedup, no gaps."""
    last = db_last_seq(cab)
    held = unique_events(srvs, cab.locker_id)
    missing = sorted(set(range(1, last + 1)) - held.keys())
    extra = sorted(held.keys() - set(range(1, last + 1)))
    assert not missing and not extra, f"missing seqs {missing[:20]}, unexpected {extra[:20]}"
    ids = [ev["event_id"] for ev in held.values()]
    assert len(set(ids)) == len(ids), "two seqs carry the same event_id"
    return held


def all_delivered(srv: ServerClient, cab: SimCabinet) -> bool:
    """The server acked everything committed so far and the daemon emptied its outbox."""
    return srv.has_all(cab.locker_id, db_last_seq(cab)) and db_outbox_depth(cab) == 0


def replies(srvs: Servers, locker_id: str) -> list[tuple[dict[str, Any], bytes | None]]:
    """Every reply on {p}/res with its CorrelationData, in arrival order."""
    return [
        (m.json(), m.properties.get("CorrelationData"))
        for srv in _all(srvs)
        for m in srv.messages(f"lockers/{locker_id}/res")
    ]


def assert_ran_once(srvs: Servers, cab: SimCabinet, correlation: bytes, jti: str) -> None:
    """One ``done`` for this command, any repeat answered ``duplicate``, and remembered. A
    reply re-published after a reconnect (the link keeps it until PUBACKed, so a connection
    lost before the PUBACK sends it again) is the same document, not a second execution:
    the same rule as ``locker.sim.soak_checks.check_commands``."""
    docs = [doc for doc, corr in replies(srvs, cab.locker_id) if corr == correlation]
    statuses = [doc["status"] for doc in docs]
    assert statuses and statuses[0] == "done", statuses
    repeats = [doc for doc in docs[1:] if doc != docs[0]]  # drop re-published copies
    assert {doc["status"] for doc in repeats} <= {"duplicate"}, docs
    assert db_commands(cab).get(jti) == "done"


def reply_for(srv: Servers, locker_id: str, correlation: bytes) -> dict[str, Any] | None:
    """The first reply that echoes ``correlation``, if any arrived."""
    return next((doc for doc, corr in replies(srv, locker_id) if corr == correlation), None)


# --- driving the cabinet ----------------------------------------------------------------------


def guess_burst(cab: SimCabinet, n: int, stall_s: float = 2.0) -> int:
    """Type ``n`` wrong 8-digit codes on the keypad: one ``access_denied`` event each (the
    cabinet must allow that many guesses: ``GUESSER_SECURITY``). Pipelined, with at most
    ``IN_FLIGHT_KEYS`` keys typed but not yet committed: a keypad typed faster than the
    controller takes it is shed (issue 11 item 22), and these events must all exist.
    Returns once every code is typed and committed, or after ``stall_s`` without progress
    (keys typed before the keypad port was open are lost; callers that care count events).
    Returns how many of the codes were seen committed."""
    with contextlib.closing(_db(cab)) as db:
        return _guess_burst(cab, db, n, stall_s)


def _guess_burst(cab: SimCabinet, db: sqlite3.Connection, n: int, stall_s: float) -> int:
    base = db_last_seq(cab, db)
    typed = 0
    committed = 0
    last_progress = time.monotonic()
    while committed < n:
        now_committed = db_last_seq(cab, db) - base
        if now_committed > committed:
            committed, last_progress = now_committed, time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            break
        if typed < n and (typed - committed) * 9 + GUESS_CHUNK * 9 <= IN_FLIGHT_KEYS:
            chunk = range(typed, min(n, typed + GUESS_CHUNK))
            _write_all(
                cab.keypad_fd, b"".join(f"{90000000 + i % 10_000_000}#".encode() for i in chunk)
            )
            typed += len(chunk)
        else:
            time.sleep(0.001)
    return min(committed, n)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- commands ---------------------------------------------------------------------------------


def signed(
    cab: SimCabinet,
    act: str,
    args: Mapping[str, Any],
    *,
    iat: int | None = None,
    exp: int | None = None,
    aud: str | None = None,
    jti: str | None = None,
    key: Ed25519PrivateKey | None = None,
    kid: str = COMMAND_KID,
) -> tuple[bytes, str]:
    """A command JWS with every claim under the test's control; returns (token, jti)."""
    now = int(time.time())
    cmd_id = jti or secrets.token_hex(12)
    claims = {
        "aud": aud or cab.locker_id,
        "jti": cmd_id,
        "iat": now if iat is None else iat,
        "exp": now + 60 if exp is None else exp,
        "act": act,
        "args": dict(args),
    }
    return jws.sign_command(key or cab.command_key, kid, claims), cmd_id


def command(
    srv: ServerClient,
    cab: SimCabinet,
    token: bytes,
    correlation: bytes,
    *,
    response_topic: str | None = None,
    retain: bool = False,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Send one command and wait for the reply that echoes ``correlation``."""
    srv.send_command(
        cab.locker_id,
        token,
        correlation_data=correlation,
        response_topic=response_topic,
        retain=retain,
    )
    wait_for(
        lambda: reply_for(srv, cab.locker_id, correlation) is not None,
        timeout,
        what=f"reply to {correlation!r}",
    )
    reply = reply_for(srv, cab.locker_id, correlation)
    assert reply is not None
    return reply


def wait_event(
    srv: ServerClient, cab: SimCabinet, event_type: str, count: int = 1, timeout: float = 20.0
) -> None:
    """Wait until the server holds ``count`` distinct events of ``event_type``."""
    try:
        wait_for(
            lambda: event_types(srv, cab.locker_id).count(event_type) >= count,
            timeout,
            what=f"{count} x {event_type}",
        )
    except pytest.fail.Exception as err:
        held = event_types(srv, cab.locker_id)
        pytest.fail(f"{err}\nserver holds {held}\n{failure_context(cab)}")


def start_online(srv: ServerClient, cab: SimCabinet, timeout: float = 15.0) -> str:
    """(Re)start the daemon and wait for its birth; returns the new boot id.

    The birth follows the subscription on the same connection, so from then on a command
    reaches the daemon even if this is its very first session."""
    old = {s["boot_id"] for s in srv.statuses(cab.locker_id)}
    if cab.running():
        cab.stop()
    cab.start()
    wait_for(
        lambda: any(s["online"] and s["boot_id"] not in old for s in srv.statuses(cab.locker_id)),
        timeout,
        what="birth of the started daemon",
    )
    boot: str = next(
        s["boot_id"]
        for s in reversed(srv.statuses(cab.locker_id))
        if s["online"] and s["boot_id"] not in old
    )
    return boot


def assign_args(cab: SimCabinet, parcel: str, **extra: Any) -> dict[str, Any]:
    """Arguments of an ``assign`` with fresh drop-off and pickup tags."""
    return {
        "parcel": parcel,
        "kind": "delivery",
        "size": "S",
        "dropoff_tag": cab.new_code()[1],
        "pickup_tag": cab.new_code()[1],
        **extra,
    }


def log_count(cab: SimCabinet, text: str) -> int:
    """How many times ``text`` appears in the daemon's log (all its runs)."""
    return cab.log().count(text)
