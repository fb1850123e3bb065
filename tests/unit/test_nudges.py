"""Nudges: the catalog's ``nudge:`` thresholds, refused when they make no sense, and decided by the engine."""

from __future__ import annotations

import itertools

import pytest

from evaluators.runner import EngineRun
from schemas.catalog import CatalogProblems, parse_catalog
from schemas.records import make_award_id, make_nudge_id
from tests.unit.support import engine, event, run

NUDGED = """\
    badges:
      - id: quiz_master
        on: [quiz_completed]
        rule: {tiers: {bronze: 3, silver: 6}}
        nudge: {remaining: [2, 1], tiers: {silver: {remaining: [4]}}}
      - id: daily
        on: [user_logged_in]
        rule: {streak: {days: 4}}
        nudge: {remaining: [1]}
      - id: regular
        on: [quiz_completed]
        repeatable: true
        rule: {count: 3}
        nudge: {remaining: [1]}
      - id: secret
        on: [quiz_completed]
        hidden: true
        rule: {count: 3}
        nudge: {remaining: [1]}
      - id: plain
        on: [quiz_completed]
        rule: {count: 3}
"""


def nudge_keys(results: list) -> list[tuple[str, str | None, int, int, float]]:  # type: ignore[type-arg]
    return [(n.badge_id, n.tier, n.occurrence, n.threshold, n.remaining) for r in results for n in r.nudges]


def test_nudges_fire_once_per_threshold_tier_and_occurrence() -> None:
    eng = engine(NUDGED)
    _, results = run(eng, [event(event_id=f"q{i}") for i in range(7)])
    per_event = [nudge_keys([r]) for r in results]
    assert per_event == [
        [("quiz_master", "bronze", 1, 2, 2.0)],
        [("quiz_master", "bronze", 1, 1, 1.0), ("quiz_master", "silver", 1, 4, 4.0), ("regular", None, 1, 1, 1.0)],
        [],  # bronze awarded: 0 left is no nudge
        [],
        [("regular", None, 2, 1, 1.0)],  # silver's own thresholds [4] replace the badge's [2, 1]
        [],
        [],
    ]
    # never for the hidden badge, never for a badge without nudge
    first = results[1].nudges[0]
    assert first.nudge_id == make_nudge_id("u1", "quiz_master", "bronze", 1, 1)
    assert first.nudge_id != make_award_id("u1", "quiz_master", "bronze", 1)
    assert (first.progress, first.target, first.event_id, first.catalog_version) == (2.0, 3.0, "q1", "test")
    assert first.nudged_at.isoformat() == "2026-03-02T10:00:00+00:00"
    # Built without validation (``trusted_record``): each equals the record validation makes of it.
    for nudge in (n for r in results for n in r.nudges):
        validated = type(nudge).model_validate(nudge.model_dump())
        assert nudge == validated and nudge.model_dump_json() == validated.model_dump_json()
        assert nudge.model_fields_set == validated.model_fields_set


def test_a_duplicate_event_nudges_nothing_and_a_jump_past_every_threshold_nudges_nothing() -> None:
    eng = engine(NUDGED)
    engine_run = EngineRun(eng)
    for ev in [event(event_id="q0"), event(event_id="q1")]:
        engine_run.evaluate(ev)
    again = engine_run.evaluate(event(event_id="q1"))
    assert again.duplicate and again.nudges == ()
    # a streak that jumps from 2 to 4 days (the middle day arrives last) has nothing left to nudge about
    days = ["2026-03-01", "2026-03-02", "2026-03-04", "2026-03-03"]
    _, results = run(eng, [event("user_logged_in", f"{d}T08:00:00+00:00") for d in days])
    assert nudge_keys(results) == []
    _, results = run(eng, [event("user_logged_in", f"{d}T08:00:00+00:00") for d in days[:3]])
    assert nudge_keys(results) == []  # runs of 2 and 1: the longest still needs 2
    _, results = run(eng, [event("user_logged_in", f"{d}T08:00:00+00:00") for d in ["2026-03-01", "2026-03-02",
                                                                                  "2026-03-03"]])
    assert nudge_keys(results) == [("daily", None, 1, 1, 1.0)]


def test_nudge_set_does_not_depend_on_event_order_for_counting_rules() -> None:
    eng = engine(NUDGED)
    events = [event(event_id=f"q{i}", at=f"2026-03-0{i + 1}T10:00:00+00:00") for i in range(5)]
    seen = set()
    for order in itertools.permutations(events):
        _, results = run(eng, order)
        seen.add(frozenset(n.nudge_id for r in results for n in r.nudges))
    assert len(seen) == 1 and len(next(iter(seen))) == 5


