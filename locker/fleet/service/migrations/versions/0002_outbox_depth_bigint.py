"""lockers.outbox_depth as BIGINT

The contract bounds ``outbox_depth`` like every counter a locker publishes, at 2**63-1
(``locker.contract.numbers``); PostgreSQL's INTEGER stops at 2**31-1, so a depth the contract
allows was a data error there. SQLite's INTEGER is 64-bit already (its declared type changes
by move and copy).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lockers") as batch:
        batch.alter_column(
            "outbox_depth",
            existing_type=sa.Integer(),
            type_=sa.BigInteger(),
            existing_nullable=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("lockers") as batch:
        batch.alter_column(
            "outbox_depth",
            existing_type=sa.BigInteger(),
            type_=sa.Integer(),
            existing_nullable=True,
        )
