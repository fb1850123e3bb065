"""Every read of the award database for the query surface: badges, a user's awards and progress, leaderboards."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streams.db.boards import Board, top
from streams.db.tables import (
    ANY_TIER,
    KNOWN_USERS,
    UTCDateTime,
    badge_holders,
    badges,
    read_counters,
    user_badge_progress,
    user_badges,
)


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
    rule_kind: str | None = None  # "level" for the catalog's levels
    target: float | None = None  # a level's ``at``


@dataclass(frozen=True)
class HeldAward:
    """A held (not revoked) award of one user, with what the user endpoint shows next to it."""

    award_id: str
    badge_id: str
    tier: str | None
    occurrence: int
    awarded_at: datetime
    event_id: str
    points: int


@dataclass(frozen=True)
class UserAward(HeldAward):
    """Any award of one user, revoked ones included, with everything the sink stored about it."""

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


def visible_progress(
    catalog: dict[str, BadgeInfo], held: set[tuple[str, str | None]], rows: list[UserProgress]
) -> list[UserProgress]:
    """The progress rows a user is shown: hidden badges only once earned, earned (badge, tier)s no longer.

    ``held`` is the (badge_id, tier) of every award the user holds (not revoked). A repeatable badge
    keeps its progress after an award: it counts towards the next occurrence. Shared by
    ``badgestream user`` and the read API, so both show the same thing.
    """
    held_badges = {badge_id for badge_id, _tier in held}
    shown = []
    for row in rows:
        info = catalog.get(row.badge_id)
        if info is not None and info.hidden and row.badge_id not in held_badges:
            continue  # hidden until earned
        repeatable = info.repeatable if info is not None else False
        if (row.badge_id, row.tier) in held and not repeatable:
            continue  # earned: nothing left to progress towards
        shown.append(row)
    return shown


def level_standing(catalog: dict[str, BadgeInfo], held: set[str],
                   points: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The highest level held and the next one not held yet (with the points still to go), from the catalog rows.

    Levels are the ``badges`` rows with ``rule_kind == "level"`` (``target`` is their ``at``); ``held``
    is the badge ids the user holds. Shared by ``badgestream user`` and the read API.
    """
    levels = sorted((info for info in catalog.values() if info.rule_kind == "level" and info.target is not None),
                    key=lambda info: info.target or 0)
    reached = [info for info in levels if info.id in held]
    waiting = [info for info in levels if info.id not in held]
    level = {"id": reached[-1].id, "name": reached[-1].name, "at": int(reached[-1].target or 0)} if reached else None
    upcoming = waiting[0] if waiting else None
    next_level = None
    if upcoming is not None:
        at = int(upcoming.target or 0)
        next_level = {"id": upcoming.id, "name": upcoming.name, "at": at, "remaining": max(at - points, 0)}
    return level, next_level


def load_badges(conn: Connection) -> dict[str, BadgeInfo]:
    result = conn.execute(sa.select(badges).order_by(badges.c.id))
    return {
        row.id: BadgeInfo(row.id, row.name, row.description, row.hidden, row.repeatable, row.tiers, row.catalog_version,
                          row.rule_kind, row.target)
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
            points=row.points,
        )
        for row in result
    ]


def user_progress(conn: Connection, user_id: str) -> list[UserProgress]:
    result = conn.execute(_USER_PROGRESS, {"user_id": user_id})
    return [UserProgress(row.badge_id, row.tier or None, row.progress, row.target, row.updated_at) for row in result]


def leaderboard(conn: Connection, limit: int = 10) -> list[tuple[str, int]]:
    """Users by number of awards held (revoked ones not counted), ties by user id: the all-time board's top."""
    return [(placed.user_id, placed.badges) for placed in top(conn, Board(), limit)]


def count_rows(conn: Connection) -> dict[str, int]:
    """Row count per table, for tests, benchmarks and the sink's start-up line."""
    return {
        table.name: int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
        for table in (badges, user_badges, user_badge_progress)
    }


