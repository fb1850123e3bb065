"""Points and levels (DESIGN.md "Badge catalog"): the catalog fields, their refusals, and what the engine grants."""

from __future__ import annotations

import json
import textwrap

import pytest

from evaluators.state import UserState
from schemas.catalog import CatalogProblems, parse_catalog
from schemas.export import export_json_schemas
from tests.unit.support import awards_of, engine, event, run


def problems(text: str) -> list[str]:
    with pytest.raises(CatalogProblems) as info:
        parse_catalog(textwrap.dedent(text), source="cat.yaml")
    return info.value.problems


# --- the catalog -----------------------------------------------------------------------------------


def test_each_bad_points_or_level_field_is_refused_naming_file_line_owner_and_field() -> None:
    found = problems("""\
        catalog_version: "1"
        badges:
          - id: negative
            on: [x]
            points: -3
            rule: {count: 1}
          - id: untiered
            on: [x]
            points: {gold: 5}
            rule: {count: 1}
          - id: tiered
            on: [x]
            points: {bronze: 1, gold: 5}
            rule: {tiers: {bronze: 1, silver: 2, gold: 3}}
          - id: cold
            on: [x]
            rule: {streak: {days: 3, freezes: -1}}
        levels:
          - {id: one, at: 10}
          - {id: two, at: 10}
          - {id: untiered, at: 20}
          - {id: zero, at: 0}
          - {id: one, at: 30}
    """)
    assert found == [
        "cat.yaml:5: badge 'negative', field 'points': points must be >= 0, got -3",
        "cat.yaml:9: badge 'untiered', field 'points': "
        "a {tier: points} map needs a tiered rule; give one number instead",
        "cat.yaml:13: badge 'tiered', field 'points': the points map omits tier(s) 'silver'",
        "cat.yaml:17: badge 'cold', field 'rule.streak.freezes': Input should be greater than or equal to 0",
        "cat.yaml:20: level 'two', field 'at': levels must have strictly increasing 'at': 10 follows 10",
        "cat.yaml:21: level 'untiered', field 'id': level id clashes with the badge defined on line 7",
        "cat.yaml:22: level 'zero', field 'at': Input should be greater than or equal to 1",
        "cat.yaml:23: level 'one', field 'id': duplicate level id (first defined on line 19)",
    ]


def test_a_level_clashing_with_a_badge_that_is_itself_invalid_is_still_refused() -> None:
    found = problems("""\
        catalog_version: "1"
        badges:
          - {id: a, on: [x], points: -1, rule: {count: 1}}
        levels:
          - {id: a, at: 5}
    """)
    assert found[-1] == "cat.yaml:5: level 'a', field 'id': level id clashes with a badge id"


def test_points_map_naming_an_unknown_tier_and_levels_going_down() -> None:
    found = problems("""\
        catalog_version: "1"
        badges:
          - id: t
            on: [x]
            points: {bronze: 1, platinum: 9}
            rule: {tiers: {bronze: 1}}
        levels:
          - {id: high, at: 50}
          - {id: low, at: 5}
    """)
    assert found == [
        "cat.yaml:5: badge 't', field 'points': unknown tier 'platinum' (tiers: bronze)",
        "cat.yaml:9: level 'low', field 'at': levels must have strictly increasing 'at': 5 follows 50",
    ]


def test_levels_may_be_listed_and_required_like_badges() -> None:
    cat = parse_catalog(textwrap.dedent("""\
        catalog_version: "1"
        badges:
          - {id: a, on: [x], points: 5, rule: {count: 1}}
          - {id: b, on: [x], requires: [gold], rule: {count: 1}}
          - {id: c, rule: {badges: [a, gold]}}
        levels:
          - {id: gold, name: Gold, at: 5}
    """))
    assert cat.levels[0].display_name == "Gold"
    assert problems("""\
        catalog_version: "1"
        badges:
          - {id: b, on: [x], requires: [nope], rule: {count: 1}}
    """) == ["cat.yaml:3: badge 'b', field 'requires': unknown badge 'nope'"]


