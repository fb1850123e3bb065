"""Hypothesis properties of the engine and the parsers (DESIGN.md "Semantics that users rely on")."""

from __future__ import annotations

import contextlib
import functools
from bisect import bisect_left
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluators.engine import Engine
from evaluators.registry import EvaluatorRegistry
from evaluators.runner import EngineRun
from evaluators.state import UserState
from evaluators.streaks import _longest_around
from schemas.catalog import load_catalog, parse_catalog
from schemas.errors import CatalogError, InvalidEventError
from schemas.events import EventEnvelope, parse_event
from tests.unit.support import catalog

PROPERTIES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every order-independent kind, with windows, CEL, prerequisites, repeats, cascading meta-badges,
# streak freezes, points and levels that badges list and require.
ORDER_FREE_BADGES = """
    badges:
      - {id: first, on: [quiz], points: 3, rule: {count: 1}}
      - {id: tiers, on: [quiz], points: {bronze: 1, silver: 2, gold: 4}, rule: {tiers: {bronze: 2, silver: 4, gold: 7}}}
      - {id: weekend, on: [quiz], when: "local.weekday >= 6", points: 2, rule: {count: 2}}
      - {id: good, on: [quiz], when: "data.score >= 5", rule: {count: 2}}
      - {id: explorer, on: [quiz], rule: {distinct: {field: data.quiz_id, count: 3}}}
      - {id: points, on: [quiz], rule: {sum: {field: data.score, at_least: 12.5}}}
      - {id: points_again, on: [quiz], repeatable: true, points: 1, rule: {sum: {field: data.score, at_least: 10}}}
      - {id: daily, on: [login], rule: {streak: {days: 3}}}
      - {id: weekly, on: [login, quiz], rule: {streak: {weeks: 2}}}
      - {id: daily_frozen, on: [login], points: 5, rule: {streak: {days: 4, freezes: 2}}}
      - {id: weekly_frozen, on: [quiz], rule: {streak: {weeks: 3, freezes: 1}}}
      - {id: march, on: [quiz], window: {from: "2026-03-01", until: "2026-03-15"}, rule: {count: 2}}
      - {id: recruiter, on: [referral], requires: [first], repeatable: true, points: 2, rule: {count: 2}}
      - {id: scholar, points: 4, rule: {badges: [first, explorer, daily]}}
      - {id: two_of, rule: {badges: [weekend, good, march, points], at_least: 2}}
      - {id: top, rule: {badges: [scholar, two_of]}}
      - {id: levelled, rule: {badges: [silver_level, daily]}}
      - {id: gated, on: [referral], requires: [bronze_level], points: 3, rule: {count: 1}}
    levels:
      - {id: bronze_level, at: 3}
      - {id: silver_level, at: 8}
      - {id: gold_level, at: 15}
"""
ORDER_FREE = Engine(catalog(ORDER_FREE_BADGES))
DEMO = Engine(load_catalog(Path(__file__).resolve().parents[2] / "deploy" / "demo" / "catalog.yaml"),
              EvaluatorRegistry.builtin())
REPEATABLE = {"points_again", "recruiter"}
ZONES = ["UTC", "Europe/Berlin", "Asia/Tokyo", "America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago"]
START = datetime(2026, 2, 20, tzinfo=UTC)

scores = st.one_of(st.integers(-3, 10), st.floats(0, 10, allow_nan=False).map(lambda x: round(x, 2)),
                   st.just("7"), st.none())


@st.composite
def user_events(draw: st.DrawFn, user: str = "u1") -> list[EventEnvelope]:
    count = draw(st.integers(1, 30))
    events = []
    for i in range(count):
        kind = draw(st.sampled_from(["quiz", "quiz", "login", "login", "referral", "unrelated"]))
        at = START + timedelta(minutes=draw(st.integers(0, 60 * 24 * 40)))
        data: dict[str, Any] = {}
        if kind == "quiz":
            data = {"quiz_id": draw(st.sampled_from(["q1", "q2", "q3", "q4"])), "score": draw(scores)}
            if data["score"] is None:
                del data["score"]
        events.append(EventEnvelope(event_id=f"{user}-e{i}", type=kind, user_id=user, occurred_at=at,
                                    tz=draw(st.sampled_from(ZONES)), data=data))
    # Redeliveries: some events appear twice.
    repeats = draw(st.lists(st.integers(0, count - 1), max_size=3))
    return events + [events[i] for i in repeats]


def award_set(engine: Engine, events: list[EventEnvelope]) -> tuple[set[tuple[str, str | None, int]], UserState | None]:
    """The awards of ``events`` in this order, as replay and ``evaluate`` decide them (resends absorbed)."""
    run = EngineRun(engine)
    awards: list[tuple[str, str | None, int]] = []
    points = 0
    for event in events:
        result = run.evaluate(event)
        awards.extend((a.badge_id, a.tier, a.occurrence) for a in result.awards)
        points += sum(a.points for a in result.awards)
    counts = Counter(awards)
    assert all(n == 1 for n in counts.values()), f"awarded twice: {counts}"
    state = run.states.get(events[0].user_id) if events else None
    assert state is None or state.points == points  # the stored total is the sum over the awards granted
    return set(awards), state


