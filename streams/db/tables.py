"""The award database: table definitions, engine set-up, migrations entry point and every read and write of it.

The sink, the worker (catalog at start-up) and the query commands all go through these functions,
so the idempotency rules live in one place: awards are inserted once per ``award_id`` (a
duplicate is success), revocations only ever set ``revoked_at``, and progress only moves to a
newer ``updated_at``.

Null tiers: the wire carries ``tier: null`` for untiered badges, but the database stores ``''``
(``NO_TIER``) in a NOT NULL column. A NULL inside a unique key never conflicts (in both SQLite and
PostgreSQL before 15's NULLS NOT DISTINCT), so ``(user, badge, NULL, 1)`` could be inserted twice;
the empty string makes the unique constraints hold on both databases. Readers get ``None`` back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

NO_TIER = ""
"""Stored in ``tier`` for untiered badges: see the module docstring."""

ID_LENGTH = 255
"""Longest id the sink accepts (user, badge, tier, event, award): PostgreSQL btree entries are bounded."""

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no timestamp type: SQLAlchemy stores text and drops the offset, so every value is
    converted to UTC first, which also keeps the text comparable (``updated_at >= ...``).
    Naive datetimes are taken to be UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_Id = sa.String(ID_LENGTH)

badges = sa.Table(
    "badges",
    metadata,
    sa.Column("id", _Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("trigger_events", sa.JSON, nullable=False),
    sa.Column("rule_kind", sa.String(64), nullable=True),
    sa.Column("target", sa.Float, nullable=True),
    sa.Column("tiers", sa.JSON, nullable=True),
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("repeatable", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("catalog_version", sa.String(ID_LENGTH), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

user_badges = sa.Table(
    "user_badges",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("award_id", _Id, nullable=False, unique=True),
    sa.Column("user_id", _Id, nullable=False),
    sa.Column("badge_id", _Id, nullable=False),
    sa.Column("tier", _Id, nullable=False, server_default=NO_TIER),
    sa.Column("occurrence", sa.Integer, nullable=False),
    sa.Column("awarded_at", UTCDateTime, nullable=False),
    sa.Column("event_id", _Id, nullable=False),
    sa.Column("evaluation_metadata", sa.JSON, nullable=False),
    sa.Column("backfill", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("catalog_version", sa.String(ID_LENGTH), nullable=False),
    sa.Column("source_topic", _Id, nullable=True),
    sa.Column("source_partition", sa.Integer, nullable=True),
    sa.Column("source_offset", sa.BigInteger, nullable=True),
    sa.Column("points", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("user_id", "badge_id", "tier", "occurrence"),
    # Read API (migration 0003): partial indexes over held awards, see that migration (window leaderboards).
    sa.Index("ix_user_badges_held_badge", "badge_id", "tier", "user_id",
             postgresql_where=sa.text("revoked_at IS NULL"), sqlite_where=sa.text("revoked_at IS NULL")),
    sa.Index("ix_user_badges_held_user", "user_id", "awarded_at", "points",
             postgresql_where=sa.text("revoked_at IS NULL"), sqlite_where=sa.text("revoked_at IS NULL")),
)

user_badge_progress = sa.Table(
    "user_badge_progress",
    metadata,
    sa.Column("user_id", _Id, primary_key=True),
    sa.Column("badge_id", _Id, primary_key=True),
    sa.Column("tier", _Id, primary_key=True, server_default=NO_TIER),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("target", sa.Float, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# --- aggregates kept by the sink (migration 0004; streams.db.aggregates keeps them) -------------
# Each is a function of user_badges and user_badge_progress, updated in the transaction that changes
# those rows, so rarity and ranks are exact as of the last sink commit without scanning the awards.

ANY_TIER = NO_TIER
"""In ``user_holdings`` and ``badge_holders``, tier ``''`` counts the badge whatever the tier: an untiered
award counts there once, a tiered one under its tier and there (so ``''`` holders are distinct users
holding the badge at all)."""

user_totals = sa.Table(
    "user_totals",
    metadata,
    sa.Column("user_id", _Id, primary_key=True),
    sa.Column("awards", sa.Integer, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
)
"""One row per known user (an award, revoked or not, or a progress row): held awards and their points."""

period_scores = sa.Table(
    "period_scores",
    metadata,
    sa.Column("period", sa.String(8), primary_key=True),
    sa.Column("starts", sa.Date, primary_key=True),
    sa.Column("user_id", _Id, primary_key=True),
    sa.Column("awards", sa.Integer, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
)
"""Held awards and points per user awarded in each day, ISO week and month (UTC); rows only where awards > 0."""

user_holdings = sa.Table(
    "user_holdings",
    metadata,
    sa.Column("user_id", _Id, primary_key=True),
    sa.Column("badge_id", _Id, primary_key=True),
    sa.Column("tier", _Id, primary_key=True),
    sa.Column("awards", sa.Integer, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
)
"""Held awards per (user, badge, tier) and per (user, badge) under ``ANY_TIER``; rows only where awards > 0."""

badge_holders = sa.Table(
    "badge_holders",
    metadata,
    sa.Column("badge_id", _Id, primary_key=True),
    sa.Column("tier", _Id, primary_key=True),
    sa.Column("holders", sa.Integer, nullable=False),
)
"""Distinct users holding each (badge, tier), and each badge under ``ANY_TIER``; rows only where holders > 0."""

score_counts = sa.Table(
    "score_counts",
    metadata,
    sa.Column("board", sa.String(8), primary_key=True),
    sa.Column("board_key", _Id, primary_key=True),
    sa.Column("ranked_by", sa.String(8), primary_key=True),
    sa.Column("score", sa.BigInteger, primary_key=True),
    sa.Column("users", sa.Integer, nullable=False),
)
"""How many users have each score on each board: a rank is one plus the users above, summed over a few hundred
rows instead of counted over every user. ``board`` is ``all`` (``board_key`` ``''``), ``day``/``week``/``month``
(``board_key`` the period's first day, ISO) or ``badge`` (the badge id); ``ranked_by`` is ``badges`` or ``points``.
Rows only where users > 0, scores > 0."""

read_counters = sa.Table(
    "read_counters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
"""Single numbers the read API needs: ``known_users`` (the rows of ``user_totals``), counted without a scan."""

# Rankings: top N, a user's neighbours and ranks are index range scans (score descending, then user id).
for _table, _keys in ((user_totals, ()), (period_scores, ("period", "starts")), (user_holdings, ("badge_id", "tier"))):
    for _score in ("awards", "points"):
        sa.Index(f"ix_{_table.name}_{_score}", *(_table.c[key] for key in _keys), _table.c[_score].desc(),
                 _table.c.user_id)

KNOWN_USERS = "known_users"
