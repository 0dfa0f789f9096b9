"""The locker's own watch on its MQTT client certificate (``mqtt.cert_file``).

The day the certificate ends the broker refuses it and the locker falls silent: nothing it
does reaches the fleet any more, and it cannot say why. So it says so before: at start and
then every ``CHECK_EVERY_S`` while the end is within ``certificates.RENEW_WITHIN`` (30 days),
it logs a warning and hands the controller a ``CertificateDue``, which the state machine
commits as a ``certificate_expiring`` event; the fleet service raises an alarm on it. The
certificate checked is the one this process loaded (a renewed file in the fleet directory
that was never installed here is still reported). Runs on its own daemon thread; a file that
cannot be read any more is logged once and skipped, never a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from locker.cabinet.config import OPTION, RENEW_HOW
from locker.cabinet.domain.inputs import CertificateDue
from locker.contract import certificates

logger = logging.getLogger(__name__)

CHECK_EVERY_S: Final = 86_400.0  # once a day: a month's warning is about 30 events


class CertificateWatch:
    """Reports ``cert_file``'s coming end to ``sink`` (see the module docstring)."""

    def __init__(
        self,
        cert_file: Path,
        sink: Callable[[object], None],
        *,
        every_s: float = CHECK_EVERY_S,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.cert_file, self.sink, self.every_s, self.clock = cert_file, sink, every_s, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreadable = False

    def check(self) -> CertificateDue | None:
        """Look once; report and return the ``CertificateDue`` when the end is near."""
        try:
            end = certificates.end_of(self.cert_file.read_bytes())
        except (OSError, ValueError) as err:
            if not self._unreadable:
                logger.warning("%s: cannot read %s: %s", OPTION, self.cert_file, err)
            self._unreadable = True
            return None
        self._unreadable = False
        line = certificates.renewal_message(OPTION, end, self.clock(), RENEW_HOW)
        if line is None:
            return None
        logger.warning("%s", line)
        due = CertificateDue(OPTION, end.timestamp())
        self.sink(due)
        return due

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cert-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # a watch must never take the locker down
                logger.exception("certificate check failed")
            if self._stop.wait(self.every_s):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
