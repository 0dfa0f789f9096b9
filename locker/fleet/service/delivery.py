"""Delivering alarms and notifications: a database outbox and a worker that drains it.

``enqueue`` adds one row per target (``("webhook", index)`` or ``("email", 0)``) inside the
caller's transaction; the unique ``(channel, target, idempotency_key)`` makes a second enqueue
of the same message a no-op. ``Deliverer`` (a thread) claims due rows, sends them and records
the outcome; a failure is retried with exponential back-off (``base * 2**attempts``, capped)
until ``max_attempts``. Delivery is at-least-once: a receiver recognises a repeat by the
``Idempotency-Key`` header.

Webhooks: ``POST`` of the JSON payload, headers ``Content-Type: application/json``,
``Idempotency-Key``, ``X-Locker-Timestamp`` (Unix seconds) and ``X-Locker-Signature:
sha256=<hex>``, the HMAC-SHA256 under the webhook's secret of ``"<timestamp>.<body>"`` (the
Stripe/GitHub scheme: a receiver checks it with a constant-time compare and rejects stale
timestamps). A 2xx answer is delivery; anything else is retried. E-mail: ``smtplib`` to the
``[smtp]`` recipients, ``Message-ID`` derived from the idempotency key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

from sqlalchemy import Connection, Engine, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from locker import errors
from locker.fleet.service.config import ServiceSettings
from locker.fleet.service.db import deliveries

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Locker-Signature"
TIMESTAMP_HEADER = "X-Locker-Timestamp"
LEASE_S = 30.0


def enqueue(
    conn: Connection,
    targets: Sequence[tuple[str, int]],
    key: str,
    payload: dict[str, Any],
    now: float,
) -> None:
    if not targets:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    rows = [
        {
            "channel": channel,
            "target": index,
            "idempotency_key": key[:200],
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "next_at": now,
        }
        for channel, index in targets
    ]
    stmt = dialect.insert(deliveries).on_conflict_do_nothing(
        index_elements=["channel", "target", "idempotency_key"]
    )
    conn.execute(stmt, rows)


def routes(settings: ServiceSettings) -> dict[str, list[tuple[str, int]]]:
    """kind ("alarm" | "notification") -> delivery targets, from the configuration."""
    out: dict[str, list[tuple[str, int]]] = {"alarm": [], "notification": []}
    for i, hook in enumerate(settings.webhooks):
        for kind in hook.kinds:
            out[kind].append(("webhook", i))
    if settings.smtp is not None:
        out["alarm"].append(("email", 0))
    return out


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class DeliveryError(errors.LinkError):
    """One attempt failed (the message says why; it is retried)."""


class Deliverer:
    """Drains ``deliveries`` on its own thread, polling every ``poll_s`` seconds."""

    def __init__(
        self,
        engine: Engine,
        settings: ServiceSettings,
        *,
        poll_s: float = 0.5,
        base_s: float = 2.0,
        max_backoff_s: float = 600.0,
        max_attempts: int = 20,
        timeout_s: float = 10.0,
    ) -> None:
        self.engine, self.settings = engine, settings
        self.poll_s, self.base_s, self.max_backoff_s = poll_s, base_s, max_backoff_s
        self.max_attempts, self.timeout_s = max_attempts, timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-delivery", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the delivery thread runs (False before ``start`` and after a crash)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                logger.exception("delivery pass failed")
                busy = False
            if not busy:
                self._stop.wait(self.poll_s)

    def _claim(self, now: float) -> list[Any]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(deliveries)
                .where(and_(deliveries.c.state == "pending", deliveries.c.next_at <= now))
                .order_by(deliveries.c.next_at)
                .limit(20)
            ).all()
            claimed = []
            for row in rows:  # a lease: another worker skips it until it runs out
                res = conn.execute(
                    update(deliveries)
                    .where(and_(deliveries.c.id == row.id, deliveries.c.next_at == row.next_at))
                    .values(next_at=now + LEASE_S)
                )
                if res.rowcount:
                    claimed.append(row)
            return claimed

    def run_once(self) -> bool:
        """One pass; True when something was attempted."""
        rows = self._claim(time.time())
        for row in rows:
            try:
                self._send(row)
            except (DeliveryError, OSError, smtplib.SMTPException) as err:
                self._failed(row, str(err)[:500])
            else:
                with self.engine.begin() as conn:
                    conn.execute(
                        update(deliveries)
                        .where(deliveries.c.id == row.id)
                        .values(state="sent", attempts=row.attempts + 1, last_error=None)
                    )
                self.sent += 1
        return bool(rows)

    def _failed(self, row: Any, error: str) -> None:
        self.failures += 1
        attempts = row.attempts + 1
        state = "failed" if attempts >= self.max_attempts else "pending"
        delay = min(self.max_backoff_s, self.base_s * 2 ** (attempts - 1))
        logger.warning(
            "delivery %s (%s) attempt %d failed: %s", row.id, row.channel, attempts, error
        )
        with self.engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == row.id)
                .values(
                    state=state,
                    attempts=attempts,
                    next_at=time.time() + delay,
                    last_error=error,
                )
            )

    def _send(self, row: Any) -> None:
        body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
        if row.channel == "webhook":
            self._webhook(row.target, row.idempotency_key, body)
        elif row.channel == "email":
            self._email(row.idempotency_key, row.payload)
        else:
            raise DeliveryError(f"unknown channel {row.channel!r}")

    def _webhook(self, index: int, key: str, body: bytes) -> None:
        if index >= len(self.settings.webhooks):
            raise DeliveryError(f"webhook {index} is no longer configured")
        hook = self.settings.webhooks[index]
        ts = str(int(time.time()))
        request = urllib.request.Request(  # noqa: S310 - the URL is validated http(s) config
            hook.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                TIMESTAMP_HEADER: ts,
                SIGNATURE_HEADER: sign(hook.secret, ts, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
                status = resp.status
        except urllib.error.HTTPError as err:
            raise DeliveryError(f"HTTP {err.code} from webhook {index}") from None
        except urllib.error.URLError as err:
            raise DeliveryError(f"webhook {index} unreachable: {err.reason}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status} from webhook {index}")

    def _email(self, key: str, payload: dict[str, Any]) -> None:
        smtp = self.settings.smtp
        if smtp is None:
            raise DeliveryError("e-mail is no longer configured")
        alarm = payload.get("alarm", {})
        msg = EmailMessage()
        msg["Subject"] = f"[locker alarm] {alarm.get('kind')} at {alarm.get('locker')}"
        msg["From"] = smtp.sender
        msg["To"] = ", ".join(smtp.to)
        msg["Message-ID"] = f"<{key}@fleet.locker>"
        msg.set_content(json.dumps(payload, indent=2, sort_keys=True))
        with smtplib.SMTP(smtp.host, smtp.port, timeout=self.timeout_s) as client:
            if smtp.starttls:
                client.starttls()
            if smtp.username and smtp.password:
                client.login(smtp.username, smtp.password)
            client.send_message(msg)