def test_changing_only_the_nudge_keeps_progress() -> None:
    with_nudge = parse_catalog('catalog_version: "1"\nbadges:\n  - {id: a, on: [x], rule: {count: 5}, '
                               'nudge: {remaining: [1]}}\n')
    without = parse_catalog('catalog_version: "1"\nbadges:\n  - {id: a, on: [x], rule: {count: 5}}\n')
    assert with_nudge.badges[0].fingerprint == without.badges[0].fingerprint


@pytest.mark.parametrize(("badge", "words"), [
    ("{id: b, on: [x], rule: {count: 5}, nudge: {remaining: [5]}}",
     "cat.yaml:3: badge 'b', field 'nudge.remaining': threshold 5 is not below the target (5)"),
    ("{id: b, on: [x], rule: {count: 5}, nudge: {remaining: [2, 2]}}",
     "cat.yaml:3: badge 'b', field 'nudge.remaining': threshold 2 is listed twice"),
    ("{id: b, on: [x], rule: {count: 5}, nudge: {remaining: [0]}}",
     "cat.yaml:3: badge 'b', field 'nudge.remaining.0': Input should be greater than or equal to 1"),
    ("{id: b, on: [x], rule: {count: 5}, nudge: {remaining: [1.5]}}",
     "cat.yaml:3: badge 'b', field 'nudge.remaining.0': Input should be a valid integer"),
    ("{id: b, on: [x], rule: {count: 5}, nudge: {remaining: [true]}}",
     "cat.yaml:3: badge 'b', field 'nudge.remaining.0': Input should be a valid integer"),
    ("{id: b, on: [x], rule: {count: 5}, nudge: {}}",
     "cat.yaml:3: badge 'b', field 'nudge': a nudge needs 'remaining' thresholds"),
    ("{id: b, on: [x], rule: {count: 5}, nudge: {remaining: [1], tiers: {gold: {remaining: [1]}}}}",
     "cat.yaml:3: badge 'b', field 'nudge.tiers': per-tier thresholds need a tiered rule"),
    ("{id: b, on: [x], rule: {tiers: {bronze: 3, gold: 9}}, nudge: {remaining: [4]}}",
     "cat.yaml:3: badge 'b', field 'nudge.remaining': threshold 4 is not below tier 'bronze''s target (3)"),
    ("{id: b, on: [x], rule: {tiers: {bronze: 3, gold: 9}}, nudge: {tiers: {platinum: {remaining: [1]}}}}",
     "cat.yaml:3: badge 'b', field 'nudge.tiers.platinum': unknown tier 'platinum' (tiers: bronze, gold)"),
    ("{id: b, on: [x], rule: {evaluator: comeback}, nudge: {remaining: [1]}}",
     "cat.yaml:3: badge 'b', field 'nudge': a custom evaluator's target is known only when it runs"),
])
def test_bad_thresholds_are_refused_naming_badge_field_and_line(badge: str, words: str) -> None:
    with pytest.raises(CatalogProblems) as caught:
        parse_catalog(f'catalog_version: "1"\nbadges:\n  - {badge}\n', source="cat.yaml")
    assert any(words in problem for problem in caught.value.problems), caught.value.problems


def test_per_tier_thresholds_replace_the_badge_ones_and_may_exceed_a_lower_tier() -> None:
    cat = parse_catalog('catalog_version: "1"\nbadges:\n  - {id: b, on: [x], rule: {tiers: {bronze: 3, gold: 9}}, '
                        'nudge: {remaining: [1], tiers: {gold: {remaining: [5, 1]}}}}\n')
    nudge = cat.badges[0].nudge
    assert nudge is not None
    assert (nudge.thresholds("bronze"), nudge.thresholds("gold")) == ((1,), (5, 1))


def test_the_worker_processor_hands_the_nudges_on_as_records_to_produce() -> None:
    from schemas.records import NudgeRecord
    from streams.worker.processor import EventProcessor

    eng = engine(NUDGED)
    processor = EventProcessor(eng.catalog, eng)
    stored = None
    produced: list[NudgeRecord] = []
    for i in range(3):
        raw = event(event_id=f"w{i}").model_dump_json().encode()
        outcome = processor.process(b"u1", raw, "user-events", 0, i, stored)
        stored = outcome.new_state
        produced += [NudgeRecord.model_validate_json(value) for value in outcome.nudges]
    assert [(n.badge_id, n.tier, n.threshold) for n in produced] == [
        ("quiz_master", "bronze", 2), ("quiz_master", "bronze", 1), ("quiz_master", "silver", 4), ("regular", None, 1)]
    again = processor.process(b"u1", event(event_id="w2").model_dump_json().encode(), "user-events", 0, 2, stored)
    assert again.nudges == []  # a redelivered event does not nudge twice
