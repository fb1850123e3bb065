"""Every write of the award database: idempotent upserts of awards and progress, and the deployed catalog.

Awards are inserted once per ``award_id`` (a duplicate is success), revocations only ever set
``revoked_at``, and progress only moves to a newer ``updated_at``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from schemas.catalog import Badge, Catalog, Level
from schemas.records import AwardRecord, ProgressRecord, newest_progress
from streams.db.aggregates import HeldChange, apply_changes, note_users
from streams.db.tables import NO_TIER, badges, user_badge_progress, user_badges
from streams.db.upsert import dialect_insert, upsert, upsert_returning

log = logging.getLogger(__name__)


def _award_row(record: AwardRecord, revoked_at: datetime | None) -> dict[str, Any]:
    return {
        "award_id": record.award_id,
        "user_id": record.user_id,
        "badge_id": record.badge_id,
        "tier": record.tier or NO_TIER,
        "occurrence": record.occurrence,
        "awarded_at": record.awarded_at,
        "event_id": record.event_id,
        "evaluation_metadata": record.metadata,
        "backfill": record.backfill,
        "revoked_at": revoked_at,
        "catalog_version": record.catalog_version,
        "source_topic": record.source.topic if record.source else None,
        "source_partition": record.source.partition if record.source else None,
        "source_offset": record.source.offset if record.source else None,
        "points": record.points,
    }


@dataclass(frozen=True)
class WriteResult:
    """What one transaction changed; counts are rows actually inserted or updated, not records seen."""

    awards_inserted: int = 0
    revocations_applied: int = 0
    progress_written: int = 0


_HELD_CHANGE = (user_badges.c.user_id, user_badges.c.badge_id, user_badges.c.tier, user_badges.c.awarded_at,
                user_badges.c.points)


def _held_change(record: AwardRecord) -> HeldChange:
    """What a grant this transaction inserted holds (as ``_award_row`` stores it)."""
    return HeldChange(record.user_id, record.badge_id, record.tier or NO_TIER, record.awarded_at, record.points)


def _revoke_held(conn: Connection, award_ids: Sequence[str], revoked_at: datetime) -> dict[str, HeldChange]:
    """Set ``revoked_at`` on those of ``award_ids`` still held; returns what they held, by award id."""
    changed: dict[str, HeldChange] = {}
    for start in range(0, len(award_ids), 1000):  # bounded IN lists
        chunk = award_ids[start:start + 1000]
        for row in conn.execute(user_badges.update()
                                .where(user_badges.c.award_id.in_(chunk), user_badges.c.revoked_at.is_(None))
                                .values(revoked_at=revoked_at)
                                .returning(user_badges.c.award_id, *_HELD_CHANGE)):
            changed[row.award_id] = HeldChange(row.user_id, row.badge_id, row.tier, row.awarded_at, row.points)
    return changed


def upsert_awards(conn: Connection, awards: Iterable[AwardRecord], *, now: datetime | None = None) -> WriteResult:
    """Insert grants once (a duplicate award is success) and apply revocations, inside the caller's transaction,
    moving the read aggregates (``streams.db.aggregates``) by exactly the rows that changed.

    The result does not depend on the order of the records: a grant never clears ``revoked_at``,
    and a revocation sets it only when it is still unset (the first revocation's time is kept).
    A revocation of an award the database has not seen yet inserts the row already revoked, so the
    history is complete whichever arrives first. ``revoked_at`` is the time the sink applied the
    revocation (``now``): a revocation record carries the original award, not a revocation time.
    """
    grants: dict[str, AwardRecord] = {}
    revocations: dict[str, AwardRecord] = {}
    for record in awards:
        target = revocations if record.kind == "revocation" else grants
        target.setdefault(record.award_id, record)
    if not (grants or revocations):
        return WriteResult()
    note_users(conn, [record.user_id for record in (*grants.values(), *revocations.values())])
    gained: list[HeldChange] = []
    lost: list[HeldChange] = []
    inserted = revoked = 0
    if grants:
        # Sorted keys give concurrent writers the same lock order, so two sinks cannot deadlock.
        rows = [_award_row(grants[key], None) for key in sorted(grants)]
        # Only the ids come back (no datetime to convert per row): what the rows hold is in the records.
        gained = [_held_change(grants[row.award_id]) for row in upsert_returning(
            conn, user_badges, rows, lambda insert: insert.on_conflict_do_nothing(), [user_badges.c.award_id])]
        inserted = len(gained)
    if revocations:
        revoked_at = now or datetime.now(UTC)
        keys = sorted(revocations)
        # 1. held awards become revoked; 2. awards never seen are inserted revoked; 3. an award another
        # writer inserted between 1 and 2 (its insert made ours skip) is revoked now that it is visible.
        reached = _revoke_held(conn, keys, revoked_at)
        rows = [_award_row(revocations[key], revoked_at) for key in keys if key not in reached]
        inserted_revoked = {row.award_id for row in upsert_returning(
            conn, user_badges, rows, lambda insert: insert.on_conflict_do_nothing(), [user_badges.c.award_id])}
        late = [row["award_id"] for row in rows if row["award_id"] not in inserted_revoked]
        if late:
            reached |= _revoke_held(conn, late, revoked_at)
        lost = list(reached.values())
        revoked = len(lost) + len(inserted_revoked)
    apply_changes(conn, gained, lost)
    return WriteResult(awards_inserted=inserted, revocations_applied=revoked)


def latest_progress(records: Iterable[ProgressRecord]) -> list[ProgressRecord]:
    """The newest record per (user, badge, tier), later records winning ties, sorted by key.

    One INSERT ... ON CONFLICT DO UPDATE may not touch a row twice (PostgreSQL refuses it), and
    the newest value is the only one that could survive anyway.
    """
    newest = newest_progress(records, lambda record: (record.user_id, record.badge_id, record.tier or NO_TIER))
    return [newest[key] for key in sorted(newest)]


def upsert_progress(conn: Connection, records: Iterable[ProgressRecord]) -> WriteResult:
    """Keep the latest progress per (user, badge, tier): a row only ever moves to a newer-or-equal ``updated_at``.

    Its users become known users (``streams.db.aggregates.note_users``)."""
    rows = [
        {
            "user_id": record.user_id,
            "badge_id": record.badge_id,
            "tier": record.tier or NO_TIER,
            "progress": record.progress,
            "target": record.target,
            "updated_at": record.updated_at,
        }
        for record in latest_progress(records)
    ]
    note_users(conn, [str(row["user_id"]) for row in rows])  # a progress row makes a user known (rarity's denominator)
    written = upsert(conn, user_badge_progress, rows, lambda insert: insert.on_conflict_do_update(
        index_elements=[user_badge_progress.c.user_id, user_badge_progress.c.badge_id, user_badge_progress.c.tier],
        set_={
            "progress": insert.excluded.progress,
            "target": insert.excluded.target,
            "updated_at": insert.excluded.updated_at,
        },
        where=insert.excluded.updated_at >= user_badge_progress.c.updated_at,  # schemas.records.supersedes
    ))
    return WriteResult(progress_written=written)


def write_records(
    conn: Connection, awards: Sequence[AwardRecord], progress: Sequence[ProgressRecord], *, now: datetime | None = None
) -> WriteResult:
    """Awards, revocations and progress of one batch, in the caller's (single) transaction."""
    award_result = upsert_awards(conn, awards, now=now)
    progress_result = upsert_progress(conn, progress)
    return WriteResult(award_result.awards_inserted, award_result.revocations_applied, progress_result.progress_written)


# --- the catalog ------------------------------------------------------------------------------

def catalog_rows(catalog: Catalog | Mapping[str, Any], *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Rows of the ``badges`` table: every badge, and every level (levels share the badge id space
    and are awarded like badges, so their rows name them for readers). A plain mapping (the YAML's
    data) is read into the catalog model first."""
    if not isinstance(catalog, Catalog):
        catalog = Catalog.model_validate(catalog)
    updated_at = now or datetime.now(UTC)

    def row(item: Badge | Level, **fields: Any) -> dict[str, Any]:
        return {"id": item.id, "name": item.display_name, "description": item.description, **fields,
                "definition": item.model_dump(mode="json", by_alias=True, exclude_none=True),
                "catalog_version": catalog.catalog_version, "updated_at": updated_at}

    rows = []
    for badge in catalog.badges:
        rule = badge.rule
        tiers = rule.tier_targets
        rows.append(row(badge, trigger_events=list(badge.on), rule_kind=rule.kind, target=rule.target,
                        tiers=None if tiers is None else [{"tier": name, "target": float(target)}
                                                          for name, target in tiers],
                        hidden=badge.hidden, repeatable=badge.repeatable))
    for level in catalog.levels:
        rows.append(row(level, trigger_events=[], rule_kind="level", target=float(level.at), tiers=None,
                        hidden=False, repeatable=False))
    return rows


def write_catalog(engine: Engine | Connection, catalog: Catalog | Mapping[str, Any]) -> int:
    """Upsert every badge and level of ``catalog`` into ``badges`` by id, recording ``catalog_version``;
    returns the count.

    Badges no longer in the catalog keep their row (and their old ``catalog_version``) because
    awards still refer to them. Called by the sink at start-up (the worker does not touch the database).
    """
    rows = catalog_rows(catalog)
    if not rows:
        return 0

    def write(conn: Connection) -> None:
        insert = dialect_insert(conn, badges)
        stmt = insert.on_conflict_do_update(
            index_elements=[badges.c.id],
            set_={column: insert.excluded[column] for column in rows[0] if column != "id"},
        )
        conn.execute(stmt, rows)

    if isinstance(engine, Connection):
        write(engine)
    else:
        with engine.begin() as conn:
            write(conn)
    return len(rows)
