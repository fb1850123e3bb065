"""Replay on the real broker: the live path (worker -> sink) and the replay path agree exactly,
a new badge is awarded retroactively, a rule change lists the right revocations, and applying
twice changes nothing the second time."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from schemas.catalog import load_catalog
from streams import db
from streams.replay.replay import apply_diff, database_awards, diff, replay
from streams.settings import Settings
from tests.integration import harness
from tests.integration.harness import StackConfig

pytestmark = pytest.mark.kafka


def settings_for(stack: StackConfig, catalog: Path) -> Settings:
    settings: Settings = stack.settings().model_copy(update={"catalog_path": catalog})
    return settings


def award_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM user_badges")).scalar_one())
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """The demo stream through the live worker and sink, once for the module."""
    import uuid

    tmp = tmp_path_factory.mktemp("replay")
    stack = StackConfig(bootstrap=kafka_bootstrap, suffix=f"r-{uuid.uuid4().hex[:8]}", data_dir=tmp,
                        partitions=2, database_url=f"sqlite:///{tmp / 'awards.db'}").create_topics()
    expected = len(harness.offline_awards(harness.DEMO_EVENTS))
    worker = harness.worker(stack).start()
    sink = harness.Process(["sink"], stack.env(), tmp / "sink.log").start()
    try:
        harness.produce_lines(stack.bootstrap, stack.input_topic, harness.read_events())
        assert stack.database_url is not None
        harness.wait_until(lambda: award_count(stack.database_url or "") >= expected, timeout=240,
                           what=f"{expected} awards in the database")
        assert worker.alive(), worker.log()[-3000:]
        assert sink.alive(), sink.log()[-3000:]
    finally:
        worker.stop()
        sink.stop()
    yield stack


def changed_catalog(tmp: Path, old: str, new: str, name: str) -> Path:
    text = harness.DEMO_CATALOG.read_text()
    assert old in text
    path = tmp / name
    path.write_text(text.replace(old, new))
    return path


def test_replay_reproduces_the_live_award_set_exactly(live: StackConfig) -> None:
    settings = settings_for(live, harness.DEMO_CATALOG)
    result = replay(settings, load_catalog(harness.DEMO_CATALOG), show_progress=False)
    awards_db = db.make_engine(settings.database_url_value)
    try:
        found = diff(result.awards, database_awards(awards_db))
    finally:
        awards_db.dispose()
    assert result.events == len(harness.read_events())
    assert len(result.awards) == award_count(settings.database_url_value)
    assert found.empty, found.as_json()
    # The same evidence: every award names the input position of its deciding event, as live.
    table = db.user_badges
    awards_db = db.make_engine(settings.database_url_value)
    try:
        with awards_db.connect() as conn:
            rows = conn.execute(sa.select(table.c.award_id, table.c.source_topic, table.c.source_partition,
                                          table.c.source_offset)).all()
    finally:
        awards_db.dispose()
    live_sources = {row.award_id: (row.source_topic, row.source_partition, row.source_offset) for row in rows}
    replayed = {aid: (a.source.topic, a.source.partition, a.source.offset) if a.source else None
                for aid, a in result.awards.items()}
    assert replayed == live_sources
    assert all(topic == live.input_topic for topic, _, _ in live_sources.values())


def test_a_new_badge_is_awarded_retroactively_and_apply_twice_changes_nothing(
    live: StackConfig, tmp_path: Path
) -> None:
    new_badge = (
        "\n  - id: regular_visitor\n    name: Regular Visitor\n    description: Log in ten times.\n"
        "    on: [user_logged_in]\n    rule: {count: 10}\n"
    )
    catalog_path = tmp_path / "catalog-new-badge.yaml"
    catalog_path.write_text(harness.DEMO_CATALOG.read_text().rstrip() + "\n" + new_badge)
    expected = [a for a in harness.offline_awards(harness.DEMO_EVENTS, catalog_path)
                if a["badge_id"] == "regular_visitor"]
    assert expected, "the demo stream should have users with ten logins"

    settings = settings_for(live, catalog_path)
    # A copy of the live database, so the other tests see the original.
    copy = tmp_path / "awards.db"
    copy.write_bytes(Path(settings.database_url_value.removeprefix("sqlite:///")).read_bytes())
    settings = settings.model_copy(update={"database_url": settings.database_url.__class__(f"sqlite:///{copy}")})
    awards_db = db.make_engine(settings.database_url_value)
    try:
        result = replay(settings, load_catalog(catalog_path), show_progress=False)
        found = diff(result.awards, database_awards(awards_db))
        assert sorted((a.user_id, a.badge_id, a.awarded_at.isoformat(), a.event_id) for a in found.added) == sorted(
            (a["user_id"], a["badge_id"], a["awarded_at"].replace("Z", "+00:00"), a["event_id"]) for a in expected
        )
        assert not found.no_longer_qualifying and not found.changed
        first = apply_diff(settings, awards_db, found, add=True, revoke=False)
        assert first == {"added": len(expected), "revoked": 0}
        with awards_db.connect() as conn:
            flags = conn.execute(sa.select(db.user_badges.c.backfill).where(
                db.user_badges.c.badge_id == "regular_visitor")).scalars().all()
        assert flags and all(flags)
        # Applying the same replay again writes nothing; a fresh diff is empty.
        second = apply_diff(settings, awards_db, found, add=True, revoke=False)
        assert second == {"added": 0, "revoked": 0}
        assert diff(result.awards, database_awards(awards_db)).empty
    finally:
        awards_db.dispose()


def test_a_rule_change_lists_exactly_the_awards_that_no_longer_qualify_and_revokes_them(
    live: StackConfig, tmp_path: Path
) -> None:
    catalog_path = changed_catalog(tmp_path, "rule: {tiers: {bronze: 5, silver: 15, gold: 30}}",
                                   "rule: {tiers: {bronze: 8, silver: 20, gold: 30}}", "catalog-harder.yaml")
    old = {a["award_id"]: a for a in harness.offline_awards(harness.DEMO_EVENTS)}
    new = {a["award_id"]: a for a in harness.offline_awards(harness.DEMO_EVENTS, catalog_path)}
    before, after = set(old), set(new)
    assert before - after, "the harder rule should take some awards away"
    # Bronze stays for users with 8+ quizzes, but is now decided by their 8th quiz, not their 5th.
    moved = {i for i in before & after if old[i]["event_id"] != new[i]["event_id"]}
    assert moved

    copy = tmp_path / "awards.db"
    live_db = live.database_url or ""
    copy.write_bytes(Path(live_db.removeprefix("sqlite:///")).read_bytes())
    env = {**live.env(BADGESTREAM_DATABASE_URL=f"sqlite:///{copy}")}
    command = [sys.executable, "-m", "streams.cli", "replay", "--catalog", str(catalog_path), "--quiet"]
    shown = subprocess.run([*command, "--json"], env=env, cwd=harness.REPO, capture_output=True, text=True,
                           check=True)
    report = json.loads(shown.stdout)
    assert {r["award_id"] for r in report["no_longer_qualifying"]} == before - after
    assert {r["award_id"] for r in report["added"]} == after - before
    assert {r["award_id"] for r in report["changed"]} == moved
    assert sorted(report["affected_users"]) == sorted(
        {old[i]["user_id"] for i in (before - after) | moved} | {new[i]["user_id"] for i in after - before}
    )

    revoked = subprocess.run([*command, "--revoke"], env=env, cwd=harness.REPO, capture_output=True, text=True,
                             check=True)
    assert f"{len(before - after)} revoked" in revoked.stderr
    awards_db = db.make_engine(f"sqlite:///{copy}")
    try:
        with awards_db.connect() as conn:
            rows = conn.execute(sa.select(db.user_badges.c.award_id).where(
                db.user_badges.c.revoked_at.is_not(None))).scalars().all()
    finally:
        awards_db.dispose()
    assert set(rows) == before - after  # marked revoked, never deleted
    messages = harness.consume(live.bootstrap, live.awards_topic, idle=3, timeout=60)
    revocations = {json.loads(m.value())["award_id"] for m in messages
                   if json.loads(m.value()).get("kind") == "revocation"}
    assert revocations >= before - after


def test_the_replay_command_reports_no_difference_on_the_live_database(live: StackConfig) -> None:
    result = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--quiet"], env=live.env(),
                            cwd=harness.REPO, capture_output=True, text=True, check=True)
    assert "no difference" in result.stdout, result.stdout + result.stderr



def test_a_points_change_lists_the_awards_totals_and_levels_that_move(live: StackConfig, tmp_path: Path) -> None:
    catalog_path = changed_catalog(tmp_path, "description: Complete your first quiz.\n    on: [quiz_completed]\n"
                                   "    rule: {count: 1}\n    points: 10\n",
                                   "description: Complete your first quiz.\n    on: [quiz_completed]\n"
                                   "    rule: {count: 1}\n    points: 100\n", "catalog-points.yaml")
    old = {a["award_id"]: a for a in harness.offline_awards(harness.DEMO_EVENTS)}
    new = {a["award_id"]: a for a in harness.offline_awards(harness.DEMO_EVENTS, catalog_path)}
    assert set(old) < set(new), "more points can only reach more levels"
    settings = settings_for(live, catalog_path)
    catalog = load_catalog(catalog_path)
    result = replay(settings, catalog, show_progress=False)
    awards_db = db.make_engine(settings.database_url_value)
    try:
        found = diff(result.awards, database_awards(awards_db), {lv.id: lv.at for lv in catalog.levels})
    finally:
        awards_db.dispose()
    assert {a.award_id for a in found.added} == set(new) - set(old)
    assert {a.badge_id for a in found.added} <= {"rookie", "regular", "legend"} and found.added
    levels = {"rookie", "regular", "legend"}
    assert {(r["badge_id"], r["points"], a.points) for r, a in found.changed if a.badge_id not in levels} == {
        ("first_quiz", 10, 100)}
    # Levels reached sooner: decided by an earlier event now.
    moved = [(r, a) for r, a in found.changed if a.badge_id in levels]
    assert moved and all(a.awarded_at <= r["awarded_at"] and a.points == 0 for r, a in moved)
    assert {a.award_id for _, a in moved} == {i for i in set(old) & set(new)
                                              if old[i]["event_id"] != new[i]["event_id"]}
    totals = {}
    for award in new.values():
        totals[award["user_id"]] = totals.get(award["user_id"], 0) + award["points"]
    assert {c.user_id: c.points_after for c in found.standings} == totals  # every user had a first quiz
    assert all(c.points_after == c.points_before + 90 for c in found.standings)
