"""What the read API and the pages show, built from the award database: one function per view.

Each view is plain data (dicts and lists, times as RFC 3339 strings) in the field names of
DESIGN.md "Read API", so the JSON endpoints and the templates show the same thing. Hidden badges
appear nowhere until the user holds them; revoked awards are not held anywhere (not in a user's
badges, not in holder counts, not on a leaderboard). Holder counts and the day/week/month/all-time
leaderboards are read on every request from the aggregates the sink keeps (exact as of its last
commit); only the catalog and rankings over arbitrary ``since``/``until`` windows (an aggregate over
the awards) come through ``TTLCache``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.engine import Connection, Engine

from streams import db
from streams.api.cache import TTLCache
from streams.db.aggregates import period_bounds, period_start
from streams.db.boards import RankBy

PeriodName = Literal["day", "week", "month", "all"]


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _number(value: float) -> int | float:
    """Counts come back from the database as floats; 3.0 is shown as 3."""
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True)
class Ranking:
    """A whole leaderboard, best first, with competition ranks (1, 1, 3) and each user's position."""

    standings: list[db.Standing]
    by: RankBy
    ranks: list[int] = field(init=False)
    position: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        ranks: list[int] = []
        previous: int | None = None
        for index, standing in enumerate(self.standings):
            score = self.score(standing)
            ranks.append(ranks[-1] if score == previous else index + 1)
            previous = score
        object.__setattr__(self, "ranks", ranks)
        object.__setattr__(self, "position", {s.user_id: i for i, s in enumerate(self.standings)})

    def score(self, standing: db.Standing) -> int:
        return standing.points if self.by == "points" else standing.badges

    def rows(self, limit: int, around: str | None = None) -> list[dict[str, Any]] | None:
        """``limit`` rows from the top, or centred on ``around`` (None when that user is not ranked)."""
        start = 0
        if around is not None:
            index = self.position.get(around)
            if index is None:
                return None
            start = max(0, min(index - limit // 2, len(self.standings) - limit))
        return [
            {"rank": self.ranks[i], "user_id": s.user_id, "badges": s.badges, "points": s.points}
            for i, s in enumerate(self.standings[start:start + limit], start=start)
        ]

    def rank_of(self, user_id: str) -> int | None:
        index = self.position.get(user_id)
        return self.ranks[index] if index is not None else None


def _is_level(info: db.BadgeInfo) -> bool:
    """Levels (reached by points) share the badge table and id space; they are not badges to unlock."""
    return info.rule_kind == "level"


def _tier_names(info: db.BadgeInfo | None) -> list[str | None]:
    if info is None or not info.tiers:
        return [None]
    return [t.get("tier") for t in info.tiers]


class Views:
    """The views over one database; ``cache_ttl`` bounds how stale the shared aggregates may be."""

    def __init__(self, engine: Engine, cache_ttl: float) -> None:
        self.engine = engine
        self.cache = TTLCache(cache_ttl)

    # --- shared aggregates ---------------------------------------------------------------------

    def catalog(self, conn: Connection) -> dict[str, db.BadgeInfo]:
        result: dict[str, db.BadgeInfo] = self.cache.get("catalog", lambda: db.load_badges(conn))
        return result

    def ranking(self, conn: Connection, by: RankBy = "badges", badge_id: str | None = None,
                since: datetime | None = None, until: datetime | None = None) -> Ranking:
        key = ("ranking", by, badge_id, since, until)
        result: Ranking = self.cache.get(key, lambda: Ranking(
            db.standings(conn, by=by, badge_id=badge_id, since=since, until=until), by))
        return result

    # --- views ---------------------------------------------------------------------------------

    def user(self, user_id: str) -> dict[str, Any]:
        """``GET /v1/users/{user_id}``: held badges with rarity, visible progress with ``remaining``, locked badges."""
        with self.engine.connect() as conn:
            catalog = self.catalog(conn)
            awards, progress_rows, holders = db.user_with_holders(conn, user_id)
        held = {(a.badge_id, a.tier) for a in awards}
        badges = []
        for award in awards:
            info = catalog.get(award.badge_id)
            badges.append({
                "award_id": award.award_id,
                "badge_id": award.badge_id,
                "name": info.name if info else award.badge_id,
                "description": info.description if info else "",
                "tier": award.tier,
                "occurrence": award.occurrence,
                "awarded_at": _when(award.awarded_at),
                "event_id": award.event_id,
                "rarity": holders.rarity(award.badge_id, award.tier),
                "points": award.points,
            })
        progress = []
        for row in db.visible_progress(catalog, held, progress_rows):
            info = catalog.get(row.badge_id)
            progress.append({
                "badge_id": row.badge_id,
                "name": info.name if info else row.badge_id,
                "tier": row.tier,
                "progress": _number(row.progress),
                "target": _number(row.target),
                "remaining": _number(max(0.0, row.target - row.progress)),
            })
        started = {b["badge_id"] for b in badges} | {p["badge_id"] for p in progress}
        locked = [
            {"badge_id": info.id, "name": info.name, "description": info.description,
             "tiers": [t for t in _tier_names(info) if t is not None],
             "rarity": holders.rarity(info.id, any_tier=True)}
            for info in catalog.values() if not info.hidden and info.id not in started and not _is_level(info)
        ]
        points = sum(a.points for a in awards)
        level, next_level = db.level_standing(catalog, {a.badge_id for a in awards}, points)
        return {
            "user_id": user_id,
            "points": points,
            "level": level,
            "next_level": next_level,
            "badges": badges,
            "progress": progress,
            "locked": locked,
        }

    def badges(self, include_hidden: bool) -> list[dict[str, Any]]:
        """``GET /v1/badges``: every badge with holders and rarity; hidden ones without name and description."""
        with self.engine.connect() as conn:
            catalog = self.catalog(conn)
            holders = db.holders(conn)
        out = []
        for info in catalog.values():
            withheld = info.hidden and not include_hidden
            tiers = [
                {"tier": t.get("tier"), "target": t.get("target"),
                 "holders": holders.by_tier.get((info.id, t.get("tier")), 0),
                 "rarity": holders.rarity(info.id, t.get("tier"))}
                for t in info.tiers or []
            ]
            out.append({
                "badge_id": info.id,
                "kind": "level" if _is_level(info) else "badge",
                "name": None if withheld else info.name,
                "description": None if withheld else info.description,
                "hidden": info.hidden,
                "repeatable": info.repeatable,
                "tiers": tiers,
                "holders": holders.by_badge.get(info.id, 0),
                "rarity": holders.rarity(info.id, any_tier=True),
            })
        return out

    def leaderboard(self, *, by: RankBy = "badges", period: PeriodName = "all", at: datetime | None = None,
                    badge_id: str | None = None, since: datetime | None = None, until: datetime | None = None,
                    limit: int = 10, around: str | None = None) -> list[dict[str, Any]] | None:
        """``GET /v1/leaderboard``: None when ``around`` names a user who is not on this leaderboard.

        All time, or the day, ISO week or month (UTC) containing ``at`` (default: now), optionally one
        badge all time: ranked by the database from the sink's aggregates. A ``since``/``until`` window,
        or one badge within a period, is ranked from the awards themselves (``Ranking``, cached).
        """
        starts = None if period == "all" else period_start(period, at or datetime.now(UTC))
        if since is not None or until is not None or (badge_id is not None and starts is not None):
            if period != "all" and starts is not None:  # one badge within a period: the period's bounds
                since, until = period_bounds(period, starts)
            with self.engine.connect() as conn:
                ranking = self.ranking(conn, by, badge_id, since, until)
            return ranking.rows(limit, around)
        board = db.Board(by=by, period=None if period == "all" else period, starts=starts, badge_id=badge_id)
        with self.engine.connect() as conn:
            placed = db.top(conn, board, limit) if around is None else db.around(conn, board, around, limit)
        return None if placed is None else [p.as_dict() for p in placed]

    def award(self, award_id: str) -> dict[str, Any] | None:
        """``GET /v1/awards/{award_id}``: the award and its evidence, revoked or not; None when unknown."""
        with self.engine.connect() as conn:
            award = db.award_evidence(conn, award_id)
            catalog = self.catalog(conn) if award is not None else {}
        if award is None:
            return None
        info = catalog.get(award.badge_id)
        return {
            "award_id": award.award_id,
            "user_id": award.user_id,
            "badge_id": award.badge_id,
            "name": info.name if info else award.badge_id,
            "tier": award.tier,
            "occurrence": award.occurrence,
            "awarded_at": _when(award.awarded_at),
            "event_id": award.event_id,
            "topic": award.source_topic,
            "partition": award.source_partition,
            "offset": award.source_offset,
            "catalog_version": award.catalog_version,
            "metadata": award.metadata,
            "points": award.points,
            "backfill": award.backfill,
            "revoked_at": _when(award.revoked_at),
        }


__all__ = ["PeriodName", "RankBy", "Ranking", "Views"]