@PROPERTIES
@given(user_events())
def test_at_most_one_award_per_badge_and_tier_unless_repeatable(events: list[EventEnvelope]) -> None:
    awards, _ = award_set(ORDER_FREE, events)
    for badge_id in {b for b, _, _ in awards}:
        occurrences = sorted(o for b, _, o in awards if b == badge_id)
        if badge_id in REPEATABLE:
            assert occurrences == list(range(1, len(occurrences) + 1))
        else:
            assert occurrences == [1] * len(occurrences)
            assert len(occurrences) == len({t for b, t, _ in awards if b == badge_id})


@PROPERTIES
@given(user_events())
def test_resending_the_same_events_awards_nothing_new(events: list[EventEnvelope]) -> None:
    run = EngineRun(ORDER_FREE)
    for event in events:
        run.evaluate(event)
    for event in events:
        result = run.evaluate(event, record_ms=23 * 3600 * 1000)  # resent 23 hours later
        assert result.awards == () and result.progress == ()
        assert result.duplicate or not result.matched


@PROPERTIES
@given(user_events(), st.randoms(use_true_random=False))
def test_any_order_gives_the_same_award_set(events: list[EventEnvelope], rnd: Any) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert award_set(ORDER_FREE, events)[0] == award_set(ORDER_FREE, shuffled)[0]


@PROPERTIES
@given(user_events())
def test_levels_follow_the_points_total(events: list[EventEnvelope]) -> None:
    awards, state = award_set(ORDER_FREE, events)
    total = state.points if state is not None else 0
    levels = {level.id for level in ORDER_FREE.catalog.levels if level.at <= total}
    assert {b for b, _, _ in awards if b.endswith("_level")} == levels


# The same catalog with ``freezes: 0`` spelled out on the plain streaks, and without any freeze streak.
PLAIN = ORDER_FREE_BADGES.replace("{days: 3}", "{days: 3, freezes: 0}").replace("freezes: 2", "freezes: 0")
PLAIN_IMPLICIT = ORDER_FREE_BADGES.replace(", freezes: 2", "")


@PROPERTIES
@given(user_events())
def test_freezes_zero_gives_exactly_the_plain_streak(events: list[EventEnvelope]) -> None:
    spelled, implicit = Engine(catalog(PLAIN)), Engine(catalog(PLAIN_IMPLICIT))
    state_a: UserState | None = None
    state_b: UserState | None = None
    for event in events:
        a, b = spelled.evaluate(state_a, event), implicit.evaluate(state_b, event)
        assert (a.awards, a.progress, a.state.to_bytes()) == (b.awards, b.progress, b.state.to_bytes())
        state_a, state_b = a.state, b.state


def best_range(active: set[int], holding: int | None, freezes: int) -> int:
    """Most active periods in a range [a, b], a and b active (holding ``holding`` if given), <= ``freezes`` inactive."""
    points = sorted(active)
    best = 0
    for i, a in enumerate(points):
        for j in range(i, len(points)):
            b = points[j]
            held = j - i + 1
            if (b - a + 1) - held <= freezes and (holding is None or a <= holding <= b):
                best = max(best, held)
    return best


@PROPERTIES
@given(st.sets(st.integers(0, 90), min_size=1, max_size=40), st.integers(1, 8), st.integers(0, 4), st.data())
def test_the_window_around_a_point_finds_the_best_range_holding_it(points: set[int], length: int, freezes: int,
                                                                  data: st.DataObject) -> None:
    active = sum(1 << p for p in points)
    point = data.draw(st.sampled_from(sorted(points)))
    expected = min(length, best_range(points, point, freezes))
    assert _longest_around(active, point, length, freezes) == expected


@functools.cache
def streak_engine(length: int, freezes: int) -> Engine:
    return Engine(catalog(f"""
        badges:
          - {{id: days, on: [login], rule: {{streak: {{days: {length}, freezes: {freezes}}}}}}}
          - {{id: weeks, on: [login], rule: {{streak: {{weeks: {length}, freezes: {freezes}}}}}}}
    """))


@st.composite
def active_days(draw: st.DrawFn) -> list[int]:
    """Days (offsets from START) in a few bursts of nearly consecutive days, anywhere in up to ten years."""
    span = draw(st.sampled_from([40, 400, 3653]))
    days: set[int] = set()
    for start, gaps in draw(st.lists(st.tuples(st.integers(0, span), st.lists(st.integers(1, 3), max_size=8)),
                                     min_size=1, max_size=5)):
        days.add(start)
        for gap in gaps:
            start += gap
            days.add(start)
    return sorted(days)


