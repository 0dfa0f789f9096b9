"""Storing what lockers publish: one database transaction per batch, acks computed from it.

``Ingest.store(batch)`` takes parsed MQTT messages (status, state, events of any lockers, in
any order, duplicates included) and, in ONE transaction:

- upserts each locker's status and state;
- inserts each event once (``ON CONFLICT DO NOTHING`` on ``(locker, epoch, seq)``; only the
  rows really inserted go on to the ledger and the alarms);
- per touched ``(locker, epoch)`` stream, locked for the transaction (``FOR UPDATE`` on
  PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers), advances ``contiguous`` over
  what the DATABASE holds, so N workers sharing a subscription compute the same ack;
- reports first contacts, epoch changes, gaps and filled gaps (``reports`` table, log), and
  records when a gap opened (``streams.gap_since``), for the worker's gap sweep
  (:mod:`locker.fleet.service.gaps`);
- holds an event whose ``(epoch, seq)`` can be placed but whose body breaks the contract
  (``ledger.event_problem``: a type of 65 characters, a compartment of 70, a control character
  in ``ts``, NaN...) as a placeholder of type ``invalid_event`` (``ledger.placeholder``: the
  problem and the raw payload, escaped and cut short), so the stream goes on and is acked; it
  is reported (``invalid_event`` in ``reports``, a WARNING line with locker, seq and why) and
  raises the operator alarm ``invalid_event`` (once while open); the parcel ledger and the
  alarm rules skip it;
- an event about a parcel that another locker holds (``parcel_ledger.Foreign``) is stored as
  an event but changes no parcel and notifies nobody: reported (``foreign_parcel_event``), a
  WARNING line, and the alarm ``foreign_parcel_event`` on the sending locker.

After the commit it returns the acks due (``{p}/ack`` ``{"v":1,"epoch","upto_seq"}``) and the
lockers to ask for a ``resync``. The receipt rule (the same as ``lockerctl watch``'s): a
stream starts at its floor, 0 (the start of the epoch) or, higher, what the locker's stored
state of the same epoch says has left its outbox (``last_seq - outbox_depth``: it can never
be sent again, so waiting for it would stop the stream for good; seqs skipped that way are
reported as ``floor_raised``); an ack never passes a gap; a first contact that begins past its
floor acknowledges nothing until the backlog has come in, and asks for it with ``resync``.
Every message is checked against the contract before the transaction
(:mod:`locker.fleet.service.intake`): one that breaks it is rejected alone, or, for an event
that can still be placed, replaced by its placeholder (above), so no value from a locker can
make the database driver raise.
An event or state without ``epoch`` (lockers from before epochs) belongs to the legacy epoch
``""``. The epoch, floor and ack shapes come from :mod:`locker.fleet.ledger`, the receipt
rule ``lockerctl watch`` follows too, so the two cannot drift.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from locker.contract import numbers
from locker.fleet import ledger as receipt
from locker.fleet.ledger import short_epoch
from locker.fleet.service import alarms as alarm_rules
from locker.fleet.service import parcel_ledger
from locker.fleet.service.db import events, lockers, reports, streams
from locker.fleet.service.intake import MAX_EVENT_BYTES, Ack, Message, Outcome, Placed, parse

__all__ = ["Ack", "Ingest", "Message", "Outcome"]


class Ingest:
    """The database side of ingest; thread-safe (each call uses its own connection)."""

    def __init__(
        self,
        engine: Engine,
        prefix: str = "lockers",
        *,
        rules: alarm_rules.Rules | None = None,
        clock: Any = time.time,
    ) -> None:
        self.engine = engine
        self.prefix = prefix.rstrip("/")
        self.rules = rules or alarm_rules.Rules()
        self.clock = clock

    # -- parsing --

    # -- the transaction --

    def store(self, batch: Sequence[Message], *, suspect: str | None = None) -> Outcome:
        """Store ``batch`` in one transaction; see the module docstring.

        ``suspect``: the store already failed on this batch for a reason of its own; every
        placed event in it is held as a placeholder with this problem (the worker's last
        resort before dropping a message, so that no event can block its stream).

        :raises sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was committed
            and nothing may be acknowledged (the lockers will resend).
        """
        out = Outcome()
        parsed = parse(batch, self.prefix, out, suspect)
        now = self.clock()
        touched: dict[tuple[str, str], bool] = {}  # stream -> a duplicate came in
        with self.engine.begin() as conn:
            for locker, status in sorted(parsed.statuses.items()):
                self._status(conn, locker, status, now, out)
            for locker, state in sorted(parsed.states.items()):
                self._state(conn, locker, state, now, out)
            by_stream: dict[tuple[str, str], list[Placed]] = {}
            for ev in parsed.events:
                epoch = receipt.epoch_of(ev.doc) or receipt.LEGACY_EPOCH
                by_stream.setdefault((ev.locker, epoch), []).append(ev)
            state_of = {
                (lk, receipt.epoch_of(st) or receipt.LEGACY_EPOCH): st
                for lk, st in parsed.states.items()
            }
            for key in sorted(set(by_stream) | set(state_of)):  # one lock order for all workers
                if key in by_stream:
                    touched[key] = self._events(conn, key, by_stream[key], now, out)
                if key in state_of:
                    st = state_of[key]
                    if self._raise_floor(conn, key, receipt.state_floor(st), now, out):
                        touched.setdefault(key, False)
                        self._advance(conn, key, out)
            due = self._acks_due(conn, touched)
        out.acks = due
        return out

    def _touch_locker(self, conn: Connection, locker: str, now: float) -> None:
        ins = _insert(conn, lockers).values(id=locker, compartments=[], last_seen=now)
        conn.execute(ins.on_conflict_do_nothing(index_elements=["id"]))

    def _status(
        self,
        conn: Connection,
        locker: str,
        doc: dict[str, Any] | None,
        now: float,
        out: Outcome,
    ) -> None:
        self._touch_locker(conn, locker, now)
        if doc is None:
            return
        online = bool(doc.get("online"))
        values: dict[str, Any] = {"online": online, "last_seen": now}
        if receipt.printable(doc.get("boot_id"), MAX_EVENT_BYTES):
            values["boot_id"] = doc["boot_id"][:64]  # the column's length
        if online:
            version = doc.get("version")
            values |= {
                "offline_since": None,
                "version": version[:64]
                if receipt.printable(version, MAX_EVENT_BYTES) and version
                else None,
                "clock_synced": bool(doc.get("clock_synced")),
            }
            alarm_rules.resolve(conn, locker, "locker_offline", None, now)
        else:
            row = conn.execute(select(lockers.c.offline_since).where(lockers.c.id == locker))
            if row.scalar() is None:
                values["offline_since"] = now
        conn.execute(update(lockers).where(lockers.c.id == locker).values(**values))
        out.lines.append(f"{locker} {'online' if online else 'OFFLINE'}")
        out.statuses.append((locker, online))

    def _state(
        self, conn: Connection, locker: str, doc: dict[str, Any], now: float, out: Outcome
    ) -> None:
        self._touch_locker(conn, locker, now)
        epoch = receipt.epoch_of(doc) or receipt.LEGACY_EPOCH
        rev = numbers.count(doc.get("rev"))
        current = conn.execute(
            select(lockers.c.epoch, lockers.c.state_rev).where(lockers.c.id == locker)
        ).one()
        if current.epoch == epoch and rev is not None and (current.state_rev or 0) > rev:
            return  # an older snapshot overtaken by a newer one (no ordering across a share)
        comps = [
            {k: c.get(k) for k in ("id", "size", "state", "door", "in_service", "parcel")}
            for c in doc.get("compartments") or []
            if isinstance(c, dict)
        ]
        depth = numbers.count(doc.get("outbox_depth"))
        values = {
            "epoch": epoch,
            "state_rev": rev,
            "last_seq": numbers.count(doc.get("last_seq")),
            "outbox_depth": depth,
            "lockdown": bool(doc.get("lockdown")),
            "keypad_locked": bool(doc.get("keypad_locked")),
            "compartments": comps,
            "last_seen": now,
        }
        conn.execute(update(lockers).where(lockers.c.id == locker).values(**values))
        out.states.append(locker)
        alarm_rules.on_state(conn, self.rules, locker, depth, now)

    def _lock_stream(
        self, conn: Connection, key: tuple[str, str], now: float, out: Outcome
    ) -> tuple[Any, bool]:
        """The stream's row, locked for this transaction, created at floor 0 (the start of
        the epoch) if new, then raised to the floor its locker's stored state gives; and
        whether it was created now."""
        locker, epoch = key
        ins = _insert(conn, streams).values(
            locker=locker, epoch=epoch, first_seen=now, contiguous=0
        )
        created = conn.execute(
            ins.on_conflict_do_nothing(index_elements=["locker", "epoch"]).returning(
                streams.c.locker
            )
        ).first()
        if created is not None:
            others = conn.execute(
                select(func.count())
                .select_from(streams)
                .where(and_(streams.c.locker == locker, streams.c.epoch != epoch))
            ).scalar()
            kind = "epoch_change" if others else "first_contact"
            _report(conn, locker, kind, {"epoch": epoch}, now, out)
        row = conn.execute(_stream_where(select(streams), key).with_for_update()).one()
        if created is not None:
            known = conn.execute(
                select(lockers.c.epoch, lockers.c.last_seq, lockers.c.outbox_depth).where(
                    lockers.c.id == locker
                )
            ).first()
            if known is not None and known.epoch == epoch:
                stored = {"last_seq": known.last_seq, "outbox_depth": known.outbox_depth}
                self._raise_floor(conn, key, receipt.state_floor(stored), now, out)
        return row, created is not None

    def _events(
        self,
        conn: Connection,
        key: tuple[str, str],
        evs: list[Placed],
        now: float,
        out: Outcome,
    ) -> bool:
        locker, epoch = key
        stream, created = self._lock_stream(conn, key, now, out)
        unique = {ev.doc["seq"]: ev for ev in evs}
        rows = [
            {
                "locker": locker,
                "epoch": epoch,
                "seq": ev.doc["seq"],
                "type": ev.doc["type"],
                "compartment": ev.doc.get("compartment"),
                "parcel": ev.doc.get("parcel"),
                "ts": ev.doc.get("ts"),
                "body": ev.doc,
                "received_at": now,
            }
            for ev in unique.values()
        ]
        stmt = (
            _insert(conn, events)
            .on_conflict_do_nothing(index_elements=["locker", "epoch", "seq"])
            .returning(events.c.seq)
        )
        inserted = {r.seq for r in conn.execute(stmt, rows)} if rows else set()
        dup = len(evs) - len(inserted)
        out.new_events += len(inserted)
        out.duplicates += dup
        for row in sorted((r for r in rows if r["seq"] in inserted), key=lambda r: r["seq"]):
            body = row["body"]
            problem = unique[row["seq"]].problem
            if problem is None:
                foreign = parcel_ledger.apply_event(conn, locker, epoch, body, now)
                if foreign is None:
                    alarm_rules.on_event(conn, self.rules, locker, epoch, body, now)
                else:
                    self._foreign(conn, key, body, foreign, now, out)
            else:
                self._invalid(conn, key, row["seq"], problem, now, out)
            out.stored.append({"locker": locker, **body})
        contiguous = self._advance(conn, key, out)
        held_past_gap = any(r["seq"] > contiguous + 1 for r in rows)
        if created and held_past_gap:
            # first contact past the floor: a live event while a backlog may be queued
            last = stream.resync_at or 0.0
            if now - last > self.rules.resync_interval_s:
                conn.execute(_stream_where(update(streams), key).values(resync_at=now))
                out.resync.append(locker)
        return dup > 0

    def _invalid(
        self,
        conn: Connection,
        key: tuple[str, str],
        seq: int,
        problem: str,
        now: float,
        out: Outcome,
    ) -> None:
        """A placeholder was stored for ``seq``: report it, alarm the operator, log it."""
        locker, epoch = key
        detail = {"epoch": epoch, "seq": seq, "problem": problem}
        conn.execute(
            insert(reports).values(locker=locker, kind="invalid_event", at=now, detail=detail)
        )
        alarm_rules.raise_alarm(conn, self.rules, locker, "invalid_event", None, detail, now)
        out.invalid += 1
        out.rejections.append(
            f"{locker}: event seq {seq} of epoch {short_epoch(epoch)} is invalid ({problem}); "
            f"held as {receipt.INVALID_EVENT} so its stream goes on"
        )

    def _foreign(
        self,
        conn: Connection,
        key: tuple[str, str],
        body: dict[str, Any],
        foreign: parcel_ledger.Foreign,
        now: float,
        out: Outcome,
    ) -> None:
        """An event about a parcel another locker holds: stored as an event, changing no
        parcel; reported, alarmed on the sending locker, logged."""
        locker, epoch = key
        detail = foreign.detail(epoch, body)
        conn.execute(
            insert(reports).values(
                locker=locker, kind="foreign_parcel_event", at=now, detail=detail
            )
        )
        alarm_rules.raise_alarm(conn, self.rules, locker, "foreign_parcel_event", None, detail, now)
        out.rejections.append(
            f"{locker}: event seq {body['seq']} of epoch {short_epoch(epoch)} ({body['type']}) is "
            f"about parcel {foreign.parcel}, which locker {foreign.holder} holds "
            f"({foreign.state}): the parcel was not changed"
        )

    def _raise_floor(
        self, conn: Connection, key: tuple[str, str], floor: int | None, now: float, out: Outcome
    ) -> bool:
        """Everything up to ``floor`` is gone from the locker's outbox and can never be sent
        again: stop waiting for it. Reports how many of those seqs were never stored."""
        if floor is None:
            return False
        row = conn.execute(_stream_where(select(streams.c.contiguous), key)).first()
        current = (row.contiguous or 0) if row is not None else 0
        if row is None or floor <= current:
            return False
        held = conn.execute(
            select(func.count())
            .select_from(events)
            .where(and_(events.c.locker == key[0], events.c.epoch == key[1]))
            .where(and_(events.c.seq > current, events.c.seq <= floor))
        ).scalar_one()
        conn.execute(_stream_where(update(streams), key).values(contiguous=floor))
        missing = floor - current - int(held)
        if missing:
            detail = {"epoch": key[1], "from": current + 1, "to": floor, "never_stored": missing}
            _report(conn, key[0], "floor_raised", detail, now, out)
        return True

    def _advance(self, conn: Connection, key: tuple[str, str], out: Outcome) -> int:
        """Move ``contiguous`` over what the database holds; report a new or filled gap."""
        row = conn.execute(_stream_where(select(streams), key)).one()
        contiguous = row.contiguous or 0
        ahead = conn.execute(
            select(events.c.seq)
            .where(and_(events.c.locker == key[0], events.c.epoch == key[1]))
            .where(events.c.seq > contiguous)
            .order_by(events.c.seq)
        ).scalars()
        first_missing_after: int | None = None
        for seq in ahead:
            if seq == contiguous + 1:
                contiguous = seq
            else:
                first_missing_after = seq
                break
        values: dict[str, Any] = {"contiguous": contiguous}
        now = self.clock()
        if first_missing_after is not None and row.gap_reported != contiguous:
            # a new gap (or the old one moved on): its age counts from now, for the sweep
            values |= {"gap_reported": contiguous, "gap_since": now}
            detail = {"epoch": key[1], "missing_from": contiguous + 1}
            detail["missing_to"] = first_missing_after - 1
            _report(conn, key[0], "gap", detail, now, out)
        elif first_missing_after is None and row.gap_reported is not None:
            values |= {"gap_reported": None, "gap_since": None}
            _report(conn, key[0], "gap_filled", {"epoch": key[1], "upto": contiguous}, now, out)
        conn.execute(_stream_where(update(streams), key).values(**values))
        return int(contiguous)

    @staticmethod
    def _acks_due(conn: Connection, touched: dict[tuple[str, str], bool]) -> list[Ack]:
        acks = []
        for key in touched:
            row = conn.execute(_stream_where(select(streams.c.contiguous), key)).scalar()
            if row:
                acks.append(Ack(key[0], key[1], int(row)))
        return acks


def _insert(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _stream_where(stmt: Any, key: tuple[str, str]) -> Any:
    return stmt.where(and_(streams.c.locker == key[0], streams.c.epoch == key[1]))


def _report(
    conn: Connection,
    locker: str,
    kind: str,
    detail: dict[str, Any],
    now: float,
    out: Outcome,
) -> None:
    conn.execute(insert(reports).values(locker=locker, kind=kind, at=now, detail=detail))
    # logged once, by whoever acts on the outcome (the worker), only after the commit
    out.lines.append(f"{locker}: {kind} " + " ".join(f"{k}={v}" for k, v in detail.items()))
