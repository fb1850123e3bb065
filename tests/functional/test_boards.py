"""Leaderboards ranked by the database (``streams.db.boards``) agree with ranking everyone in Python.

The oracle is the window path: ``db.standings`` (an aggregate over the awards) ranked by the API's
``Ranking``. For seeded random awards (ties on purpose, some revoked), every board — all time, a
day, an ISO week, a month, one badge; by badges and by points — gives the same top N and the same
``around`` window for every user, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from schemas.records import AwardRecord, make_award_id
from streams import db
from streams.api.views import Ranking
from streams.db.aggregates import period_bounds, period_start

T0 = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)  # a Sunday evening near the end of a month
BADGES = [("first_quiz", None), ("quiz_master", "bronze"), ("quiz_master", "silver"), ("explorer", None)]


def fill(engine: Engine, rng: random.Random, users: int) -> None:
    awards = []
    for number in range(users):
        user = f"u-{number:02d}"
        for badge, tier in rng.sample(BADGES, rng.randint(0, len(BADGES))):
            awards.append(AwardRecord(
                award_id=make_award_id(user, badge, tier, 1), user_id=user, badge_id=badge, tier=tier, occurrence=1,
                awarded_at=T0 + timedelta(hours=rng.randrange(0, 24 * 10)), event_id=f"e-{user}-{badge}",
                catalog_version="v1", metadata={}, points=rng.choice([0, 5, 10])))
    revoked = [a.model_copy(update={"kind": "revocation"}) for a in rng.sample(awards, len(awards) // 8)]
    with engine.begin() as conn:
        db.write_records(conn, awards, [])
        db.upsert_awards(conn, revoked)


@seed(2222)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data_seed=st.integers(0, 2**32), users=st.integers(6, 20), limit=st.integers(1, 7))
def test_every_board_matches_ranking_everyone(engine: Engine, data_seed: int, users: int, limit: int) -> None:
    with engine.begin() as conn:  # one database for the examples: start each from no awards
        for table in (db.user_badges, db.user_totals, db.period_scores, db.user_holdings, db.badge_holders,
                      db.score_counts):
            conn.execute(table.delete())
    fill(engine, random.Random(data_seed), users)
    at = T0 + timedelta(days=1)
    boards = [({}, db.Board), ({"badge_id": "quiz_master"}, db.Board)] + [
        ({"period": period}, db.Board) for period in ("day", "week", "month")]
    with engine.connect() as conn:
        for options, _ in boards:
            for by in ("badges", "points"):
                period = options.get("period")
                since = until = None
                starts = None
                if period is not None:
                    starts = period_start(period, at)
                    since, until = period_bounds(period, starts)
                expected = Ranking(db.standings(conn, by=by, badge_id=options.get("badge_id"), since=since,
                                                until=until), by)  # type: ignore[arg-type]
                board = db.Board(by=by, period=period, starts=starts,  # type: ignore[arg-type]
                                 badge_id=options.get("badge_id"))
                where = f"{options} by={by}"
                assert [p.as_dict() for p in db.top(conn, board, limit)] == expected.rows(limit), where
                for number in range(users):
                    user = f"u-{number:02d}"
                    got = db.around(conn, board, user, limit)
                    assert (None if got is None else [p.as_dict() for p in got]) == expected.rows(limit, user), \
                        (where, user)
                    mine = db.standing(conn, board, user)
                    assert (None if mine is None else mine.rank) == expected.rank_of(user), (where, user)
