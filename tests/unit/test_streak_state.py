"""How a streak's active periods are stored: bitmaps split at long gaps, read from older runs, and their size."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluators.engine import Engine
from evaluators.registry import EvaluatorRegistry
from evaluators.state import BadgeMap, BadgeState, StateDecodeError, Stretches, UserState, upcast_streak_runs
from evaluators.streaks import _with_period
from schemas.catalog import load_catalog
from tests.unit.support import award_keys, engine, event, run

DEMO = Engine(load_catalog(Path(__file__).resolve().parents[2] / "deploy" / "demo" / "catalog.yaml"),
              EvaluatorRegistry.builtin())


def test_upcast_streak_runs_keeps_exactly_the_periods_of_the_runs() -> None:
    assert upcast_streak_runs([10, 10]) == ((10, 0b1),)
    assert upcast_streak_runs([739676, 739676, 739678, 739679]) == ((739676, 0b1101),)
    assert upcast_streak_runs([5, 7, 70, 70]) == ((5, 0b111 | 1 << 65),)
    for bad in ([], [1], [3, 2], [5, 6, 1, 2]):
        with pytest.raises(StateDecodeError):
            upcast_streak_runs(bad)


def test_a_stored_state_with_runs_is_read_and_written_again_as_a_bitmap() -> None:
    eng = engine("badges:\n  - {id: s, on: [login], rule: {streak: {days: 4}}}\n")
    fp = eng.catalog.badges[0].fingerprint
    old = {"f": fp, "n": 2, "r": [739676, 739677, 739679, 739679]}  # 1-2 and 4 March 2026, as stored before
    state = BadgeState.from_json(old)
    assert (state.active, state.n) == (((739676, 0b1011),), 2)
    assert state.to_json() == {"f": fp, "n": 2, "a": [739676, "Cw=="]}  # 0b1011 as one byte, base64
    # The engine goes on from the old value: 3 March joins the runs into four days.
    stored = UserState("u1", {"s": state}, catalog_fp=eng.fingerprint)
    _, results = run(eng, [event("login", "2026-03-03T12:00:00+00:00")], UserState.from_bytes(stored.to_bytes()))
    assert award_keys(results) == {("s", None, 1)}


def test_the_bitmap_survives_json_and_a_malformed_one_is_refused() -> None:
    state = BadgeState("fp")
    state.active, state.n = ((700000, 1 | 1 << 3652), (710000, 0b101)), 1
    assert BadgeState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state
    user = UserState.from_bytes(UserState("u1", {"s": state}).to_bytes())
    assert user.badges["s"].active == ((700000, 1 | 1 << 3652), (710000, 0b101))
    for bad in ([700000, "*AE="], [700000, 5], [700000], [700000, "AQ==", 700200], "AE=="):
        with pytest.raises(StateDecodeError, match="badge 's'"):
            BadgeMap(raw={"s": {"f": "fp", "a": bad}}).get("s")


def test_ten_years_of_activity_that_never_meets_a_streak_stay_small() -> None:
    """Logins every other day and a quiz every other week, for ten years: no demo streak is ever met.

    daily_warrior (7 days) and steady_learner (5 days, one freeze) keep every day of the ten years,
    weekly_regular (4 weeks) every week; the user's whole stored state stays within 4 KiB.
    """
    start = date(2016, 1, 4)  # a Monday: quizzes on Mondays every other week, always on a login day
    events = []
    for i in range(0, 3653, 2):
        day = start + timedelta(days=i)
        events.append(event("user_logged_in", f"{day}T08:00:00+00:00"))
        if i % 14 == 0:
            events.append(event("quiz_completed", f"{day}T09:00:00+00:00", quiz_id=f"q{i % 3}", score=5,
                                total_questions=10))
    state, results = run(DEMO, events)
    assert state is not None
    awarded = {badge for badge, _, _ in award_keys(results)}
    assert not awarded & {"daily_warrior", "steady_learner", "weekly_regular"}
    day_streak = len(orjson.dumps(state.badges["daily_warrior"].to_json()))
    week_streak = len(orjson.dumps(state.badges["weekly_regular"].to_json()))
    whole = len(state.to_bytes())
    ((_, days),) = state.badges["daily_warrior"].active
    assert days.bit_length() == 3653  # ten years of days, bit by bit, in one bitmap
    assert day_streak <= 700 and week_streak <= 150 and whole <= 4096, (day_streak, week_streak, whole)


def test_an_event_decades_away_starts_a_bitmap_of_its_own() -> None:
    """Events may carry any year from 1970 to 9000: a stray one must not cost a bit per day in between."""
    eng = engine("badges:\n  - {id: s, on: [login], rule: {streak: {days: 3}}}\n")
    state, _ = run(eng, [event("login", f"2026-03-0{d}T12:00:00+00:00") for d in (1, 3)]
                   + [event("login", "1970-01-01T00:00:00+00:00"), event("login", "8999-12-31T12:00:00+00:00")])
    assert state is not None
    assert len(orjson.dumps(state.badges["s"].to_json())) < 100
    assert [first for first, _ in state.badges["s"].active] == [
        date(1970, 1, 1).toordinal(), date(2026, 3, 1).toordinal(), date(8999, 12, 31).toordinal()]
    # The day between still completes the streak, and gaps shorter than the split merge again.
    _, results = run(eng, [event("login", "2026-03-02T12:00:00+00:00")], state)
    assert award_keys(results) == {("s", None, 1)}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 2000), min_size=1, max_size=60), st.sampled_from([1, 5, 128, 300]))
def test_stretches_hold_exactly_the_points_split_at_every_long_gap(points: list[int], gap: int) -> None:
    stretches: Stretches = ()
    for point in points:  # any order, repeats included
        added = _with_period(stretches, point, gap)
        assert (added is None) == any(first <= point and bits >> (point - first) & 1 for first, bits in stretches)
        if added is not None:
            stretches, holding = added
            assert holding in stretches
    held = {first + i for first, bits in stretches for i in range(bits.bit_length()) if bits >> i & 1}
    assert held == set(points)
    # Canonical whatever the order: a new stretch exactly where >= gap inactive periods separate two points.
    ordered = sorted(held)
    starts = [ordered[0]] + [b for a, b in itertools.pairwise(ordered) if b - a - 1 >= gap]
    assert [first for first, _ in stretches] == starts
