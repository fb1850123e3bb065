"""Indexes for the read API: holder counts and rankings over held (not revoked) awards.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Both are partial (``WHERE revoked_at IS NULL``: revoked awards are never held, so they stay out of
the index) and hold every column their query reads, so PostgreSQL answers with index-only scans:
- ``ix_user_badges_held_badge``: (badge_id, tier, user_id), for holders and rarity per badge and tier;
- ``ix_user_badges_held_user``: (user_id, awarded_at, points), for the leaderboards (all time,
  a season window, by points).
A user's own awards use the unique key on (user_id, badge_id, tier, occurrence) as before.
bench/api measures what they change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

HELD = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    op.create_index("ix_user_badges_held_badge", "user_badges", ["badge_id", "tier", "user_id"],
                    postgresql_where=HELD, sqlite_where=HELD)
    op.create_index("ix_user_badges_held_user", "user_badges", ["user_id", "awarded_at", "points"],
                    postgresql_where=HELD, sqlite_where=HELD)


def downgrade() -> None:
    op.drop_index("ix_user_badges_held_user", table_name="user_badges")
    op.drop_index("ix_user_badges_held_badge", table_name="user_badges")
