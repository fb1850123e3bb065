"""Award evidence and points: where the deciding event was read (topic, partition, offset) and the points granted.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Rows written before this migration read as unknown source (NULL) and 0 points.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("user_badges") as batch:
        batch.add_column(sa.Column("source_topic", sa.String(255), nullable=True))
        batch.add_column(sa.Column("source_partition", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("source_offset", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("points", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("user_badges") as batch:
        batch.drop_column("points")
        batch.drop_column("source_offset")
        batch.drop_column("source_partition")
        batch.drop_column("source_topic")