def test_new_fields_keep_old_fingerprints_and_points_do_not_reset_progress() -> None:
    plain = parse_catalog('catalog_version: "1"\nbadges:\n  - {id: a, on: [x], rule: {count: 1}}\n')
    pointed = parse_catalog('catalog_version: "1"\nbadges:\n  - {id: a, on: [x], points: 3, rule: {count: 1}}\n')
    levelled = parse_catalog('catalog_version: "1"\nbadges:\n  - {id: a, on: [x], rule: {count: 1}}\n'
                             'levels:\n  - {id: l, at: 3}\n')
    assert plain.badges[0].fingerprint == pointed.badges[0].fingerprint
    assert plain.fingerprint == pointed.fingerprint
    assert levelled.fingerprint != plain.fingerprint  # a new level is re-checked for stored users


def test_json_schema_describes_points_levels_and_freezes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    export_json_schemas(tmp_path)
    schema = json.loads((tmp_path / "catalog.schema.json").read_text())
    defs = schema["$defs"]
    assert "levels" in schema["properties"]
    assert set(defs["Level"]["properties"]) == {"id", "name", "description", "at"}
    assert defs["Level"]["properties"]["at"]["minimum"] == 1
    assert "points" in defs["Badge"]["properties"]
    assert defs["StreakRule"]["properties"]["freezes"]["minimum"] == 0
    award = json.loads((tmp_path / "award-record.schema.json").read_text())
    assert "points" in award["properties"]


# --- the engine ------------------------------------------------------------------------------------

POINTS = """
badges:
  - {id: first, on: [quiz], points: 10, rule: {count: 1}}
  - {id: plain, on: [quiz], rule: {count: 1}}
  - {id: again, on: [ref], repeatable: true, points: 7, rule: {count: 2}}
  - {id: tiers, on: [quiz], points: {bronze: 1, silver: 5}, rule: {tiers: {bronze: 1, silver: 2}}}
  - {id: flat, on: [quiz], points: 2, rule: {tiers: {one: 1, two: 3}}}
"""


def test_points_on_every_award_per_occurrence_and_per_tier() -> None:
    eng = engine(POINTS)
    state, results = run(eng, [event("quiz"), event("quiz"), event("quiz")] + [event("ref") for _ in range(6)])
    by_key = {(a.badge_id, a.tier, a.occurrence): a.points for a in awards_of(results)}
    assert by_key == {
        ("first", None, 1): 10, ("plain", None, 1): 0,
        ("tiers", "bronze", 1): 1, ("tiers", "silver", 1): 5,
        ("flat", "one", 1): 2, ("flat", "two", 1): 2,
        ("again", None, 1): 7, ("again", None, 2): 7, ("again", None, 3): 7,  # counted per occurrence
    }
    assert state is not None and state.points == sum(by_key.values()) == 41


def test_points_total_survives_bytes_and_is_one_number() -> None:
    eng = engine(POINTS)
    state, _ = run(eng, [event("ref") for _ in range(200)])
    assert state is not None and state.points == 700
    raw = state.to_bytes()
    assert UserState.from_bytes(raw).points == 700
    assert UserState.from_bytes(raw) == state
    longer, _ = run(eng, [event("ref") for _ in range(2000)], state)
    assert longer is not None and len(longer.to_bytes()) - len(raw) <= 2000 * 8 + 16  # event digests, not awards


def test_an_award_waiting_for_a_prerequisite_earns_nothing_until_granted() -> None:
    eng = engine("""
        badges:
          - {id: gate, on: [quiz], rule: {count: 1}}
          - {id: ref, on: [ref], requires: [gate], points: 4, rule: {count: 1}}
        levels:
          - {id: lvl, at: 4}
    """)
    state, results = run(eng, [event("ref")])
    assert awards_of(results) == [] and state is not None and state.points == 0
    state, results = run(eng, [event("quiz", event_id="q")], state)
    assert [(a.badge_id, a.points, a.event_id) for a in awards_of(results)] == [
        ("gate", 0, "q"), ("ref", 4, "q"), ("lvl", 0, "q")]
    assert state is not None and state.points == 4


