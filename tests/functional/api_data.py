"""The small award database the read API tests and the browser test share: a catalog, awards and progress.

u-1 holds first_quiz, quiz_master bronze and recruiter (hidden, earned), is 37/50 towards silver,
3/5 towards explorer and 2/30 towards secret_society (hidden, not earned: never shown). u-2 holds
first_quiz and explorer, u-3 first_quiz; u-4 has only progress (a known user holding nothing).
Two levels (Regular at 50 points, Expert at 100) are in the catalog; nobody has reached one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from schemas.records import AwardRecord, EventSource, ProgressRecord, make_award_id
from streams import db

T0 = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)

CATALOG: dict[str, Any] = {
    "catalog_version": "2026-11-26",
    "badges": [
        {"id": "first_quiz", "name": "First Quiz", "description": "Complete your first quiz.",
         "on": ["quiz_completed"], "rule": {"count": 1}},
        {"id": "quiz_master", "name": "Quiz Master", "description": "Many quizzes.", "on": ["quiz_completed"],
         "rule": {"tiers": {"bronze": 10, "silver": 50, "gold": 100}}},
        {"id": "explorer", "name": "Explorer", "description": "Five quizzes.", "on": ["quiz_completed"],
         "rule": {"distinct": {"field": "data.quiz_id", "count": 5}}},
        {"id": "recruiter", "name": "Recruiter", "description": "Bring friends.", "on": ["referral_signup"],
         "hidden": True, "repeatable": True, "rule": {"count": 3}},
        {"id": "secret_society", "name": "Secret Society", "description": "Shh.", "on": ["user_logged_in"],
         "hidden": True, "rule": {"streak": {"days": 30}}},
    ],
    "levels": [{"id": "regular", "name": "Regular", "at": 50}, {"id": "expert", "name": "Expert", "at": 100}],
}


def award(user: str, badge: str, tier: str | None = None, occurrence: int = 1, *, days: int = 0,
          points: int = 0, kind: str = "award", source: EventSource | None = None) -> AwardRecord:
    return AwardRecord(award_id=make_award_id(user, badge, tier, occurrence), user_id=user, badge_id=badge,
                       tier=tier, occurrence=occurrence, awarded_at=T0 + timedelta(days=days),
                       event_id=f"e-{user}-{badge}-{tier}-{occurrence}", catalog_version="2026-11-26",
                       metadata={"progress": 1, "target": 1}, kind=kind, points=points,  # type: ignore[arg-type]
                       source=source)


def progress(user: str, badge: str, tier: str | None, value: float, target: float) -> ProgressRecord:
    return ProgressRecord(user_id=user, badge_id=badge, tier=tier, progress=value, target=target, updated_at=T0)


AWARDS = [
    award("u-1", "first_quiz", points=10, source=EventSource(topic="user-events", partition=2, offset=41)),
    award("u-1", "quiz_master", "bronze", days=1, points=20),
    award("u-1", "recruiter", days=2, points=5),
    award("u-2", "first_quiz", days=3, points=10),
    award("u-2", "explorer", days=4, points=50),
    award("u-3", "first_quiz", days=5, points=10),
]
PROGRESS = [
    progress("u-1", "quiz_master", "bronze", 10, 10),
    progress("u-1", "quiz_master", "silver", 37, 50),
    progress("u-1", "secret_society", None, 2, 30),
    progress("u-1", "explorer", None, 3, 5),
    progress("u-4", "explorer", None, 1, 5),
]


def fill(database_url: str) -> Engine:
    """Migrate ``database_url`` and write the catalog, awards and progress above; the caller disposes the engine."""
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    db.write_catalog(engine, CATALOG)
    with engine.begin() as conn:
        db.write_records(conn, AWARDS, PROGRESS)
    return engine