# --- the read API: evidence, holders and rankings ---------------------------------------------

@dataclass(frozen=True)
class AwardEvidence:
    """One award as ``GET /v1/awards/{award_id}`` shows it: the decision and where its deciding event was read."""

    award_id: str
    user_id: str
    badge_id: str
    tier: str | None
    occurrence: int
    awarded_at: datetime
    event_id: str
    catalog_version: str
    metadata: dict[str, Any]
    backfill: bool
    revoked_at: datetime | None
    points: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None


def award_evidence(conn: Connection, award_id: str) -> AwardEvidence | None:
    """The award with this id (revoked or not), or None; rows older than migration 0002 have no source."""
    row = conn.execute(sa.select(user_badges).where(user_badges.c.award_id == award_id)).first()
    if row is None:
        return None
    return AwardEvidence(
        award_id=row.award_id, user_id=row.user_id, badge_id=row.badge_id, tier=row.tier or None,
        occurrence=row.occurrence, awarded_at=row.awarded_at, event_id=row.event_id,
        catalog_version=row.catalog_version, metadata=row.evaluation_metadata or {}, backfill=row.backfill,
        revoked_at=row.revoked_at, points=row.points, source_topic=row.source_topic,
        source_partition=row.source_partition, source_offset=row.source_offset,
    )


@dataclass(frozen=True)
class Holders:
    """How many distinct users hold each badge and each (badge, tier), among how many known users.

    "Known users" have at least one award (revoked or not) or progress row; revoked awards are not held.
    """

    known_users: int
    by_badge: dict[str, int]
    by_tier: dict[tuple[str, str | None], int]

    def rarity(self, badge_id: str, tier: str | None = None, *, any_tier: bool = False) -> float:
        """Share of known users holding the badge (``any_tier``) or that tier of it, 0..1."""
        if not self.known_users:
            return 0.0
        held = self.by_badge.get(badge_id, 0) if any_tier else self.by_tier.get((badge_id, tier), 0)
        return held / self.known_users


_HOLDERS = sa.select(
    badge_holders.c.badge_id, badge_holders.c.tier, badge_holders.c.holders,
    sa.select(read_counters.c.value).where(read_counters.c.name == KNOWN_USERS).scalar_subquery().label("known"),
)


def holders(conn: Connection) -> Holders:
    """Holder counts for every badge and tier, and the number of known users, as the sink last committed them.

    One read of ``badge_holders`` (a row per badge and tier held by anyone, and per badge under
    ``ANY_TIER``) with the ``known_users`` counter: no scan of the awards.
    """
    return _holders_from(conn.execute(_HOLDERS).all())


def _holders_from(rows: Iterable[tuple[Any, ...]]) -> Holders:
    """``Holders`` from (badge_id, tier, holders, known users) rows."""
    known = 0
    by_tier: dict[tuple[str, str | None], int] = {}
    by_badge: dict[str, int] = {}
    for badge_id, tier, count, known in rows:  # noqa: B007 - every row carries the same known users
        by_tier[(badge_id, tier or None)] = count
        if tier == ANY_TIER:
            by_badge[badge_id] = count
    return Holders(known_users=int(known or 0), by_badge=by_badge, by_tier=by_tier)