LEVELS = """
badges:
  - {id: quiz, on: [quiz], repeatable: true, points: 10, rule: {count: 1}}
  - {id: big, on: [big], points: 100, rule: {count: 1}}
levels:
  - {id: novice, name: Novice, at: 10}
  - {id: adept, at: 50}
  - {id: expert, at: 100}
  - {id: master, at: 1000}
"""


def test_one_event_may_cross_several_levels_each_an_ordinary_award() -> None:
    eng = engine(LEVELS)
    state, results = run(eng, [event("big", "2026-03-02T10:00:00+00:00", event_id="b")])
    awards = awards_of(results)
    assert [(a.badge_id, a.tier, a.occurrence, a.points) for a in awards] == [
        ("big", None, 1, 100), ("novice", None, 1, 0), ("adept", None, 1, 0), ("expert", None, 1, 0)]
    assert {a.event_id for a in awards} == {"b"}
    assert awards[2].metadata == {"progress": 100, "target": 50, "level": 2, "levels": 4}
    assert awards[2].award_id != awards[3].award_id
    # Kept once reached; the next ones come with the event that reaches them.
    state, results = run(eng, [event("quiz", event_id=f"q{i}") for i in range(90)], state)
    assert [a.badge_id for a in awards_of(results) if a.badge_id != "quiz"] == ["master"]
    assert [a.event_id for a in awards_of(results) if a.badge_id == "master"] == ["q89"]
    assert state is not None and state.points == 1000 and state.badges["novice"].held


def test_a_level_crossed_by_a_meta_badges_points_in_the_same_event() -> None:
    eng = engine("""
        badges:
          - {id: a, on: [quiz], points: 3, rule: {count: 1}}
          - {id: b, on: [quiz], when: "data.score > 5", points: 3, rule: {count: 1}}
          - {id: meta, points: 20, rule: {badges: [a, b]}}
          - {id: after_silver, rule: {badges: [silver, meta]}}
          - {id: needs_gold, on: [quiz], requires: [gold], points: 1, rule: {count: 1}}
        levels:
          - {id: bronze, at: 6}
          - {id: silver, at: 26}
          - {id: gold, at: 27}
    """)
    _, results = run(eng, [event("quiz", score=1, event_id="one"), event("quiz", score=9, event_id="two")])
    first, second = results
    assert [(a.badge_id, a.points) for a in first.awards] == [("a", 3)]  # below bronze; needs_gold waits
    # b completes the meta-badge; 26 points cross bronze and silver; silver completes after_silver ...
    # ... and needs_gold (waiting) stays waiting: gold needs 27.
    assert [(a.badge_id, a.points) for a in second.awards] == [
        ("b", 3), ("meta", 20), ("bronze", 0), ("silver", 0), ("after_silver", 0)]
    assert second.state.points == 26 and "gold" not in second.state.badges


def test_levels_cascade_into_badges_that_cascade_into_levels() -> None:
    eng = engine("""
        badges:
          - {id: a, on: [quiz], points: 5, rule: {count: 1}}
          - {id: unlocked, on: [quiz], requires: [one], points: 5, rule: {count: 1}}
          - {id: meta, points: 5, rule: {badges: [two]}}
        levels:
          - {id: one, at: 5}
          - {id: two, at: 10}
          - {id: three, at: 15}
    """)
    _, results = run(eng, [event("quiz", event_id="e")])
    assert [(a.badge_id, a.points) for a in awards_of(results)] == [
        ("a", 5), ("one", 0), ("unlocked", 5), ("two", 0), ("meta", 5), ("three", 0)]


def test_a_level_added_to_the_catalog_is_reached_on_the_next_event() -> None:
    badges = ("badges:\n  - {id: a, on: [quiz], points: 5, rule: {count: 1}}\n"
              "  - {id: b, on: [other], rule: {count: 9}}\n")
    state, _ = run(engine(badges), [event("quiz")])
    after = engine(badges + "levels:\n  - {id: l, at: 5}\n")
    _, results = run(after, [event("other", event_id="late")], state)
    assert [(a.badge_id, a.event_id) for a in awards_of(results)] == [("l", "late")]
