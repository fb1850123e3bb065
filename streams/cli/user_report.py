"""The query surface for people: ``badgestream user USER_ID`` and ``badgestream leaderboard``, from the database.

What a user sees: their points and level (and how far the next level is), every award (badge
name, tier, points, when, the event that earned it), then progress towards what is not yet
earned ("quiz_master silver: 37/50"). Hidden badges appear only once
earned: their progress is not listed before. Revoked awards stay listed, marked ``revoked`` with
the time, because the history is what support staff look for; they do not count as held (nor on
the leaderboard), and the badge's progress shows again.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from streams import db
from streams.console import table
from streams.settings import mask_url, settings_for


def _database_url(args: argparse.Namespace) -> str:
    return settings_for(args).database_url_value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def build_report(conn: Connection, user_id: str) -> dict[str, Any]:
    """The user's awards and visible progress as plain data (the ``--json`` output)."""
    catalog = db.load_badges(conn)
    awards = db.user_awards(conn, user_id)
    held = {(a.badge_id, a.tier) for a in awards if a.revoked_at is None}

    badges = []
    for award in awards:
        info = catalog.get(award.badge_id)
        badges.append({
            "badge_id": award.badge_id,
            "name": info.name if info else award.badge_id,
            "tier": award.tier,
            "occurrence": award.occurrence,
            "awarded_at": _when(award.awarded_at),
            "event_id": award.event_id,
            "award_id": award.award_id,
            "revoked_at": _when(award.revoked_at),
            "backfill": award.backfill,
            "catalog_version": award.catalog_version,
            "metadata": award.metadata,
            "points": award.points,
        })

    progress = []
    for row in db.visible_progress(catalog, held, db.user_progress(conn, user_id)):
        info = catalog.get(row.badge_id)
        progress.append({
            "badge_id": row.badge_id,
            "name": info.name if info else row.badge_id,
            "tier": row.tier,
            "progress": row.progress,
            "target": row.target,
            "updated_at": _when(row.updated_at),
        })
    points = sum(award.points for award in awards if award.revoked_at is None)
    level, next_level = db.level_standing(catalog, {badge_id for badge_id, _tier in held}, points)
    return {
        "user_id": user_id,
        "held": sum(1 for b in badges if b["revoked_at"] is None),
        "points": points,
        "level": level,
        "next_level": next_level,
        "badges": badges,
        "progress": progress,
    }




def render_text(report: dict[str, Any]) -> str:
    """The report as a readable table; times are UTC (event time of the deciding event)."""
    badges = report["badges"]
    revoked = len(badges) - report["held"]
    title = f"User {report['user_id']}: {report['held']} badge{'s' if report['held'] != 1 else ''}"
    lines = [title + (f" ({revoked} revoked)" if revoked else "")]
    if report["points"] or report["level"] or report["next_level"]:  # a catalog with points or levels
        standing = f"Points: {report['points']}"
        if report["level"] is not None:
            standing += f", level {report['level']['name']}"
        if report["next_level"] is not None:
            upcoming = report["next_level"]
            standing += f"; next level {upcoming['name']} at {upcoming['at']} ({upcoming['remaining']} to go)"
        lines.append(standing)
    with_points = any(badge["points"] for badge in badges)
    if badges:
        rows = []
        for badge in badges:
            name = badge["name"] + (f" #{badge['occurrence']}" if badge["occurrence"] > 1 else "")
            notes = []
            if badge["revoked_at"]:
                notes.append(f"revoked {badge['revoked_at'][:19].replace('T', ' ')}")
            if badge["backfill"]:
                notes.append("backfill")
            points = [str(badge["points"])] if with_points else []
            rows.append([name, badge["tier"] or "-", *points, badge["awarded_at"][:19].replace("T", " "),
                         badge["event_id"], ", ".join(notes)])
        header = ["BADGE", "TIER", *(["POINTS"] if with_points else []), "AWARDED (UTC)", "EVENT", "NOTE"]
        lines += ["", table(header, rows)]
    else:
        lines += ["", "No badges yet."]
    if report["progress"]:
        lines += ["", "Progress"]
        for row in report["progress"]:
            label = row["badge_id"] + (f" {row['tier']}" if row["tier"] else "")
            lines.append(f"  {label}: {_number(row['progress'])}/{_number(row['target'])}")
    return "\n".join(lines)


def user_command(args: argparse.Namespace) -> int:
    """``badgestream user USER_ID [--json] [--database-url URL]``."""
    engine = db.make_engine(_database_url(args))
    try:
        db.require_schema(engine)
        with engine.connect() as conn:
            report = build_report(conn, args.user_id)
    finally:
        engine.dispose()
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def leaderboard_command(args: argparse.Namespace) -> int:
    """``badgestream leaderboard [--limit N] [--json] [--database-url URL]``: users by badges held."""
    engine = db.make_engine(_database_url(args))
    try:
        db.require_schema(engine)
        with engine.connect() as conn:
            ranking = db.leaderboard(conn, limit=args.limit)
    finally:
        engine.dispose()
    if args.json:
        entries = [{"rank": rank, "user_id": user_id, "badges": count}
                   for rank, (user_id, count) in enumerate(ranking, start=1)]
        print(json.dumps(entries, indent=2))
    else:
        print(render_leaderboard(ranking))
    return 0


def render_leaderboard(ranking: list[tuple[str, int]]) -> str:
    """The ranking as a readable table (``badgestream leaderboard`` and ``badgestream up``)."""
    if not ranking:
        return "No badges awarded yet."
    rows = [[str(rank), user_id, str(count)] for rank, (user_id, count) in enumerate(ranking, start=1)]
    return table(["RANK", "USER", "BADGES"], rows)


def db_command(args: argparse.Namespace) -> int:
    """``badgestream db upgrade [--database-url URL]``: migrate the schema to the latest revision."""
    url = _database_url(args)
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        revision = db.current_revision(engine)
    finally:
        engine.dispose()
    print(f"database {mask_url(url)} is at revision {revision}")
    return 0
