"""A private PostgreSQL from Debian's packages, for the fleet service's tests.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres``
system user (``runuser``), in a directory made with ``mkdtemp`` under /tmp and handed to
that user (pytest's own tmp tree is 0700 root, which postgres cannot enter). The server
listens on a free loopback port and a socket in the same directory; fsync is off (tests
only). Reference: shared reference/surfaces.md section 3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from locker.sim.broker import free_port

PGBIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


class Postgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-pg-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        self.port = free_port()
        self.data = self.dir / "data"

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                str(PGBIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            _as_postgres(
                str(PGBIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.dir / "pg.log"),
                "-w",
                "-t",
                "30",
                "start",
                "-o",
                opts,
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run(
            [
                str(PGBIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-c",
                f"create database {name}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if not (PGBIN / "initdb").exists():
        pytest.skip("Debian's postgresql-15 is not installed (make system-deps)")
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
