"""The read aggregates (``streams.db.aggregates``) always equal a recount from the rows, on SQLite and PostgreSQL.

A property test drives the sink's write (``db.write_records``, what step 2 runs in one transaction)
with seeded batches of grants, revocations and progress, each batch possibly delivered twice; the
replay's ``--apply``/``--revoke`` goes through the same ``db.upsert_awards``. After every batch, every
aggregate table is compared with a recount written here from ``user_badges`` and
``user_badge_progress``. Migration 0004 is checked the same way on rows written before it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection, Engine

from schemas.records import AwardRecord, ProgressRecord, make_award_id
from streams import db

T0 = datetime(2026, 12, 28, 22, 0, tzinfo=UTC)  # a Monday near a month's and a year's end

# (badge, tier, occurrence) a user can hold: untiered, two tiers of one badge, a repeatable badge.
SLOTS = [("first_quiz", None, 1), ("quiz_master", "bronze", 1), ("quiz_master", "silver", 1),
         ("recruiter", None, 1), ("recruiter", None, 2)]
USERS = ["u-0", "u-1", "u-2"]


def recount(conn: Connection) -> dict[str, Any]:
    """Every aggregate, computed the slow and obvious way from the award and progress rows."""
    held = [row for row in conn.execute(sa.select(db.user_badges)) if row.revoked_at is None]
    known = set(conn.execute(sa.select(db.user_badges.c.user_id)).scalars()) | set(
        conn.execute(sa.select(db.user_badge_progress.c.user_id)).scalars())
    totals = {user: (0, 0) for user in known}
    periods: dict[tuple[str, date, str], tuple[int, int]] = defaultdict(lambda: (0, 0))
    holdings: dict[tuple[str, str, str], tuple[int, int]] = defaultdict(lambda: (0, 0))

    def add(table: dict[Any, tuple[int, int]], key: Any, points: int) -> None:
        awards, total = table[key]
        table[key] = (awards + 1, total + points)

    for row in held:
        add(totals, row.user_id, row.points)
        day = row.awarded_at.astimezone(UTC).date()
        for period, starts in (("day", day), ("week", day - timedelta(days=day.isoweekday() - 1)),
                               ("month", date(day.year, day.month, 1))):
            add(periods, (period, starts, row.user_id), row.points)
        add(holdings, (row.user_id, row.badge_id, row.tier), row.points)
        if row.tier:
            add(holdings, (row.user_id, row.badge_id, ""), row.points)
    holders = Counter((badge, tier) for _user, badge, tier in holdings)
    # Users per score on every board, by awards and by points (scores of 0 are on no board).
    boards = [(("all", ""), value) for value in totals.values()]
    boards += [((period, starts.isoformat()), value) for (period, starts, _user), value in periods.items()]
    boards += [(("badge", badge), value) for (_user, badge, tier), value in holdings.items() if tier == ""]
    scores = Counter((board, key, by, score) for (board, key), (awards, points) in boards
                     for by, score in (("badges", awards), ("points", points)) if score > 0)
    return {"user_totals": totals, "period_scores": dict(periods), "user_holdings": dict(holdings),
            "badge_holders": dict(holders), "score_counts": dict(scores), "known_users": len(known)}


def stored(conn: Connection) -> dict[str, Any]:
    def table(t: sa.Table, keys: list[str], values: list[str]) -> dict[Any, Any]:
        out = {}
        for row in conn.execute(sa.select(t)).mappings():
            key = tuple(row[k] for k in keys)
            value = tuple(int(row[v]) for v in values)
            out[key[0] if len(key) == 1 else key] = value[0] if len(value) == 1 else value
        return out

    return {
        "user_totals": table(db.user_totals, ["user_id"], ["awards", "points"]),
        "period_scores": table(db.period_scores, ["period", "starts", "user_id"], ["awards", "points"]),
        "user_holdings": table(db.user_holdings, ["user_id", "badge_id", "tier"], ["awards", "points"]),
        "badge_holders": table(db.badge_holders, ["badge_id", "tier"], ["holders"]),
        "score_counts": table(db.score_counts, ["board", "board_key", "ranked_by", "score"], ["users"]),
        "known_users": int(conn.execute(sa.select(db.read_counters.c.value)
                                        .where(db.read_counters.c.name == "known_users")).scalar_one()),
    }


def record(user: str, slot: int, *, hours: int, points: int, kind: str = "award") -> AwardRecord:
    badge, tier, occurrence = SLOTS[slot]
    return AwardRecord(award_id=make_award_id(user, badge, tier, occurrence), user_id=user, badge_id=badge, tier=tier,
                       occurrence=occurrence, awarded_at=T0 + timedelta(hours=hours), event_id=f"e-{user}-{slot}",
                       catalog_version="v1", metadata={}, kind=kind, points=points)  # type: ignore[arg-type]


# One operation: (user, slot, revoke?) or progress for a user, which only makes that user known.
operation = st.one_of(
    st.tuples(st.sampled_from(USERS), st.integers(0, len(SLOTS) - 1), st.booleans()),
    st.tuples(st.sampled_from([*USERS, "u-progress-only"]), st.none(), st.none()),
)


class TestAggregatesEqualARecount:
    """Every test runs on SQLite and on PostgreSQL (``database_url`` is parametrised)."""

    @seed(22)
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        batches=st.lists(st.tuples(st.lists(operation, min_size=1, max_size=6), st.booleans()),
                         min_size=1, max_size=5),
        # What each (user, slot) award carries, fixed for the example: hours after T0 (days, weeks and
        # months apart) and points. Redeliveries repeat the same record, as Kafka would.
        hours=st.lists(st.integers(0, 24 * 40), min_size=len(USERS) * len(SLOTS), max_size=len(USERS) * len(SLOTS)),
        points=st.lists(st.sampled_from([0, 5, 10]), min_size=len(USERS) * len(SLOTS),
                        max_size=len(USERS) * len(SLOTS)),
    )
    def test_after_any_batches_with_redeliveries_and_revocations(
        self, engine: Engine, batches: list[tuple[list[tuple[str, int | None, bool | None]], bool]],
        hours: list[int], points: list[int],
    ) -> None:
        # One database for all examples: the aggregates must equal the recount of everything written so far.
        for operations, redelivered in batches:
            awards, progress = [], []
            for user, slot, revoke in operations:
                if slot is None:
                    progress.append(ProgressRecord(user_id=user, badge_id="explorer", tier=None, progress=1, target=5,
                                                   updated_at=T0))
                    continue
                index = USERS.index(user) * len(SLOTS) + slot
                awards.append(record(user, slot, hours=hours[index], points=points[index],
                                     kind="revocation" if revoke else "award"))
            for _delivery in range(2 if redelivered else 1):
                with engine.begin() as conn:
                    db.write_records(conn, awards, progress)
                with engine.connect() as conn:
                    assert stored(conn) == recount(conn)

    def test_a_revocation_of_a_held_award_and_its_redelivery(self, engine: Engine) -> None:
        grant = record("u-1", 1, hours=1, points=10)  # quiz_master bronze
        with engine.begin() as conn:
            db.write_records(conn, [grant, record("u-2", 2, hours=30, points=5)], [])
        with engine.connect() as conn:
            before = stored(conn)
        assert before["badge_holders"] == {("quiz_master", "bronze"): 1, ("quiz_master", "silver"): 1,
                                           ("quiz_master", ""): 2}
        assert before["user_totals"] == {"u-1": (1, 10), "u-2": (1, 5)}
        assert before["period_scores"][("day", date(2026, 12, 28), "u-1")] == (1, 10)
        assert before["period_scores"][("month", date(2026, 12, 1), "u-2")] == (1, 5)
        assert before["period_scores"][("day", date(2026, 12, 30), "u-2")] == (1, 5)  # 22:00 + 30 h
        for _redelivery in range(2):
            with engine.begin() as conn:
                db.upsert_awards(conn, [grant.model_copy(update={"kind": "revocation", "points": 0})])
            with engine.connect() as conn:
                after = stored(conn)
                assert after == recount(conn)
        assert after["badge_holders"] == {("quiz_master", "silver"): 1, ("quiz_master", ""): 1}
        assert after["user_totals"] == {"u-1": (0, 0), "u-2": (1, 5)}  # u-1 stays a known user
        assert ("day", date(2026, 12, 28), "u-1") not in after["period_scores"]
        assert after["known_users"] == 2

    def test_migration_0004_builds_them_from_the_rows_before_it(self, engine: Engine, database_url: str) -> None:
        fresh = db.make_engine(database_url)
        try:
            db.upgrade(fresh, "0003")
        finally:
            fresh.dispose()
        with engine.begin() as conn:
            # Rows as a sink before 0004 wrote them: straight into the tables, no aggregates.
            for table in ("read_counters", "score_counts", "badge_holders", "user_holdings", "period_scores",
                          "user_totals"):
                conn.execute(sa.text(f"DROP TABLE {table}"))
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0003'"))
            rows = [record(user, slot, hours=17 * (slot + 1) + 5 * index, points=5 * slot)
                    for index, user in enumerate(USERS) for slot in range(len(SLOTS))]
            conn.execute(db.user_badges.insert(), [
                {"award_id": r.award_id, "user_id": r.user_id, "badge_id": r.badge_id, "tier": r.tier or "",
                 "occurrence": r.occurrence, "awarded_at": r.awarded_at, "event_id": r.event_id,
                 "evaluation_metadata": {}, "catalog_version": "v1", "points": r.points,
                 "revoked_at": T0 if r.user_id == "u-2" and r.badge_id == "recruiter" else None} for r in rows])
            conn.execute(db.user_badge_progress.insert(), [
                {"user_id": "u-progress-only", "badge_id": "explorer", "tier": "", "progress": 1, "target": 5,
                 "updated_at": T0}])
        db.upgrade(engine)
        with engine.connect() as conn:
            built = stored(conn)
            assert built == recount(conn)
        assert built["known_users"] == 4 and built["user_totals"]["u-progress-only"] == (0, 0)
        assert built["badge_holders"][("recruiter", "")] == 2
