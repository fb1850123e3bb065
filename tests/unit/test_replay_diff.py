"""The replay's diff of points and levels: award points that changed, and each user's total and level."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.records import AwardRecord, make_award_id
from streams.replay.replay import ReplayResult, StandingChange, diff, render

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
LEVELS = {"rookie": 10, "pro": 30}


def award(user: str, badge: str, points: int = 0) -> AwardRecord:
    return AwardRecord(award_id=make_award_id(user, badge, None, 1), user_id=user, badge_id=badge, awarded_at=T0,
                       event_id="e1", catalog_version="v", points=points)


def row(record: AwardRecord, *, points: int | None = None, revoked: bool = False) -> dict[str, Any]:
    return {"award_id": record.award_id, "user_id": record.user_id, "badge_id": record.badge_id, "tier": None,
            "occurrence": 1, "awarded_at": record.awarded_at, "event_id": record.event_id,
            "revoked_at": T0 if revoked else None, "points": record.points if points is None else points}


def test_same_awards_and_points_is_no_difference() -> None:
    replayed = [award("u1", "a", 10), award("u1", "rookie")]
    assert diff({a.award_id: a for a in replayed}, {a.award_id: row(a) for a in replayed}, LEVELS).empty


def test_changed_points_list_the_award_and_the_users_new_total_and_level() -> None:
    a, b, rookie, pro = award("u1", "a", 10), award("u1", "b", 25), award("u1", "rookie"), award("u1", "pro")
    stored = {a.award_id: row(a, points=5), b.award_id: row(b), rookie.award_id: row(rookie)}
    stored |= {x.award_id: row(x) for x in [award("u2", "a", 10), award("u2", "rookie")]}
    replayed = {x.award_id: x for x in [a, b, rookie, pro, award("u2", "a", 10), award("u2", "rookie")]}
    found = diff(replayed, stored, LEVELS)
    assert [(r["badge_id"], r["points"], x.points) for r, x in found.changed] == [("a", 5, 10)]
    assert [x.badge_id for x in found.added] == ["pro"]
    assert found.standings == [StandingChange("u1", 30, 35, "rookie", "pro")]  # u2 unchanged
    assert found.as_json()["standings"] == [
        {"user_id": "u1", "database": {"points": 30, "level": "rookie"}, "replay": {"points": 35, "level": "pro"}}]
    text = render(found, ReplayResult(awards=replayed, events=4, seconds=1.0), show=10)
    assert "u1  a  points 5 -> 10" in text
    assert "users whose points or level change: 1  (level pro: 1)" in text
    assert "u1  points 30 -> 35, level rookie -> pro" in text


def test_revoked_awards_do_not_count_towards_the_stored_total() -> None:
    a, b = award("u1", "a", 10), award("u1", "b", 5)
    stored = {a.award_id: row(a), b.award_id: row(b, revoked=True)}
    found = diff({a.award_id: a}, stored, LEVELS)
    assert found.standings == [] and found.no_longer_qualifying == []
    # A level lost by a rule change is listed as a lost award and as a change of level.
    rookie = award("u1", "rookie")
    found = diff({a.award_id: a}, {a.award_id: row(a, points=20), rookie.award_id: row(rookie)}, LEVELS)
    assert [r["badge_id"] for r in found.no_longer_qualifying] == ["rookie"]
    assert found.standings == [StandingChange("u1", 20, 10, "rookie", None)]
