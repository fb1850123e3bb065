"""Every read of the award database for the query surface: badges, a user's awards and progress, leaderboards."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streams.db.tables import badges, user_badge_progress, user_badges


@dataclass(frozen=True)
class BadgeInfo:
    """What the query surface needs to know about a catalog badge."""

    id: str
    name: str
    description: str
    hidden: bool
    repeatable: bool
    tiers: list[dict[str, Any]] | None
    catalog_version: str


@dataclass(frozen=True)
class UserAward:
    award_id: str
    badge_id: str
    tier: str | None
    occurrence: int
    awarded_at: datetime
    event_id: str
    metadata: dict[str, Any]
    backfill: bool
    revoked_at: datetime | None
    catalog_version: str


@dataclass(frozen=True)
class UserProgress:
    badge_id: str
    tier: str | None
    progress: float
    target: float
    updated_at: datetime


def load_badges(conn: Connection) -> dict[str, BadgeInfo]:
    result = conn.execute(sa.select(badges).order_by(badges.c.id))
    return {
        row.id: BadgeInfo(row.id, row.name, row.description, row.hidden, row.repeatable, row.tiers, row.catalog_version)
        for row in result
    }


def user_awards(conn: Connection, user_id: str) -> list[UserAward]:
    """Every award of the user, revoked ones included, oldest first."""
    result = conn.execute(
        sa.select(user_badges)
        .where(user_badges.c.user_id == user_id)
        .order_by(user_badges.c.awarded_at, user_badges.c.badge_id, user_badges.c.tier, user_badges.c.occurrence)
    )
    return [
        UserAward(
            award_id=row.award_id,
            badge_id=row.badge_id,
            tier=row.tier or None,
            occurrence=row.occurrence,
            awarded_at=row.awarded_at,
            event_id=row.event_id,
            metadata=row.evaluation_metadata or {},
            backfill=row.backfill,
            revoked_at=row.revoked_at,
            catalog_version=row.catalog_version,
        )
        for row in result
    ]


def user_progress(conn: Connection, user_id: str) -> list[UserProgress]:
    result = conn.execute(
        sa.select(user_badge_progress)
        .where(user_badge_progress.c.user_id == user_id)
        .order_by(user_badge_progress.c.badge_id, user_badge_progress.c.tier)
    )
    return [UserProgress(row.badge_id, row.tier or None, row.progress, row.target, row.updated_at) for row in result]


def leaderboard(conn: Connection, limit: int = 10) -> list[tuple[str, int]]:
    """Users by number of awards held (revoked ones not counted), ties by user id."""
    count = sa.func.count().label("badges")
    result = conn.execute(
        sa.select(user_badges.c.user_id, count)
        .where(user_badges.c.revoked_at.is_(None))
        .group_by(user_badges.c.user_id)
        .order_by(count.desc(), user_badges.c.user_id)
        .limit(limit)
    )
    return [(row.user_id, int(row.badges)) for row in result]


def count_rows(conn: Connection) -> dict[str, int]:
    """Row count per table, for tests, benchmarks and the sink's start-up line."""
    return {
        table.name: int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
        for table in (badges, user_badges, user_badge_progress)
    }