def _user_rows_query() -> sa.CompoundSelect[Any]:
    """The user's held awards (kind 0, oldest first), their progress rows (kind 1, by badge and tier) and the holder
    counts (kind 2) in one statement: one round trip for the user endpoint. Columns a kind does not have are NULL."""
    c, p = user_badges.c, user_badge_progress.c
    user: sa.BindParameter[str] = sa.bindparam("user_id")

    def none(type_: Any) -> sa.ColumnElement[Any]:
        return sa.type_coerce(sa.null(), type_)

    awards = sa.select(sa.literal(0).label("kind"), c.awarded_at, c.badge_id, c.tier, c.occurrence, c.award_id,
                       c.event_id, c.points, none(sa.Float).label("progress"), none(sa.Float).label("target"),
                       none(UTCDateTime()).label("updated_at")).where(c.user_id == user, c.revoked_at.is_(None))
    progress = sa.select(sa.literal(1), none(UTCDateTime()), p.badge_id, p.tier, none(sa.Integer), none(sa.String),
                         none(sa.String), none(sa.Integer), p.progress, p.target, p.updated_at).where(p.user_id == user)
    h = _HOLDERS.subquery()
    holders = sa.select(sa.literal(2), none(UTCDateTime()), h.c.badge_id, h.c.tier, none(sa.Integer),
                        none(sa.String), none(sa.String), h.c.holders, none(sa.Float), h.c.known, none(UTCDateTime()))
    # Positions, not expressions: SQLite orders a compound select by its result columns only.
    return sa.union_all(awards, progress, holders).order_by(sa.literal_column("1"), sa.literal_column("2"),
                                                   sa.literal_column("3"), sa.literal_column("4"),
                                                   sa.literal_column("5"))


# Built once: constructing a statement costs more than running it does for one user's rows (bench/api).
_USER_ROWS = _user_rows_query()
_USER_PROGRESS = (
    sa.select(user_badge_progress)
    .where(user_badge_progress.c.user_id == sa.bindparam("user_id"))
    .order_by(user_badge_progress.c.badge_id, user_badge_progress.c.tier)
)


def user_with_holders(conn: Connection, user_id: str) -> tuple[list[HeldAward], list[UserProgress], Holders]:
    """The user's awards that are not revoked (oldest first), their progress rows and every holder count: one
    query, only the columns the read API shows."""
    awards: list[HeldAward] = []
    progress: list[UserProgress] = []
    counts = []
    for kind, at, badge_id, tier, occurrence, award_id, event_id, points, value, target, updated_at in conn.execute(
            _USER_ROWS, {"user_id": user_id}):
        if kind == 0:
            awards.append(HeldAward(award_id, badge_id, tier or None, occurrence, at, event_id, points))
        elif kind == 1:
            progress.append(UserProgress(badge_id, tier or None, value, target, updated_at))
        else:  # a holder count; ``target`` carries the known users
            counts.append((badge_id, tier, points, target))
    return awards, progress, _holders_from(counts)


@dataclass(frozen=True)
class Standing:
    """One user's line in a ranking: held awards and the sum of their points."""

    user_id: str
    badges: int
    points: int


def standings(
    conn: Connection, *, by: str = "badges", badge_id: str | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> list[Standing]:
    """Every user holding at least one award that matches, best first (``by`` badges or points), ties by user id.

    Held means not revoked; ``since``/``until`` select awards with ``since <= awarded_at < until``
    (a season), ``badge_id`` one badge. With ``by="points"`` users whose matching awards earned no
    points are left out: they have no place on a points ranking.
    """
    if by not in ("badges", "points"):
        raise ValueError(f"by must be 'badges' or 'points', not {by!r}")
    c = user_badges.c
    conditions: list[sa.ColumnElement[bool]] = [c.revoked_at.is_(None)]
    if badge_id is not None:
        conditions.append(c.badge_id == badge_id)
    if since is not None:
        conditions.append(c.awarded_at >= since)
    if until is not None:
        conditions.append(c.awarded_at < until)
    count = sa.func.count().label("badges")
    points = sa.func.coalesce(sa.func.sum(c.points), 0).label("points")
    stmt = sa.select(c.user_id, count, points).where(*conditions).group_by(c.user_id)
    if by == "points":
        stmt = stmt.having(points > 0).order_by(points.desc(), c.user_id)
    else:
        stmt = stmt.order_by(count.desc(), c.user_id)
    return [Standing(row.user_id, int(row.badges), int(row.points)) for row in conn.execute(stmt)]
