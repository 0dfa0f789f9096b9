"""Durable state and the transactional outbox, in one SQLite file.

``commit`` writes, in ONE transaction, every row of the state that changed and the events the
change produced (each given the next ``seq``). The controller calls it before acting, so a
crash at any point never opens a door twice and never loses an event (DESIGN section 4).
WAL + ``synchronous=FULL``: a commit that returned is on disk. Schema version lives in
``PRAGMA user_version`` with forward-only migrations.

The WAL is checkpointed by the controller when it is idle (``checkpoint_due``/``checkpoint``),
not by SQLite inside whichever commit crosses its threshold: that commit paid the checkpoint
(copying the WAL into the database and a second fsync, several milliseconds) before its
unlock's pulse, on about one unlock in thirty (issue 10).

The connection belongs to the controller thread. The MQTT link reads the outbox through
``OutboxView``, its own connection (WAL lets it read while the controller writes). How rows
map to the model is in locker.cabinet.rows.

About 700 lines, above the project's ~500: every write path (commit, probe, acks, a new epoch,
checkpoints) shares the bookkeeping of events published from memory during a storage fault
(stored first by whichever write succeeds first) and the write count, so they stay in one
class; the row codec is already in locker.cabinet.rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from locker import errors
from locker.cabinet.domain.model import (
    Commands,
    Compartment,
    Credentials,
    KeypadEntry,
    LockerState,
    Out,
    Spent,
    SpentTag,
    Tokens,
    fresh_state,
)
from locker.cabinet.rows import (
    CREDENTIAL_COLUMNS,
    changed_rows,
    credential_columns,
    credentials_from_columns,
    dump,
    jsonable,
    load_command,
    load_compartment,
    load_parcel,
    load_throttle,
)
from locker.contract.replies import rfc3339
from locker.ports import OutboxReader, OutboxRow

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
CHECKPOINT_AFTER = 64  # writes before an idle controller checkpoints (about 500 WAL pages)
CHECKPOINT_FORCED = 1024  # writes before a checkpoint is made even when busy: bounds the WAL


def _without_rowid(table: str, columns: str) -> str:
    """SQL that rebuilds ``table`` (``columns``: its column definitions, comma-separated, the
    first the primary key) as a WITHOUT ROWID table, every row kept."""
    names = ", ".join(c.split()[0] for c in columns.split(","))
    # constants of this module, not input
    return (
        f"CREATE TABLE {table}_new ({columns}) WITHOUT ROWID;"  # noqa: S608
        f"INSERT INTO {table}_new SELECT {names} FROM {table};"
        f"DROP TABLE {table};"
        f"ALTER TABLE {table}_new RENAME TO {table};"
    )


_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE compartments (id TEXT PRIMARY KEY, row TEXT NOT NULL);
    CREATE TABLE parcels (id TEXT PRIMARY KEY, row TEXT NOT NULL);
    CREATE TABLE credentials (tag TEXT PRIMARY KEY, row TEXT NOT NULL);
    CREATE TABLE tokens (token_id TEXT PRIMARY KEY, expires REAL NOT NULL);
    CREATE TABLE commands (jti TEXT PRIMARY KEY, exp REAL NOT NULL, row TEXT NOT NULL);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        payload BLOB NOT NULL,
        created REAL NOT NULL
    );
    """,
    # Credentials in typed columns (issue 10): a start-up with 100,000 of them spent most of
    # its time parsing one JSON document per row. Old rows are converted, not lost.
    2: """
    CREATE TABLE credentials_v2 (
        tag TEXT PRIMARY KEY,
        parcel TEXT NOT NULL,
        step TEXT NOT NULL,
        valid_from REAL NOT NULL,
        valid_until REAL,
        armed INTEGER NOT NULL
    );
    INSERT INTO credentials_v2
        SELECT tag, json_extract(row, '$.parcel'), json_extract(row, '$.step'),
               json_extract(row, '$.valid_from'), json_extract(row, '$.valid_until'),
               json_extract(row, '$.armed')
        FROM credentials;
    DROP TABLE credentials;
    ALTER TABLE credentials_v2 RENAME TO credentials;
    """,
    # The keyed tables WITHOUT ROWID (issue 10): a rowid table with a TEXT primary key is two
    # b-trees (the rows, and the key's index), so each row changed wrote two pages; an
    # unlock's commit wrote 9 WAL pages, now 5 (https://sqlite.org/withoutrowid.html).
    3: "".join(
        _without_rowid(name, columns)
        for name, columns in (
            ("meta", "key TEXT PRIMARY KEY, value TEXT NOT NULL"),
            ("compartments", "id TEXT PRIMARY KEY, row TEXT NOT NULL"),
            ("parcels", "id TEXT PRIMARY KEY, row TEXT NOT NULL"),
            (
                "credentials",
                "tag TEXT PRIMARY KEY, parcel TEXT NOT NULL, step TEXT NOT NULL, "
                "valid_from REAL NOT NULL, valid_until REAL, armed INTEGER NOT NULL",
            ),
            ("tokens", "token_id TEXT PRIMARY KEY, expires REAL NOT NULL"),
            ("commands", "jti TEXT PRIMARY KEY, exp REAL NOT NULL, row TEXT NOT NULL"),
        )
    ),
    # Tags of codes that stopped working (used, expired, cancelled), kept a few days so that
    # typing one again is answered with why and is no guess (locker.cabinet.domain.spent).
    4: """
    CREATE TABLE spent (
        tag TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        forget_at REAL NOT NULL,
        detail TEXT
    ) WITHOUT ROWID;
    """,
}


