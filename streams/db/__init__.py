"""The award database: tables, migrations, writes and reads.

The sink, the replay and the query commands all go through these functions, so the idempotency
rules live in one place (``writes``). ``tables`` defines the schema, ``engine`` creates engines and
runs the migrations, ``reads`` answers the query surface; this module names what callers use.
"""

from streams.db.engine import current_revision, make_engine, require_schema, upgrade
from streams.db.reads import (
    AwardEvidence,
    BadgeInfo,
    HeldAward,
    Holders,
    Standing,
    UserAward,
    UserProgress,
    award_evidence,
    count_rows,
    held_awards,
    holders,
    leaderboard,
    level_standing,
    load_badges,
    standings,
    user_awards,
    user_progress,
    visible_progress,
)
from streams.db.tables import ID_LENGTH, NO_TIER, badges, metadata, user_badge_progress, user_badges
from streams.db.writes import (
    WriteResult,
    catalog_rows,
    latest_progress,
    upsert_awards,
    upsert_progress,
    write_catalog,
    write_records,
)

__all__ = [
    "ID_LENGTH",
    "NO_TIER",
    "AwardEvidence",
    "BadgeInfo",
    "HeldAward",
    "Holders",
    "Standing",
    "UserAward",
    "UserProgress",
    "WriteResult",
    "award_evidence",
    "badges",
    "catalog_rows",
    "count_rows",
    "current_revision",
    "held_awards",
    "holders",
    "latest_progress",
    "leaderboard",
    "level_standing",
    "load_badges",
    "make_engine",
    "metadata",
    "require_schema",
    "standings",
    "upgrade",
    "upsert_awards",
    "upsert_progress",
    "user_awards",
    "user_badge_progress",
    "user_badges",
    "user_progress",
    "visible_progress",
    "write_catalog",
    "write_records",
]