def streak_run(eng: Engine, events: list[EventEnvelope]) -> tuple[dict[str, int], dict[str, int], list[set[int]]]:
    """Per badge: the index of the event that awarded it, the final ``n``; and the days seen after each event."""
    state: UserState | None = None
    awarded: dict[str, int] = {}
    seen: set[int] = set()
    seen_after: list[set[int]] = []
    for i, event in enumerate(events):
        result = eng.evaluate(state, event)
        state = result.state
        for award in result.awards:
            assert award.badge_id not in awarded and award.event_id == event.event_id
            awarded[award.badge_id] = i
        seen.add((event.occurred_at - START).days)
        seen_after.append(set(seen))
    assert state is not None
    return awarded, {b: state.badges[b].n for b in ("days", "weeks") if b in state.badges}, seen_after


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(active_days(), st.integers(1, 7), st.integers(0, 3), st.randoms(use_true_random=False), st.data())
def test_streaks_are_exact_in_any_order_however_late(days: list[int], length: int, freezes: int, rnd: Any,
                                                      data: st.DataObject) -> None:
    eng = streak_engine(length, freezes)
    events = [EventEnvelope(event_id=f"d{day}", type="login", user_id="u", occurred_at=START + timedelta(days=day),
                            tz="UTC") for day in days]
    # Duplicates mixed in: the same event again, and other events on a day already active.
    again = data.draw(st.lists(st.sampled_from(events), max_size=4))
    same_day = [event.model_copy(update={"event_id": f"{event.event_id}-b", "occurred_at": event.occurred_at
                                         + timedelta(hours=3)}) for event in data.draw(st.lists(st.sampled_from(events),
                                                                                               max_size=4))]
    shuffled = events + again + same_day
    rnd.shuffle(shuffled)
    in_order, n_in_order, _ = streak_run(eng, events)
    awarded, n, seen_after = streak_run(eng, shuffled)
    assert set(awarded) == set(in_order) and n == n_in_order
    # The brute-force reading of the definition, on days and on ISO weeks (START is a Friday: the
    # week of day d is (d + 4) // 7 from START's week).
    units = {"days": lambda ds: set(ds), "weeks": lambda ds: {(d + 4) // 7 for d in ds}}
    for badge, periods in units.items():
        best = best_range(periods(days), None, freezes)
        assert n.get(badge, 0) == min(best, length), badge
        # Awarded exactly by the event, in arrival order, after which the definition first held.
        # (Being met only grows with the events seen, so a binary search finds the first such event.)
        first_met = bisect_left(seen_after, True, key=lambda ds: best_range(periods(ds), None, freezes) >= length)
        assert awarded.get(badge) == (first_met if first_met < len(seen_after) else None), badge


@PROPERTIES
@given(user_events())
def test_state_survives_bytes_at_every_step(events: list[EventEnvelope]) -> None:
    direct: UserState | None = None
    stored: bytes | None = None
    for event in events:
        direct = DEMO.evaluate(direct, event).state
        through = DEMO.evaluate(UserState.from_bytes(stored) if stored is not None else None, event).state
        stored = through.to_bytes()
        assert stored == direct.to_bytes()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False,
                                                                          min_value=-1e15, max_value=1e15)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@PROPERTIES
@given(
    st.sampled_from(["quiz_completed", "user_logged_in", "referral_signup", "other"]),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(8999, 12, 30), timezones=st.just(UTC)),
    st.sampled_from(ZONES),
    st.dictionaries(st.sampled_from(["quiz_id", "score", "total_questions", "x"]), json_values, max_size=4),
    st.integers(0, 3),
)
def test_engine_never_raises_on_a_valid_envelope(kind: str, at: datetime, tz: str, data: dict[str, Any],
                                                 history: int) -> None:
    state = None
    for i in range(history + 1):
        event = EventEnvelope(event_id=f"e{i}", type=kind, user_id="u", occurred_at=at + timedelta(days=i),
                              tz=tz, data=data)
        state = DEMO.evaluate(state, event).state


@PROPERTIES
@given(st.binary(max_size=300) | json_values.map(orjson.dumps)
       | st.dictionaries(st.sampled_from(["event_id", "type", "user_id", "occurred_at", "tz", "data", "x"]),
                         json_values | st.sampled_from(["2026-01-01T00:00:00+00:00", "Europe/Berlin"])
                         ).map(orjson.dumps))
def test_parse_event_raises_only_invalid_event_error(raw: bytes) -> None:
    try:
        parse_event(raw)
    except InvalidEventError as exc:
        assert exc.code in {"too_large", "invalid_json", "invalid_envelope"}


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.sampled_from(
        ["count", "tiers", "on", "rule", "when", "data.x > 1", "2026-06-01", "badges", "first"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "on", "rule", "count", "tiers", "badges", "when", "window", "from", "until",
                         "requires", "repeatable", "streak", "days", "distinct", "field", "sum", "at_least",
                         "evaluator", "kind", "catalog_version", "events", "required"]), children, max_size=5),
    max_leaves=25,
)


@PROPERTIES
@given(st.text(max_size=300) | yaml_values.map(lambda v: yaml.safe_dump(v)) | yaml_values.map(
    lambda badges: yaml.safe_dump({"catalog_version": "1", "badges": [badges]})))
def test_parse_catalog_raises_only_catalog_error(text: str) -> None:
    with contextlib.suppress(CatalogError):
        parse_catalog(text)