class StoreError(errors.StorageError):
    """The database cannot be used (newer schema, corruption)."""


class StorageFault(StoreError):  # noqa: N818 - a condition of the disk, not a bug
    """The database cannot be written right now (disk full, read-only, I/O error). Nothing of
    the failed transaction was stored. ``detail`` says which, in words an installer can act
    on; ``__cause__`` is SQLite's own error."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.detail = detail


def describe(err: sqlite3.Error, where: Path | None = None) -> str:
    """What SQLite's error means for the state directory (its extended result code name;
    ``where``: the directory, to tell a read-only filesystem from other open failures)."""
    name = getattr(err, "sqlite_errorname", "") or ""
    if where is not None and _read_only_fs(where):
        return f"read-only filesystem ({err})"
    if name == "SQLITE_FULL":
        return f"disk full ({err})"
    if name.startswith("SQLITE_READONLY"):
        return f"read-only ({err})"
    if corrupt(err):
        return f"corrupt ({err})"
    if name.startswith("SQLITE_IOERR"):
        return f"I/O error ({err})"
    if name.startswith("SQLITE_CANTOPEN"):
        return f"cannot open the database ({err})"
    return str(err) or type(err).__name__


def corrupt(err: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged or not a database at all (``SQLITE_CORRUPT``,
    ``SQLITE_NOTADB``: sqlite.org/rescode.html), which no waiting repairs."""
    name = getattr(err, "sqlite_errorname", "") or ""
    return name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"


def connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA wal_autocheckpoint=0")  # Store.checkpoint, off the unlock's path
    return con


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Loading makes a few objects per stored row and no reference cycles; with the cyclic
    collector on, its full passes over the growing heap made loading 100,000 credentials up
    to twice as slow (issue 10). Restored as it was, whatever happens."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class Store:
    """The controller's handle on the database."""

    def __init__(self, path: Path, *, boot_id: str) -> None:
        """Open (or create) the database at ``path`` and bring its schema up to date.

        Raises ``StorageFault`` when it cannot be written now (full, read-only, I/O error:
        worth waiting for) and ``StoreError`` when it cannot be used at all (newer schema,
        corrupt: waiting changes nothing)."""
        self.path = path
        self.boot_id = boot_id
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageFault(path, f"cannot create the state directory ({err})") from err
        try:
            self._open()
        except sqlite3.Error as err:
            if corrupt(err):
                raise StoreError(
                    f"{path}: the state database is corrupt ({err}); restore it from a "
                    "backup, or move it aside to start an empty one (a new event epoch)"
                ) from err
            raise StorageFault(path, describe(err, path.parent)) from err

    def _open(self) -> None:
        path = self.path
        self._con = connect(path)
        self._writes = 0  # transactions since the last checkpoint
        self._migrate()
        # Kept in memory (this connection is the only writer) so that the state snapshot
        # published after every event costs no query; read from disk once, here.
        row = self._con.execute("SELECT max(seq), count(*) FROM outbox").fetchone()
        self._last_seq = max(int(row[0] or 0), int(self.meta("last_seq", 0)))
        # What the store held when this process opened it: the figure a published state is
        # compared with (issue 11 item 21), not last_seq after this run's own commits.
        self.opened_last_seq = self._last_seq
        self._depth = int(row[1])
        # Events published from memory while the database could not be written (storage
        # fault): they hold the next seqs and count in outbox_depth until the first write
        # that succeeds stores them (``_store_unstored``), before anything else.
        self._unstored: list[tuple[OutboxRow, float]] = []  # (row, when it was made)
        self._stored_last_seq = self._last_seq  # meta last_seq as on disk
        # The event stream's name (DESIGN 5): random, created with the database (or on the
        # first start of a database from before epochs) and kept as long as it lives.
        epoch = self.meta("epoch")
        if not isinstance(epoch, str) or not epoch:
            epoch = str(uuid.uuid4())
            self.set_meta("epoch", epoch)
        self._epoch: str = epoch

    def _migrate(self) -> None:
        version = self._con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this lockerd "
                f"({SCHEMA_VERSION}); refusing to touch it"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction per step, the version bump inside it (user_version is part of
            # the database header, so it commits or rolls back with the DDL).
            script = f"BEGIN IMMEDIATE;{_MIGRATIONS[target]}PRAGMA user_version={target};COMMIT;"
            try:
                self._con.executescript(script)
            except BaseException:
                self._rollback()
                raise  # sqlite3.Error: judged by __init__ (corrupt, or a fault of the disk)

    def close(self) -> None:
        self._con.close()

    # --- loading ---------------------------------------------------------------------------

    def meta(self, key: str, default: Any = None) -> Any:
        row = self._con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def load(self, configured: Mapping[str, str]) -> LockerState:
        """The stored state, with compartments reconciled against the configuration
        (id -> size): new ones are added free; sizes follow the configuration."""
        with _no_cycle_collection():
            return self._load(configured)

    def _load(self, configured: Mapping[str, str]) -> LockerState:
        base = fresh_state(configured)
        stored = {
            r[0]: load_compartment(json.loads(r[1]))
            for r in self._con.execute("SELECT id, row FROM compartments")
        }
        comps: dict[str, Compartment] = {}
        for cid, fresh in base.compartments.items():
            old = stored.get(cid)
            comps[cid] = fresh if old is None else dataclasses.replace(old, size=fresh.size)
        for cid in stored.keys() - comps.keys():
            logger.warning("compartment %s is in the database but no longer configured", cid)
        parcels = {
            p.id: p
            for p in (
                load_parcel(json.loads(r[0])) for r in self._con.execute("SELECT row FROM parcels")
            )
            if p.compartment in comps
        }
        for p in parcels.values():
            if comps[p.compartment].parcel != p.id:
                comps[p.compartment] = dataclasses.replace(comps[p.compartment], parcel=p.id)
        # In deadline order, so that building each table's deadline index sorts sorted input.
        credentials = Credentials(
            credentials_from_columns(
                self._con.execute(
                    f"SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY valid_until, tag"  # noqa: S608 - fixed names
                ),
                parcels,
            )
        )
        return LockerState(
            compartments=MappingProxyType(comps),
            parcels=MappingProxyType(parcels),
            credentials=credentials,
            tokens=Tokens(
                self._con.execute("SELECT token_id, expires FROM tokens ORDER BY expires, token_id")
            ),
            commands=Commands(
                (r[0], load_command(json.loads(r[1])))
                for r in self._con.execute("SELECT jti, row FROM commands ORDER BY exp, jti")
            ),
            spent=Spent(
                (r[0], SpentTag(r[1], r[2], r[3]))
                for r in self._con.execute(
                    "SELECT tag, reason, forget_at, detail FROM spent ORDER BY forget_at, tag"
                )
            ),
            throttle=load_throttle(self.meta("throttle", {})),
            lockdown=bool(self.meta("lockdown", False)),
            remote_opens=tuple(self.meta("remote_opens", [])),
            keypad=KeypadEntry(),
        )

    # --- writing ---------------------------------------------------------------------------

    def commit(
        self,
        old: LockerState,
        new: LockerState,
        events: Iterable[Out],
        now: float,
        clock_synced: bool,
        extra_meta: Mapping[str, Any] | None = None,
        touched: Mapping[str, Collection[str]] | None = None,
    ) -> list[OutboxRow]:
        """Persist ``new`` (only what differs from ``old``) and append ``events``, atomically.
        ``touched``: the keys written per table, when known (``Transition.touched``): only
        those rows are compared, so a change costs the same however many rows a table has."""
        con = self._con
        try:
            con.execute("BEGIN IMMEDIATE")
            self._write_rows(old, new, touched)
            meta: dict[str, Any] = dict(extra_meta or {})
            if old.throttle != new.throttle:
                meta["throttle"] = jsonable(new.throttle)
            if old.lockdown != new.lockdown:
                meta["lockdown"] = new.lockdown
            if old.remote_opens != new.remote_opens:
                meta["remote_opens"] = list(new.remote_opens)
            self._store_unstored()
            rows = self._append(events, now, clock_synced)
            if rows:
                meta["last_seq"] = rows[-1].seq
            for key, value in meta.items():
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            con.execute("COMMIT")
        except BaseException as err:
            self._rollback()
            if isinstance(err, sqlite3.OperationalError | sqlite3.DatabaseError):
                raise StorageFault(self.path, describe(err, self.path.parent)) from err
            raise
        self._writes += 1
        self._unstored_committed()
        if rows:
            self._last_seq = self._stored_last_seq = rows[-1].seq
            self._depth += len(rows)
        return rows

    def checkpoint_due(self, *, idle: bool) -> bool:
        """Whether to checkpoint now: after ``CHECKPOINT_AFTER`` writes when the caller has
        nothing else to do, after ``CHECKPOINT_FORCED`` in any case."""
        return self._writes >= (CHECKPOINT_AFTER if idle else CHECKPOINT_FORCED)

    def checkpoint(self) -> None:
        """Copy the WAL into the database as far as readers allow (``PASSIVE``: never waits
        for them), so the next commit starts the WAL over. A failure loses nothing (the
        commits are durable in the WAL) and is logged; the next one tries again."""
        self._writes = 0
        try:
            self._con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as err:
            logger.warning("%s: WAL checkpoint failed: %s", self.path, describe(err))

    def _store_unstored(self) -> None:
        """Inside an open write transaction: the events published from memory take their
        place in the outbox under the seqs they went out with, and meta ``last_seq`` counts
        them, before anything else is written (a copy lost in flight is then re-sent until
        a server ack covers it; no later event can take their seqs)."""
        for row, created in self._unstored:
            self._con.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?)", (row.seq, row.type, row.payload, created)
            )
        if self._last_seq > self._stored_last_seq:
            self._con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (json.dumps(self._last_seq),)
            )

    def _unstored_committed(self) -> None:
        self._unstored = []
        self._stored_last_seq = self._last_seq

    def _write_rows(
        self, old: LockerState, new: LockerState, touched: Mapping[str, Collection[str]] | None
    ) -> None:
        """Every row of the state tables that differs between ``old`` and ``new``."""
        con = self._con

        def keys(name: str) -> Collection[str] | None:
            return None if touched is None else touched.get(name, ())

        for table in ("compartments", "parcels"):
            for k, v in changed_rows(getattr(old, table), getattr(new, table), keys(table)):
                if v is None:
                    con.execute(f"DELETE FROM {table} WHERE id=?", (k,))  # noqa: S608 - fixed names
                else:
                    con.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", (k, dump(v)))  # noqa: S608
        self._write_credentials(old, new, keys("credentials"))
        for k, exp in changed_rows(old.tokens, new.tokens, keys("tokens")):
            if exp is None:
                con.execute("DELETE FROM tokens WHERE token_id=?", (k,))
            else:
                con.execute("INSERT OR REPLACE INTO tokens VALUES (?, ?)", (k, exp))
        self._write_spent(old, new, keys("spent"))
        for k, rec in changed_rows(old.commands, new.commands, keys("commands")):
            if rec is None:
                con.execute("DELETE FROM commands WHERE jti=?", (k,))
            else:
                con.execute(
                    "INSERT OR REPLACE INTO commands VALUES (?, ?, ?)", (k, rec.exp, dump(rec))
                )

    def _write_spent(
        self, old: LockerState, new: LockerState, keys: Collection[str] | None
    ) -> None:
        for k, gone in changed_rows(old.spent, new.spent, keys):
            if gone is None:
                self._con.execute("DELETE FROM spent WHERE tag=?", (k,))
            else:
                self._con.execute(
                    "INSERT OR REPLACE INTO spent VALUES (?, ?, ?, ?)",
                    (k, gone.reason, gone.forget_at, gone.detail),
                )

    def _write_credentials(
        self, old: LockerState, new: LockerState, keys: Collection[str] | None
    ) -> None:
        for k, cred in changed_rows(old.credentials, new.credentials, keys):
            if cred is None:
                self._con.execute("DELETE FROM credentials WHERE tag=?", (k,))
            else:
                self._con.execute(
                    "INSERT OR REPLACE INTO credentials VALUES (?, ?, ?, ?, ?, ?)",
                    credential_columns(cred),
                )

    def _rollback(self) -> None:
        """Roll back what is left of a failed transaction. SQLite has often rolled it back
        itself (SQLITE_FULL, SQLITE_IOERR): then there is nothing to do, and a ROLLBACK would
        only raise "no transaction is active" over the real error."""
        if self._con.in_transaction:
            try:
                self._con.execute("ROLLBACK")
            except sqlite3.Error as err:
                logger.debug("rollback after a failed commit: %s", err)

    def last_seq(self) -> int:
        """The highest seq of this epoch ever committed (never reused, even after its row
        was deleted)."""
        return self._last_seq

    @property
    def epoch(self) -> str:
        """This database's event stream id (a UUID string)."""
        return self._epoch

    def begin_epoch(self, now: float) -> str:
        """Start a new event stream (the store was found rolled back or restored, issue 11
        item 21): a new epoch, and every event still unacknowledged (those published from
        memory included) renumbered from seq 1 into it, in order and in one transaction, so
        nothing is lost and no seq the server holds under the old epoch is reused. Returns
        the new epoch. Raises ``StorageFault`` when the database cannot be written."""
        epoch = str(uuid.uuid4())
        con = self._con
        with self._writing():
            rows = con.execute("SELECT seq, payload FROM outbox ORDER BY seq").fetchall()
            con.execute("DELETE FROM outbox")
            for seq, (_old, blob) in enumerate(rows, start=1):
                doc = json.loads(blob)
                doc["epoch"], doc["seq"] = epoch, seq
                con.execute(
                    "INSERT INTO outbox VALUES (?, ?, ?, ?)",
                    (seq, doc["type"], json.dumps(doc, separators=(",", ":")).encode(), now),
                )
            abandoned = [*self.meta("abandoned_epochs", []), self._epoch][-16:]
            for key, value in (
                ("epoch", epoch),
                ("epoch_began", now),
                ("last_seq", len(rows)),
                ("abandoned_epochs", abandoned),  # its own old states are not another store's
            ):
                con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self._epoch, self._last_seq, self._depth = epoch, len(rows), len(rows)
        self._stored_last_seq = self._last_seq
        return epoch

    def _append(self, events: Iterable[Out], now: float, clock_synced: bool) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        seq = None
        for ev in events:
            if seq is None:
                seq = self._last_seq
            seq += 1
            row = self._row(seq, ev, now, clock_synced)
            self._con.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?)", (seq, ev.type, row.payload, now)
            )
            rows.append(row)
        return rows

    def unstored_event(self, ev: Out, now: float, clock_synced: bool) -> OutboxRow:
        """An event that cannot be committed (``storage_fault``), to publish from memory.

        It takes the next seq and counts at once in ``last_seq`` and ``outbox_depth``, as
        if it were in the outbox: a server derives the seqs gone from the locker as
        ``last_seq - outbox_depth`` (locker.fleet.ledger.state_floor), so a seq counted in
        one and not the other would move that floor past a real, unacknowledged event. The
        first write that succeeds stores it in the outbox under that seq before anything
        else (``_store_unstored``), so it is re-sent until a server ack covers it. Until
        then it exists only in memory and in what was published: a process killed before
        that finds its published ``last_seq`` ahead of its store at the next start and
        begins a new epoch (locker.cabinet.streamcheck), so the seq is never reused."""
        self._last_seq += 1
        row = self._row(self._last_seq, ev, now, clock_synced)
        self._unstored.append((row, now))
        self._depth += 1
        return row

    def _row(self, seq: int, ev: Out, now: float, clock_synced: bool) -> OutboxRow:
        payload: dict[str, Any] = {
            "v": 1,
            "epoch": self._epoch,
            "seq": seq,
            "event_id": str(uuid.uuid4()),
            "boot_id": self.boot_id,
            "ts": rfc3339(now),
            "clock_synced": clock_synced,
            "type": ev.type,
        }
        if ev.compartment is not None:
            payload["compartment"] = ev.compartment
        if ev.parcel is not None:
            payload["parcel"] = ev.parcel
        payload["data"] = jsonable(ev.data)
        return OutboxRow(seq, ev.type, json.dumps(payload, separators=(",", ":")).encode())

    def set_meta(self, key: str, value: Any) -> None:
        with self._writing():
            self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, events published from memory stored first: a failure
        becomes ``StorageFault`` with its cause named, and nothing of it is stored."""
        self._writes += 1
        try:
            self._con.execute("BEGIN IMMEDIATE")
            self._store_unstored()
            yield
            self._con.execute("COMMIT")
        except BaseException as err:
            self._rollback()
            if isinstance(err, sqlite3.Error):
                raise StorageFault(self.path, describe(err, self.path.parent)) from err
            raise
        self._unstored_committed()

    def probe(self) -> None:
        """Whether the database takes a durable write again: raises ``StorageFault`` if not.
        The probe that succeeds is the write that stores events published from memory."""
        with self._writing():
            self._con.execute("INSERT OR REPLACE INTO meta VALUES ('probe', '1')")

    def unstored_count(self) -> int:
        """Events published from memory and not stored yet (0 outside a storage fault)."""
        return len(self._unstored)

    # --- outbox bookkeeping ------------------------------------------------------------------

    def acknowledge(self, upto_seq: int) -> int:
        """The server holds every event up to ``upto_seq``: forget them. Returns rows freed.
        Not synced on its own (see ``_unsynced``)."""
        with self._unsynced(), self._writing():
            freed = self._con.execute("DELETE FROM outbox WHERE seq <= ?", (upto_seq,)).rowcount
        self._depth -= freed
        return freed

    def delivered(self, seqs: Iterable[int]) -> int:
        """Forget the events a successful PUBACK delivered (``require_server_ack`` off).
        Not synced on its own (see ``_unsynced``)."""
        freed = 0
        with self._unsynced(), self._writing():
            for s in seqs:
                freed += self._con.execute("DELETE FROM outbox WHERE seq = ?", (s,)).rowcount
        self._depth -= freed
        return freed

    @contextlib.contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Around one ``_writing`` transaction: committed with ``synchronous=NORMAL``. In WAL
        mode it is ordered like any other (atomic, never reordered) but not fsynced itself;
        the next ``FULL`` commit, which syncs the whole WAL, makes it durable (SQLite "WAL
        mode", synchronous pragma). Only for forgetting delivered events: a delete lost to a
        power cut re-sends events the server already holds, which it drops by seq
        (at-least-once), so an fsync per ack (a sixth of the controller's time in a burst,
        issue 10) buys nothing. Not when events published from memory wait to be stored:
        that write stores them first, and it must be durable."""
        if self._unstored:
            yield
            return
        self._set_synchronous("NORMAL")  # outside the transaction, or it does not apply
        try:
            yield
        finally:
            self._set_synchronous("FULL")

    def _set_synchronous(self, mode: str) -> None:
        try:
            self._con.execute(f"PRAGMA synchronous={mode}")
        except sqlite3.Error as err:  # a setting, no I/O: not seen, but never left NORMAL
            raise StorageFault(self.path, describe(err, self.path.parent)) from err

    def outbox_depth(self) -> int:
        return self._depth

    def outbox(self) -> list[dict[str, Any]]:
        """Every unacknowledged event, decoded (tests and diagnostics)."""
        return [
            json.loads(r[0]) for r in self._con.execute("SELECT payload FROM outbox ORDER BY seq")
        ]


class OutboxView(OutboxReader):
    """The MQTT link's read-only view of the outbox (its own connection, its own thread)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._con: sqlite3.Connection | None = None

    def _c(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = sqlite3.connect(
                f"file:{self._path}?mode=ro",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
        return self._con

    def read(self, after_seq: int, limit: int) -> list[OutboxRow]:
        cur = self._c().execute(
            "SELECT seq, type, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [OutboxRow(int(s), str(t), bytes(p)) for s, t, p in cur]

    def depth(self) -> int:
        return int(self._c().execute("SELECT count(*) FROM outbox").fetchone()[0])

    def stream(self) -> tuple[str, int]:
        meta = dict(
            self._c().execute("SELECT key, value FROM meta WHERE key IN ('epoch', 'last_seq')")
        )
        return json.loads(meta.get("epoch", '""')), int(json.loads(meta.get("last_seq", "0")))

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
