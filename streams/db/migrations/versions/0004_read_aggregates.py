"""Aggregates kept by the sink for the read API, built here from the rows already stored.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

- ``user_totals``: one row per known user (an award, revoked or not, or a progress row) with held
  awards and points; indexed by awards and by points (descending, then user id) for the all-time boards;
- ``period_scores``: held awards and points per user per UTC day, ISO week (Monday) and month;
- ``user_holdings``: held awards per (user, badge, tier), and per (user, badge) under tier ``''``;
- ``badge_holders``: distinct holders per (badge, tier), and per badge under tier ``''``;
- ``score_counts``: users per score on every board (all time, each period, each badge; by awards and
  by points), so that a rank is a sum over a few hundred rows rather than a count over every user;
- ``read_counters``: ``known_users``.

From here on ``streams.db.aggregates`` keeps them in the transaction that writes the awards. Rows
with nothing held are not kept (except in ``user_totals``, which is the list of known users).
Written out in SQL rather than imported, so later code never rewrites what this revision did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.String(255)


def _periods(dialect: str) -> dict[str, str]:
    """SQL for the first day of an award's UTC day, ISO week and month."""
    if dialect == "postgresql":
        utc = "(awarded_at AT TIME ZONE 'UTC')"
        return {"day": f"CAST({utc} AS DATE)", "week": f"CAST(date_trunc('week', {utc}) AS DATE)",
                "month": f"CAST(date_trunc('month', {utc}) AS DATE)"}
    # SQLite keeps UTC text; 'weekday 1' moves forward to a Monday, so step back six days first.
    return {"day": "date(awarded_at)", "week": "date(awarded_at, '-6 days', 'weekday 1')",
            "month": "date(awarded_at, 'start of month')"}


def upgrade() -> None:
    op.create_table(
        "user_totals",
        sa.Column("user_id", ID, nullable=False),
        sa.Column("awards", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_totals"),
    )
    op.create_table(
        "period_scores",
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("starts", sa.Date(), nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("awards", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("period", "starts", "user_id", name="pk_period_scores"),
    )
    op.create_table(
        "user_holdings",
        sa.Column("user_id", ID, nullable=False),
        sa.Column("badge_id", ID, nullable=False),
        sa.Column("tier", ID, nullable=False),
        sa.Column("awards", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "badge_id", "tier", name="pk_user_holdings"),
    )
    op.create_table(
        "badge_holders",
        sa.Column("badge_id", ID, nullable=False),
        sa.Column("tier", ID, nullable=False),
        sa.Column("holders", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("badge_id", "tier", name="pk_badge_holders"),
    )
    op.create_table(
        "score_counts",
        sa.Column("board", sa.String(8), nullable=False),
        sa.Column("board_key", ID, nullable=False),
        sa.Column("ranked_by", sa.String(8), nullable=False),
        sa.Column("score", sa.BigInteger(), nullable=False),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("board", "board_key", "ranked_by", "score", name="pk_score_counts"),
    )
    op.create_table(
        "read_counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_read_counters"),
    )

    held = "SELECT * FROM user_badges WHERE revoked_at IS NULL"
    execute = op.execute
    execute(f"""
        INSERT INTO user_totals (user_id, awards, points)
        SELECT user_id, COUNT(*), SUM(points) FROM ({held}) AS held GROUP BY user_id""")
    execute("""
        INSERT INTO user_totals (user_id, awards, points)
        SELECT user_id, 0, 0
        FROM (SELECT user_id FROM user_badges UNION SELECT user_id FROM user_badge_progress) AS known
        WHERE user_id NOT IN (SELECT user_id FROM user_totals)""")
    for period, start in _periods(op.get_bind().dialect.name).items():
        execute(f"""
            INSERT INTO period_scores (period, starts, user_id, awards, points)
            SELECT '{period}', starts, user_id, COUNT(*), SUM(points)
            FROM (SELECT {start} AS starts, user_id, points FROM user_badges WHERE revoked_at IS NULL) AS held
            GROUP BY starts, user_id""")
    execute(f"""
        INSERT INTO user_holdings (user_id, badge_id, tier, awards, points)
        SELECT user_id, badge_id, tier, COUNT(*), SUM(points) FROM (
            SELECT user_id, badge_id, tier, points FROM ({held}) AS held
            UNION ALL
            SELECT user_id, badge_id, '' AS tier, points FROM ({held}) AS held WHERE tier <> ''
        ) AS holdings GROUP BY user_id, badge_id, tier""")
    execute("""
        INSERT INTO badge_holders (badge_id, tier, holders)
        SELECT badge_id, tier, COUNT(*) FROM user_holdings GROUP BY badge_id, tier""")
    execute("INSERT INTO read_counters (name, value) SELECT 'known_users', COUNT(*) FROM user_totals")
    # (board, its key, extra condition, what to group by besides the score): constants cannot be grouped by.
    boards = {"user_totals": ("'all'", "''", "", ""), "period_scores": ("period", "starts", "", "period, starts, "),
              "user_holdings": ("'badge'", "badge_id", "AND tier = ''", "badge_id, ")}
    for table, (board, key, only, group) in boards.items():
        for by, score in (("badges", "awards"), ("points", "points")):
            execute(f"""
                INSERT INTO score_counts (board, board_key, ranked_by, score, users)
                SELECT {board}, CAST({key} AS TEXT), '{by}', {score}, COUNT(*) FROM {table} WHERE {score} > 0 {only}
                GROUP BY {group}{score}""")

    op.create_index("ix_user_totals_awards", "user_totals", [sa.text("awards DESC"), "user_id"])
    op.create_index("ix_user_totals_points", "user_totals", [sa.text("points DESC"), "user_id"])
    op.create_index("ix_period_scores_awards", "period_scores", ["period", "starts", sa.text("awards DESC"), "user_id"])
    op.create_index("ix_period_scores_points", "period_scores", ["period", "starts", sa.text("points DESC"), "user_id"])
    op.create_index("ix_user_holdings_awards", "user_holdings", ["badge_id", "tier", sa.text("awards DESC"), "user_id"])
    op.create_index("ix_user_holdings_points", "user_holdings", ["badge_id", "tier", sa.text("points DESC"), "user_id"])


def downgrade() -> None:
    for table in ("read_counters", "score_counts", "badge_holders", "user_holdings", "period_scores", "user_totals"):
        op.drop_table(table)
