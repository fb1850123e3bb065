"""Initial schema: the catalog (badges), one row per award (user_badges), latest progress (user_badge_progress).

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written out in full rather than imported from ``streams.db.tables`` so that later changes to the
table definitions never rewrite history. ``tier`` is NOT NULL with '' for untiered badges, so the
unique keys hold on SQLite and PostgreSQL alike (see ``streams.db.tables``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(255)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "badges",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("trigger_events", sa.JSON(), nullable=False),
        sa.Column("rule_kind", sa.String(64), nullable=True),
        sa.Column("target", sa.Float(), nullable=True),
        sa.Column("tiers", sa.JSON(), nullable=True),
        sa.Column("hidden", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("repeatable", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("catalog_version", ID, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_badges"),
    )
    op.create_table(
        "user_badges",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("award_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("badge_id", ID, nullable=False),
        sa.Column("tier", ID, nullable=False, server_default=""),
        sa.Column("occurrence", sa.Integer(), nullable=False),
        sa.Column("awarded_at", TIMESTAMP, nullable=False),
        sa.Column("event_id", ID, nullable=False),
        sa.Column("evaluation_metadata", sa.JSON(), nullable=False),
        sa.Column("backfill", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("catalog_version", ID, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_user_badges"),
        sa.UniqueConstraint("award_id", name="uq_user_badges_award_id"),
        sa.UniqueConstraint("user_id", "badge_id", "tier", "occurrence",
                            name="uq_user_badges_user_id_badge_id_tier_occurrence"),
    )
    op.create_table(
        "user_badge_progress",
        sa.Column("user_id", ID, nullable=False),
        sa.Column("badge_id", ID, nullable=False),
        sa.Column("tier", ID, nullable=False, server_default=""),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("target", sa.Float(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "badge_id", "tier", name="pk_user_badge_progress"),
    )


def downgrade() -> None:
    op.drop_table("user_badge_progress")
    op.drop_table("user_badges")
    op.drop_table("badges")
