"""Alembic environment of the fleet service: the URL comes from the caller's Config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from locker.fleet.service.db import make_engine, metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER = move and copy
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


run()
