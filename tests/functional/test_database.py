"""Contract tests of the award database, run once against SQLite and once against PostgreSQL.

One test class, parametrised through the ``database_url`` fixture: migrations from empty,
idempotent awards, order-independent revocations, progress that never moves backwards, the
catalog table, and the ``badgestream user`` / ``leaderboard`` output built from it.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from schemas.records import AwardRecord, EventSource, ProgressRecord, make_award_id
from streams import db
from streams.cli.main import main as cli_main
from streams.cli.user_report import build_report, render_text

T0 = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)

CATALOG: dict[str, Any] = {
    "catalog_version": "2026-11-26",
    "badges": [
        {"id": "first_quiz", "name": "First Quiz", "description": "Complete your first quiz.",
         "on": ["quiz_completed"], "rule": {"count": 1}},
        {"id": "quiz_master", "name": "Quiz Master", "on": ["quiz_completed"],
         "rule": {"tiers": {"bronze": 10, "silver": 50, "gold": 100}}},
        {"id": "recruiter", "name": "Recruiter", "on": ["referral_signup"], "hidden": True, "repeatable": True,
         "rule": {"count": 3}},
        {"id": "secret_society", "name": "Secret Society", "on": ["user_logged_in"], "hidden": True,
         "rule": {"streak": {"days": 30}}},
    ],
}


def award(user: str = "u-1", badge: str = "first_quiz", tier: str | None = None, occurrence: int = 1, *,
          at: datetime = T0, event: str = "e-1", kind: str = "award", **extra: Any) -> AwardRecord:
    return AwardRecord(award_id=make_award_id(user, badge, tier, occurrence), user_id=user, badge_id=badge, tier=tier,
                       occurrence=occurrence, awarded_at=at, event_id=event, catalog_version="2026-11-26",
                       metadata={"progress": 1, "target": 1}, kind=kind, **extra)  # type: ignore[arg-type]


def progress(user: str = "u-1", badge: str = "quiz_master", tier: str | None = "silver", value: float = 1,
             target: float = 50, *, at: datetime = T0) -> ProgressRecord:
    return ProgressRecord(user_id=user, badge_id=badge, tier=tier, progress=value, target=target, updated_at=at)


def write(engine: Engine, awards: list[AwardRecord] = (), progress_records: list[ProgressRecord] = (),  # type: ignore[assignment]
          *, now: datetime | None = None) -> db.WriteResult:
    with engine.begin() as conn:
        return db.write_records(conn, list(awards), list(progress_records), now=now)


def _without_sqlite_index_order(conn: sa.Connection, diffs: list[Any]) -> list[Any]:
    """SQLite's reflection drops an index column's DESC, so a DESC index reads as removed and added again:
    there, such a pair counts as equal when the name and the columns match."""
    if conn.dialect.name != "sqlite":
        return diffs

    def columns(index: sa.Index) -> list[str]:
        return [getattr(getattr(e, "element", e), "name", str(e)) for e in index.expressions]

    removed = {d[1].name: columns(d[1]) for d in diffs if d[0] == "remove_index"}
    added = {d[1].name: columns(d[1]) for d in diffs if d[0] == "add_index"}
    same = {name for name in removed if added.get(name) == removed[name]}
    return [d for d in diffs if not (d[0] in ("remove_index", "add_index") and d[1].name in same)]


class TestDatabaseContract:
    """Every test runs on SQLite and on PostgreSQL (``database_url`` is parametrised)."""

    def test_migrations_from_empty_match_the_models(self, database_url: str) -> None:
        engine = db.make_engine(database_url)
        try:
            assert db.current_revision(engine) is None
            db.upgrade(database_url)
            db.upgrade(database_url)  # a second start is a no-op
            assert db.current_revision(engine) == "0004"
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                assert _without_sqlite_index_order(conn, compare_metadata(context, db.metadata)) == []
                assert db.count_rows(conn) == {"badges": 0, "user_badges": 0, "user_badge_progress": 0}
        finally:
            engine.dispose()

    def test_rows_written_before_0002_read_as_unknown_source_and_no_points(self, database_url: str) -> None:
        engine = db.make_engine(database_url)
        try:
            db.upgrade(engine, "0001")
            with engine.begin() as conn:
                conn.execute(sa.text(
                    "INSERT INTO user_badges (award_id, user_id, badge_id, tier, occurrence, awarded_at, event_id, "
                    "evaluation_metadata, backfill, catalog_version) VALUES ('a-1', 'u-1', 'first_quiz', '', 1, "
                    "'2026-11-21 09:30:00+00:00', 'e-1', '{}', false, 'v1')"
                ))
            db.upgrade(engine)
            assert db.current_revision(engine) == "0004"
            with engine.connect() as conn:
                row = conn.execute(sa.select(db.user_badges)).one()
            assert (row.source_topic, row.source_partition, row.source_offset, row.points) == (None, None, None, 0)
            write(engine, [award(user="u-2").model_copy(update={
                "source": EventSource(topic="user-events", partition=3, offset=41), "points": 25})])
            with engine.connect() as conn:
                row = conn.execute(sa.select(db.user_badges).where(db.user_badges.c.user_id == "u-2")).one()
            assert (row.source_topic, row.source_partition, row.source_offset, row.points) == ("user-events", 3, 41, 25)
        finally:
            engine.dispose()

    def test_awards_are_written_once(self, engine: Engine) -> None:
        batch = [award(), award(badge="quiz_master", tier="bronze", event="e-10"), award(user="u-2")]
        assert write(engine, batch).awards_inserted == 3
        assert write(engine, batch).awards_inserted == 0  # the same batch delivered again
        assert write(engine, [*batch, *batch]).awards_inserted == 0  # and duplicated within a batch
        with engine.connect() as conn:
            assert db.count_rows(conn)["user_badges"] == 3
            got = db.user_awards(conn, "u-1")
        assert [(a.badge_id, a.tier, a.event_id) for a in got] == [("first_quiz", None, "e-1"),
                                                                   ("quiz_master", "bronze", "e-10")]
        assert got[0].awarded_at == T0 and got[0].awarded_at.tzinfo is not None
        assert got[0].metadata == {"progress": 1, "target": 1}

    def test_untiered_award_is_unique_despite_the_null_tier(self, engine: Engine) -> None:
        # A NULL tier would let the same (user, badge, occurrence) in twice: '' is stored instead.
        write(engine, [award()])
        forged = award().model_copy(update={"award_id": "someone-elses-id"})
        assert write(engine, [forged]).awards_inserted == 0
        with engine.connect() as conn:
            tiers = conn.execute(sa.select(db.user_badges.c.tier)).scalars().all()
        assert tiers == [db.NO_TIER]

    def test_repeatable_occurrences_are_distinct_awards(self, engine: Engine) -> None:
        assert write(engine, [award(badge="recruiter", occurrence=k, event=f"e-{k}") for k in (1, 2, 3)]) \
            .awards_inserted == 3

    def test_revocation_sets_revoked_at_and_never_deletes(self, engine: Engine) -> None:
        write(engine, [award()])
        revoked_at = T0 + timedelta(days=3)
        assert write(engine, [award(kind="revocation")], now=revoked_at).revocations_applied == 1
        # Redelivered revocation and redelivered grant change nothing: the first revocation time stays.
        assert write(engine, [award(kind="revocation"), award()], now=revoked_at + timedelta(days=1)) \
            == db.WriteResult()
        with engine.connect() as conn:
            (row,) = db.user_awards(conn, "u-1")
            assert db.leaderboard(conn) == []
        assert row.revoked_at == revoked_at

    def test_revocation_before_its_award_is_kept(self, engine: Engine) -> None:
        # Whichever arrives first, the end state is the same: the award is known and revoked.
        write(engine, [award(kind="revocation")], now=T0)
        write(engine, [award()])
        with engine.connect() as conn:
            (row,) = db.user_awards(conn, "u-1")
        assert row.revoked_at == T0 and row.event_id == "e-1"

    def test_progress_never_moves_backwards(self, engine: Engine) -> None:
        write(engine, progress_records=[progress(value=10, at=T0)])
        assert write(engine, progress_records=[progress(value=5, at=T0 - timedelta(seconds=1))]).progress_written == 0
        # Within one batch the newest wins whatever the order; the older one is not even tried.
        later = T0 + timedelta(minutes=5)
        write(engine, progress_records=[progress(value=30, at=later), progress(value=20, at=T0 + timedelta(minutes=1))])
        with engine.connect() as conn:
            (row,) = db.user_progress(conn, "u-1")
        assert (row.progress, row.updated_at) == (30, later)

    def test_progress_with_equal_time_takes_the_later_record(self, engine: Engine) -> None:
        write(engine, progress_records=[progress(value=3), progress(value=4)])
        write(engine, progress_records=[progress(value=7, target=10)])
        with engine.connect() as conn:
            (row,) = db.user_progress(conn, "u-1")
        assert (row.progress, row.target) == (7, 10)

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(values=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 1000)), min_size=1, max_size=12),
           cut=st.integers(0, 12))
    def test_progress_ends_at_the_newest_whatever_the_batching(
        self, engine: Engine, values: list[tuple[int, int]], cut: int
    ) -> None:
        user = f"u-{uuid.uuid4().hex[:8]}"  # one database for all examples: a fresh user each
        records = [progress(user=user, value=v, at=T0 + timedelta(seconds=s)) for s, v in values]
        write(engine, progress_records=records[cut:])
        write(engine, progress_records=records[:cut])
        newest_time = max(s for s, _ in values)
        with engine.connect() as conn:
            (row,) = db.user_progress(conn, user)
        assert row.updated_at == T0 + timedelta(seconds=newest_time)
        assert row.progress in {v for s, v in values if s == newest_time}

    def test_catalog_is_upserted_by_id_with_its_version(self, engine: Engine) -> None:
        assert db.write_catalog(engine, CATALOG) == 4
        changed = {**CATALOG, "catalog_version": "2026-12-01",
                   "badges": [{**CATALOG["badges"][0], "name": "First Quiz!"}]}
        db.write_catalog(engine, changed)
        with engine.connect() as conn:
            badges = db.load_badges(conn)
            row = conn.execute(sa.select(db.badges).where(db.badges.c.id == "quiz_master")).one()
        assert badges["first_quiz"].name == "First Quiz!"
        assert badges["first_quiz"].catalog_version == "2026-12-01"
        assert badges["quiz_master"].catalog_version == "2026-11-26"  # no longer listed, kept for its awards
        assert badges["recruiter"].hidden and badges["recruiter"].repeatable
        assert row.trigger_events == ["quiz_completed"] and row.rule_kind == "tiers"
        assert row.tiers == [{"tier": "bronze", "target": 10.0}, {"tier": "silver", "target": 50.0},
                             {"tier": "gold", "target": 100.0}]

    def test_the_demo_catalog_is_written_from_the_loaded_model(self, engine: Engine) -> None:
        from schemas.catalog import load_catalog
        from streams.settings import DEMO_CATALOG

        catalog = load_catalog(DEMO_CATALOG)
        assert db.write_catalog(engine, catalog) == len(catalog.badges) + len(catalog.levels)
        with engine.connect() as conn:
            badges = db.load_badges(conn)
            rows = {row.id: row for row in conn.execute(sa.select(db.badges))}
        assert set(badges) == {badge.id for badge in catalog.badges} | {level.id for level in catalog.levels}
        for level in catalog.levels:
            assert rows[level.id].rule_kind == "level" and rows[level.id].target == level.at
            assert badges[level.id].name == level.display_name
        assert {b.catalog_version for b in badges.values()} == {catalog.catalog_version}
        for badge in catalog.badges:
            assert rows[badge.id].hidden == badge.hidden and rows[badge.id].rule_kind == badge.rule.kind
            assert rows[badge.id].definition["id"] == badge.id
        tiered = [b for b in catalog.badges if b.rule.kind == "tiers"]
        assert tiered and all([t["tier"] for t in rows[b.id].tiers] == list(b.rule.tiers) for b in tiered)

    def test_user_report_shows_badges_progress_and_hides_unearned_hidden_badges(self, engine: Engine) -> None:
        db.write_catalog(engine, CATALOG)
        write(engine,
              [award(event="e-1"),
               award(badge="quiz_master", tier="bronze", at=T0 + timedelta(days=1), event="e-10"),
               award(badge="recruiter", at=T0 + timedelta(days=2), event="e-20"),
               award(badge="recruiter", occurrence=2, at=T0 + timedelta(days=3), event="e-23")],
              [progress(badge="quiz_master", tier="bronze", value=10, target=10),
               progress(badge="quiz_master", tier="silver", value=37, target=50),
               progress(badge="recruiter", tier=None, value=1, target=3),
               progress(badge="secret_society", tier=None, value=12, target=30)])
        write(engine, [award(badge="recruiter", occurrence=2, kind="revocation")], now=T0 + timedelta(days=4))
        with engine.connect() as conn:
            report = build_report(conn, "u-1")
        assert report["held"] == 3
        assert [(b["badge_id"], b["tier"], b["occurrence"], b["revoked_at"] is not None) for b in report["badges"]] \
            == [("first_quiz", None, 1, False), ("quiz_master", "bronze", 1, False), ("recruiter", None, 1, False),
                ("recruiter", None, 2, True)]
        assert [(p["badge_id"], p["tier"], p["progress"], p["target"]) for p in report["progress"]] \
            == [("quiz_master", "silver", 37, 50), ("recruiter", None, 1, 3)]  # secret_society: hidden, unearned
        text = render_text(report)
        assert "User u-1: 3 badges (1 revoked)" in text
        assert "quiz_master silver: 37/50" in text and "recruiter: 1/3" in text
        assert "secret_society" not in text and "Secret Society" not in text
        assert "Recruiter #2" in text and "revoked 2026-11-25 09:30:00" in text
        assert re.search(r"^Quiz Master +bronze +2026-11-22 09:30:00 +e-10$", text, re.MULTILINE)

    def test_user_report_shows_points_and_level(self, engine: Engine) -> None:
        catalog = {**CATALOG, "levels": [{"id": "rookie", "name": "Rookie", "at": 10},
                                         {"id": "pro", "name": "Pro", "at": 40}]}
        db.write_catalog(engine, catalog)
        write(engine, [award(points=5, event="e-1"),
                       award(badge="quiz_master", tier="bronze", points=7, at=T0 + timedelta(days=1), event="e-2"),
                       award(badge="rookie", at=T0 + timedelta(days=1), event="e-2"),
                       award(badge="recruiter", points=20, at=T0 + timedelta(days=2), event="e-3")])
        write(engine, [award(badge="recruiter", kind="revocation")], now=T0 + timedelta(days=3))
        with engine.connect() as conn:
            report = build_report(conn, "u-1")
        assert report["points"] == 12  # the revoked award's points no longer count
        assert report["level"] == {"id": "rookie", "name": "Rookie", "at": 10}
        assert report["next_level"] == {"id": "pro", "name": "Pro", "at": 40, "remaining": 28}
        text = render_text(report)
        assert "Points: 12, level Rookie; next level Pro at 40 (28 to go)" in text
        assert re.search(r"^Quiz Master +bronze +7 +2026-11-22 09:30:00 +e-2$", text, re.MULTILINE)
        assert re.search(r"^Rookie +- +0 +2026-11-22 09:30:00 +e-2$", text, re.MULTILINE)
        with engine.connect() as conn:
            newcomer = build_report(conn, "nobody")
        assert newcomer["points"] == 0 and newcomer["level"] is None and newcomer["next_level"]["remaining"] == 10

    def test_user_and_leaderboard_commands(
        self, engine: Engine, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        db.write_catalog(engine, CATALOG)
        write(engine, [award(), award(user="u-2"), award(user="u-2", badge="quiz_master", tier="bronze")],
              [progress(user="u-2", value=37)])
        assert cli_main(["user", "u-2", "--database-url", database_url]) == 0
        text = capsys.readouterr().out
        assert text.startswith("User u-2: 2 badges\n") and "quiz_master silver: 37/50" in text
        assert cli_main(["user", "u-2", "--json", "--database-url", database_url]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [b["name"] for b in report["badges"]] == ["First Quiz", "Quiz Master"]
        assert report["badges"][0]["awarded_at"] == "2026-11-21T09:30:00+00:00"
        assert cli_main(["user", "nobody", "--database-url", database_url]) == 0
        assert "User nobody: 0 badges\n\nNo badges yet." in capsys.readouterr().out
        assert cli_main(["leaderboard", "--limit", "1", "--json", "--database-url", database_url]) == 0
        assert json.loads(capsys.readouterr().out) == [{"rank": 1, "user_id": "u-2", "badges": 2}]
        assert cli_main(["leaderboard", "--database-url", database_url]) == 0
        assert capsys.readouterr().out.splitlines() == ["RANK  USER  BADGES", "1     u-2   2", "2     u-1   1"]

    def test_read_commands_refuse_an_unmigrated_database(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cli_main(["user", "u-1", "--database-url", database_url]) == 2
        err = capsys.readouterr().err
        assert "run `badgestream db upgrade`" in err
        assert cli_main(["db", "upgrade", "--database-url", database_url]) == 0
        out = capsys.readouterr().out
        assert "is at revision 0004" in out and "badgestream-local" not in out  # the password is masked
        assert cli_main(["user", "u-1", "--database-url", database_url]) == 0


def test_the_read_apis_postgresql_queries_are_bounded_by_its_statement_timeout(postgres_url: str) -> None:
    """The API's hot endpoints query on the event loop: a query that does not finish gives way."""
    from streams.api.app import _engine_options

    engine = db.make_engine(postgres_url, **_engine_options(postgres_url, statement_timeout_s=0.2))
    try:
        with engine.connect() as connection, pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            connection.execute(sa.text("SELECT pg_sleep(3)"))
        with engine.connect() as connection:  # and the next request is served
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
