"""streams.gap_since: when a stream's current mid-stream gap opened

The service sends ``resync`` for a gap that has lasted ``gap_resync_s`` (fleet.toml), whichever
worker saw it open, so the moment is kept in the database, not in one worker's memory. A gap
that is open when this migration runs counts from the migration. The index keeps the sweep
that looks for old gaps cheap (nearly every row is NULL).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.add_column(sa.Column("gap_since", sa.Float(), nullable=True))
    op.create_index("ix_streams_gap_since", "streams", ["gap_since"])
    streams = sa.table("streams", sa.column("gap_reported"), sa.column("gap_since"))
    op.execute(
        streams.update()
        .where(streams.c.gap_reported.is_not(None))
        .values(gap_since=sa.literal(time.time(), sa.Float()))
    )


def downgrade() -> None:
    op.drop_index("ix_streams_gap_since", table_name="streams")
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("gap_since")
