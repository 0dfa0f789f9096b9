"""The fleet service's database: one schema for SQLite and PostgreSQL, versioned by Alembic.

Tables (DESIGN section 13):

- ``lockers``: last status and state per locker (online, epoch, outbox depth, grid as JSON);
- ``streams``: one row per ``(locker, epoch)``: ``contiguous`` = every seq up to it is stored
  (NULL while unknown: first contact past seq 1, until the locker's state tells the baseline);
  ``gap_reported``/``gap_since``: where and since when (Unix s) events are held past a gap;
  ``resync_at``: the last ``resync`` sent for the stream;
- ``events``: every event once, unique on ``(locker, epoch, seq)``; one whose body broke the
  contract is held as a placeholder of type ``invalid_event`` (``ledger.placeholder``);
- ``parcels`` and ``parcel_history``: the ledger built from events and API actions; ``life``
  numbers the lives of a parcel id issued again after a final state (``parcel_ledger``);
- ``commands``: every signed command the service sent, who sent it and why, and the reply;
- ``alarms``: raised once (``open_key`` is unique while the alarm is open), acknowledged with
  a note; ``reports``: gaps, gap resyncs, invalid events, epoch changes, first contacts;
- ``deliveries``: the outbox of webhook and e-mail messages, with an idempotency key;
- ``users`` and ``sessions``: argon2 password hashes, SHA-256 hashes of API and session tokens.

Migrations live in ``migrations/versions`` (``upgrade`` runs them to head). SQLite runs with
WAL and ``BEGIN IMMEDIATE`` (reference/surfaces.md section 4: Python 3.11's sqlite3 would
otherwise run a read-then-write outside the transaction and lose updates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from locker import errors

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)
_ID = BigInteger().with_variant(Integer, "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite

lockers = Table(
    "lockers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("last_seen", Float),  # Unix seconds of the last message from the locker
    Column("offline_since", Float),
    Column("boot_id", String(64)),
    Column("version", String(64)),
    Column("clock_synced", Boolean),
    Column("epoch", String(64), nullable=False, default=""),
    Column("state_rev", BigInteger),
    Column("last_seq", BigInteger),
    Column("outbox_depth", BigInteger),  # a counter of the contract (migration 0002)
    Column("lockdown", Boolean, nullable=False, default=False),
    Column("keypad_locked", Boolean, nullable=False, default=False),
    Column("compartments", JSON, nullable=False, default=list),
)

streams = Table(
    "streams",
    metadata,
    Column("locker", String(64), primary_key=True),
    Column("epoch", String(64), primary_key=True),
    Column("contiguous", BigInteger),
    Column("gap_reported", BigInteger),
    Column("first_seen", Float, nullable=False),
    Column("resync_at", Float),  # the last resync sent for this stream (first contact or gap)
    Column("gap_since", Float),  # when the gap at ``gap_reported`` opened (migration 0003)
)
Index("ix_streams_gap_since", streams.c.gap_since)

events = Table(
    "events",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("locker", String(64), nullable=False),
    Column("epoch", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("type", String(64), nullable=False),
    Column("compartment", String(64)),
    Column("parcel", String(128)),
    Column("ts", String(40)),
    Column("body", JSON, nullable=False),
    Column("received_at", Float, nullable=False),
    UniqueConstraint("locker", "epoch", "seq"),
)
Index("ix_events_parcel", events.c.parcel)

parcels = Table(
    "parcels",
    metadata,
    Column("parcel", String(128), primary_key=True),
    Column("locker", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("size", String(4), nullable=False),
    Column("compartment", String(64)),
    Column("state", String(32), nullable=False),
    Column("created_by", String(64)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("dropoff_until", BigInteger),
    Column("pickup_until", BigInteger),
    Column("token_id", String(64)),  # with token_nb/exp the token is re-minted byte-identical
    Column("token_nb", BigInteger),
    Column("token_exp", BigInteger),
    Column("reminded", Boolean, nullable=False, default=False),
    Column("state_epoch", String(64)),  # the event that set ``state``: later seqs win,
    Column("state_seq", BigInteger),  # whatever order a shared subscription delivers them in
    # each issue of a parcel id after a final state is a new life (migration 0004)
    Column("life", Integer, nullable=False, default=1, server_default="1"),
)
Index("ix_parcels_locker", parcels.c.locker)

parcel_history = Table(
    "parcel_history",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("parcel", String(128), nullable=False),
    Column("at", Float, nullable=False),
    Column("source", String(16), nullable=False),  # "event" | "api"
    Column("what", String(64), nullable=False),
    Column("state", String(32)),
    Column("actor", String(64)),
    Column("seq", BigInteger),
    Column("detail", JSON, nullable=False, default=dict),
    Column("life", Integer, nullable=False, default=1, server_default="1"),  # the parcel's
)
Index("ix_parcel_history_parcel", parcel_history.c.parcel)

commands = Table(
    "commands",
    metadata,
    Column("id", String(64), primary_key=True),  # the JWS jti
    Column("locker", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", Text),
    Column("sent_at", Float, nullable=False),
    Column("status", String(16)),
    Column("error_code", String(64)),
    Column("result", JSON),
    Column("replied_at", Float),
)

alarms = Table(
    "alarms",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("locker", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("compartment", String(64)),
    Column("open_key", String(200), unique=True),  # set while open: raised once
    Column("state", String(16), nullable=False),  # open | acked | resolved
    Column("first_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
    Column("count", Integer, nullable=False, default=1),
    Column("detail", JSON, nullable=False, default=dict),
    Column("acked_by", String(64)),
    Column("acked_at", Float),
    Column("note", Text),
)

reports = Table(
    "reports",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("locker", String(64), nullable=False),
    # gap | gap_filled | gap_resync | invalid_event | floor_raised | epoch_change | first_contact
    Column("kind", String(32), nullable=False),
    Column("at", Float, nullable=False),
    Column("detail", JSON, nullable=False, default=dict),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),  # webhook | email
    Column("target", Integer, nullable=False),  # index into the configured webhooks
    Column("idempotency_key", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", Float, nullable=False),
    Column("last_error", Text),
    UniqueConstraint("channel", "target", "idempotency_key"),
)

users = Table(
    "users",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user", String(32), ForeignKey("users.name", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("expires", Float, nullable=False),
)

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str, **kw: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE``."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kw)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            for pragma in (
                "journal_mode=WAL",
                "synchronous=NORMAL",  # WAL + NORMAL is durable against process crashes
                "foreign_keys=ON",
                "busy_timeout=30000",
            ):
                dbapi_conn.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, **kw)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (idempotent).

    :raises errors.StorageError: a SQLite file that cannot be opened or created (its
        directory missing, read-only...).
    :raises errors.UnavailableError: a database server that cannot be reached or refuses us.
    Both say the cause in one line, the URL without its password.
    """
    try:
        command.upgrade(alembic_config(url), "head")
    except (OperationalError, InterfaceError) as err:
        cause = " ".join(str(err.orig or err).split())
        shown = make_url(url).render_as_string(hide_password=True)
        kind = errors.StorageError if url.startswith("sqlite") else errors.UnavailableError
        raise kind(f"cannot use the database {shown}: {cause}") from err
