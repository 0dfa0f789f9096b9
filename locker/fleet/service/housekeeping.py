"""The fleet service's periodic jobs, off the ingest path (DESIGN 13).

One daemon thread per service process runs each job at start and then every ``every_s``
(an hour): the certificate sweep (:mod:`locker.fleet.service.certs`) and the retention prune
(:mod:`locker.fleet.service.retention`). A job that fails is logged with its name and tried
again at the next round; it never stops the others nor the thread. N processes each run them:
every job is idempotent (an alarm is raised once by its unique open key; a row deleted twice is
deleted once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

logger = logging.getLogger(__name__)

EVERY_S: Final = 3600.0


class Housekeeper:
    """Runs ``jobs`` (name, callable) on a daemon thread: ``start``, ``stop``, ``alive``."""

    def __init__(
        self, jobs: Sequence[tuple[str, Callable[[], object]]], every_s: float = EVERY_S
    ) -> None:
        self.jobs, self.every_s = list(jobs), every_s
        self.rounds = 0  # completed rounds (tests wait on it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        for name, job in self.jobs:
            try:
                job()
            except Exception:  # the next round tries again; the other jobs still run
                logger.exception("housekeeping job %s failed; trying again later", name)
        self.rounds += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-housekeeping", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.run_once()
            if self._stop.wait(self.every_s):
                return

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
