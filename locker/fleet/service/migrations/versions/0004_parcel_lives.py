"""parcels.life and parcel_history.life: each issue of a parcel id after a final state

A parcel id issued again once its parcel was collected (or cancelled, retrieved...) reused the
old row: the new parcel showed the old ``created_at`` and ``pickup_until``, kept ``reminded``
(so it never got a reminder) and its history mixed both. Each issue now starts a new life of
the id; existing rows and history entries are life 1.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("parcels", "parcel_history"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("life", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    for table in ("parcels", "parcel_history"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("life")
