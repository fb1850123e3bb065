"""Each rule kind of DESIGN.md "Meaning, precisely", with its edges: time zones, DST, leap days, ISO weeks."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from evaluators.facts import EventFacts
from tests.unit.support import award_keys, awards_of, engine, event, run


def days(start: str, count: int, *, tz: str = "UTC", hour: int = 12, type: str = "login", step: int = 1) -> list:
    first = date.fromisoformat(start)
    return [event(type, f"{first + timedelta(days=i * step)}T{hour:02d}:00:00+00:00", tz=tz) for i in range(count)]


# --- count and tiers -------------------------------------------------------------------------


def test_count_awards_exactly_at_the_target() -> None:
    eng = engine("badges:\n  - {id: three, on: [quiz], rule: {count: 3}}\n")
    _, results = run(eng, [event("quiz") for _ in range(5)])
    assert [len(r.awards) for r in results] == [0, 0, 1, 0, 0]
    award = results[2].awards[0]
    assert (award.badge_id, award.tier, award.occurrence) == ("three", None, 1)
    assert award.metadata == {"progress": 3, "target": 3}


def test_count_progress_records() -> None:
    eng = engine("badges:\n  - {id: three, on: [quiz], rule: {count: 3}}\n")
    _, results = run(eng, [event("quiz") for _ in range(4)])
    assert [[(p.progress, p.target) for p in r.progress] for r in results] == [[(1, 3)], [(2, 3)], [(3, 3)], []]


def test_tiers_are_each_awarded_once_in_order() -> None:
    eng = engine("badges:\n  - {id: qm, on: [quiz], rule: {tiers: {gold: 5, bronze: 1, silver: 3}}}\n")
    _, results = run(eng, [event("quiz") for _ in range(7)])
    assert [(a.tier, a.metadata["progress"]) for a in awards_of(results)] == [("bronze", 1), ("silver", 3), ("gold", 5)]
    assert awards_of(results)[1].metadata == {"progress": 3, "target": 3, "tier_rank": 2, "tiers": 3}
    # Progress: the lowest tier that moved stands for the ones above it (the sink derives them).
    assert [(p.tier, p.progress) for p in results[1].progress] == [("silver", 2)]
    assert [(p.tier, p.progress) for p in results[0].progress] == [("bronze", 1)]


def test_tiers_sharing_a_target_jump_together() -> None:
    eng = engine("badges:\n  - {id: qm, on: [quiz], rule: {tiers: {a: 2, b: 2}}}\n")
    _, results = run(eng, [event("quiz"), event("quiz")])
    assert [a.tier for a in results[1].awards] == ["a", "b"]


def test_tier_jump_when_the_prerequisite_arrives_late() -> None:
    eng = engine("""
        badges:
          - {id: starter, on: [signup], rule: {count: 1}}
          - {id: qm, on: [quiz], requires: [starter], rule: {tiers: {bronze: 2, silver: 4, gold: 9}}}
    """)
    _, results = run(eng, [event("quiz") for _ in range(5)] + [event("signup", "2026-03-09T00:00:00+00:00")])
    assert awards_of(results[:5]) == []
    assert [(a.badge_id, a.tier) for a in results[5].awards] == [("starter", None), ("qm", "bronze"), ("qm", "silver")]
    assert {str(a.awarded_at) for a in results[5].awards} == {"2026-03-09 00:00:00+00:00"}


# --- distinct and sum ----------------------------------------------------------------------------


def test_distinct_counts_values_not_events() -> None:
    eng = engine("badges:\n  - {id: ex, on: [quiz], rule: {distinct: {field: data.quiz_id, count: 3}}}\n")
    values = ["q1", "q1", "q2", "q1", "q2", "q3"]
    _, results = run(eng, [event("quiz", quiz_id=v) for v in values])
    assert [len(r.awards) for r in results] == [0, 0, 0, 0, 0, 1]
    assert awards_of(results)[0].metadata == {"progress": 3, "target": 3, "field": "data.quiz_id"}


def test_distinct_value_identity() -> None:
    eng = engine("badges:\n  - {id: ex, on: [quiz], rule: {distinct: {field: data.v, count: 3}}}\n")
    # 1 and 1.0 are one JSON number, "1" is another value; a missing or null value does not qualify.
    _, results = run(eng, [event("quiz", v=1), event("quiz", v=1.0), event("quiz"), event("quiz", v=None),
                           event("quiz", v="1"), event("quiz", v={"b": 1, "a": 2}), event("quiz", v={"a": 2, "b": 1})])
    assert award_keys(results) == {("ex", None, 1)}
    assert results[5].awards and not results[6].awards


def test_distinct_nested_field_and_envelope_fields() -> None:
    eng = engine("""
        badges:
          - {id: deep, on: [quiz], rule: {distinct: {field: data.quiz.topic, count: 2}}}
          - {id: zones, on: [quiz], rule: {distinct: {field: tz, count: 2}}}
    """)
    _, results = run(eng, [event("quiz", quiz={"topic": "a"}), event("quiz", quiz="flat"),
                           event("quiz", quiz={"topic": "b"}, tz="Asia/Tokyo")])
    assert award_keys(results) == {("deep", None, 1), ("zones", None, 1)}


def test_sum_reaches_the_target() -> None:
    eng = engine("badges:\n  - {id: pts, on: [quiz], rule: {sum: {field: data.score, at_least: 10}}}\n")
    _, results = run(eng, [event("quiz", score=s) for s in (4, 5, 1, 7)])
    assert [len(r.awards) for r in results] == [0, 0, 1, 0]
    assert results[2].awards[0].metadata == {"progress": 10.0, "target": 10.0, "field": "data.score"}


def test_sum_is_exact_and_ignores_what_cannot_count() -> None:
    eng = engine("badges:\n  - {id: pts, on: [quiz], rule: {sum: {field: data.x, at_least: 0.3}}}\n")
    # 0.1 + 0.2 is 0.30000000000000004 in floats; exact sums make the outcome independent of order.
    _, results = run(eng, [event("quiz", x=-5), event("quiz", x=True), event("quiz", x="9"), event("quiz", x=0.1),
                           event("quiz", x=0.2)])
    assert [len(r.awards) for r in results] == [0, 0, 0, 0, 1]
    eng = engine("badges:\n  - {id: pts, on: [quiz], rule: {sum: {field: data.x, at_least: 0.6}}}\n")
    _, results = run(eng, [event("quiz", x=0.1), event("quiz", x=0.2), event("quiz", x=0.3)])
    exact = sum(__import__("fractions").Fraction(v) for v in (0.1, 0.2, 0.3)) >= __import__("fractions").Fraction(0.6)
    assert bool(award_keys(results)) == exact


def test_repeatable_sum() -> None:
    eng = engine("badges:\n  - {id: pts, on: [quiz], repeatable: true, rule: {sum: {field: data.x, at_least: 10}}}\n")
    _, results = run(eng, [event("quiz", x=25), event("quiz", x=5)])
    assert [(a.occurrence, a.metadata["target"]) for a in awards_of(results)] == [(1, 10.0), (2, 20.0), (3, 30.0)]


# --- streaks -------------------------------------------------------------------------------------

STREAK3 = "badges:\n  - {id: streak, on: [login], rule: {streak: {days: 3}}}\n"


def test_day_streak_needs_consecutive_days() -> None:
    eng = engine(STREAK3)
    _, results = run(eng, days("2026-03-01", 2) + days("2026-03-05", 2) + days("2026-03-07", 1))
    assert [len(r.awards) for r in results] == [0, 0, 0, 0, 1]
    assert results[4].awards[0].metadata == {"progress": 3, "target": 3, "unit": "days"}


def test_several_events_on_one_day_count_once() -> None:
    eng = engine(STREAK3)
    _, results = run(eng, days("2026-03-01", 1, hour=1) + days("2026-03-01", 1, hour=20) + days("2026-03-02", 1))
    assert award_keys(results) == set()


def test_streak_in_any_arrival_order_and_any_run() -> None:
    eng = engine(STREAK3)
    events = days("2026-03-01", 1) + days("2026-03-10", 1) + days("2026-03-03", 1) + days("2026-03-02", 1)
    _, results = run(eng, events)
    assert [len(r.awards) for r in results] == [0, 0, 0, 1]  # the gap filled last completes 1..3 March


def test_a_late_event_years_before_the_others_still_completes_a_streak() -> None:
    eng = engine(STREAK3)
    # Every other day for ten years: never met, and every day of it kept.
    state, results = run(eng, days("2016-01-01", 1827, step=2))
    assert award_keys(results) == set()
    # Nine years late, 2 January 2016 arrives and fills the gap between 1 and 3 January.
    state, results = run(eng, days("2016-01-02", 1), state)
    assert award_keys(results) == {("streak", None, 1)}
    assert results[0].awards[0].awarded_at.date() == date(2016, 1, 2)
    # And an event years before the first one moves the start of the kept days back.
    state, results = run(eng, days("2026-01-01", 2) + days("2016-06-02", 1) + days("2016-06-01", 1))
    assert award_keys(results) == set()
    # (Nearly ten years apart: two bitmaps, each from its own first day.)
    assert state.badges["streak"].active == ((date(2016, 6, 1).toordinal(), 0b11), (date(2026, 1, 1).toordinal(), 0b11))
    state, results = run(eng, days("2016-06-03", 1), state)
    assert award_keys(results) == {("streak", None, 1)}


def test_a_late_event_years_after_the_others_still_completes_a_streak() -> None:
    eng = engine(STREAK3)
    # 1 May 2030 first, then years of earlier days (the first kept day moves back ten years), then 3 May.
    state, results = run(eng, days("2030-05-01", 1) + days("2020-01-01", 300, step=3) + days("2030-05-03", 1))
    assert award_keys(results) == set()
    assert state.badges["streak"].active[0][0] == date(2020, 1, 1).toordinal()
    # 2 May 2030, years after nearly everything else, fills the gap.
    state, results = run(eng, days("2030-05-02", 1), state)
    assert award_keys(results) == {("streak", None, 1)}


def test_a_week_streak_completed_by_a_week_years_late() -> None:
    eng = engine("badges:\n  - {id: weekly, on: [login], rule: {streak: {weeks: 3}}}\n")
    # Every other week from 2020 to 2030, then the missing week of January 2020 arrives last.
    state, results = run(eng, days("2020-01-06", 260, step=14))
    assert award_keys(results) == set()
    state, results = run(eng, days("2020-01-16", 1), state)  # a Thursday of the week between the first two
    assert award_keys(results) == {("weekly", None, 1)}
    assert results[0].awards[0].metadata == {"progress": 3, "target": 3, "unit": "weeks"}


def test_day_boundary_is_the_events_own_time_zone() -> None:
    eng = engine(STREAK3)
    # 23:30 UTC on three days is 01:30 the next day in Berlin (CET, +1): still consecutive.
    berlin = [event("login", f"2026-01-0{d}T23:30:00+00:00", tz="Europe/Berlin") for d in (1, 2, 3)]
    assert award_keys(run(eng, berlin)[1]) == {("streak", None, 1)}
    # 2 Jan 23:30 UTC and 3 Jan 00:30 UTC are two days in UTC, but both 3 Jan in Tokyo (+9).
    tokyo = [event("login", t, tz="Asia/Tokyo") for t in
             ("2026-01-02T00:30:00+00:00", "2026-01-02T23:30:00+00:00", "2026-01-03T00:30:00+00:00")]
    assert award_keys(run(eng, tokyo)[1]) == set()
    # And the other way round: Tokyo 4 Jan 08:00 (23:00 UTC on the 3rd) joins 2 and 3 Jan.
    tokyo.append(event("login", "2026-01-03T23:00:00+00:00", tz="Asia/Tokyo"))
    assert award_keys(run(eng, tokyo)[1]) == {("streak", None, 1)}


def test_streak_across_daylight_saving_changes() -> None:
    eng = engine(STREAK3)
    # Berlin springs forward on 29 March 2026 (a 23-hour day) and falls back on 25 October (25 hours).
    spring = [event("login", t, tz="Europe/Berlin") for t in
              ("2026-03-27T23:30:00+01:00", "2026-03-29T00:30:00+01:00", "2026-03-30T00:30:00+02:00")]
    assert [EventFacts(e).local.day for e in spring] == [27, 29, 30]
    assert award_keys(run(eng, spring)[1]) == set()
    spring.insert(1, event("login", "2026-03-28T23:59:00+01:00", tz="Europe/Berlin"))
    assert award_keys(run(eng, spring)[1]) == {("streak", None, 1)}
    autumn = [event("login", t, tz="Europe/Berlin") for t in
              ("2026-10-24T00:10:00+02:00", "2026-10-25T23:50:00+01:00", "2026-10-25T00:10:00+02:00")]
    assert [EventFacts(e).local.day for e in autumn] == [24, 25, 25]
    assert award_keys(run(eng, autumn)[1]) == set()
    autumn.append(event("login", "2026-10-26T00:05:00+01:00", tz="Europe/Berlin"))
    assert award_keys(run(eng, autumn)[1]) == {("streak", None, 1)}


def test_leap_day_is_a_day_of_its_own() -> None:
    eng = engine(STREAK3)
    assert award_keys(run(eng, days("2028-02-28", 2))[1]) == set()  # 28 and 29 February
    leap = days("2028-02-28", 1) + days("2028-03-01", 1)
    assert award_keys(run(eng, leap)[1]) == set()  # 29 February is missing
    leap.append(event("login", "2028-02-29T12:00:00+00:00"))
    assert award_keys(run(eng, leap)[1]) == {("streak", None, 1)}
    # In a common year, 28 February and 1 March are consecutive.
    assert award_keys(run(eng, days("2027-02-27", 1) + days("2027-02-28", 1) + days("2027-03-01", 1))[1]) == {
        ("streak", None, 1)
    }


def test_week_streak_runs_through_iso_week_53() -> None:
    eng = engine("badges:\n  - {id: weekly, on: [login], rule: {streak: {weeks: 3}}}\n")
    # 2026 has 53 ISO weeks: W52 (Mon 21 Dec), W53 (Mon 28 Dec), then 2027-W01 (Mon 4 Jan).
    assert date(2026, 12, 31).isocalendar()[1] == 53
    events = [event("login", f"{d}T12:00:00+00:00") for d in ("2026-12-27", "2026-12-31", "2027-01-10")]
    _, results = run(eng, events)
    assert [len(r.awards) for r in results] == [0, 0, 1]
    assert results[2].awards[0].metadata["unit"] == "weeks"


def test_week_streak_gap_and_same_week() -> None:
    eng = engine("badges:\n  - {id: weekly, on: [login], rule: {streak: {weeks: 2}}}\n")
    # Monday and Sunday of one ISO week are one week; Sunday to the next Monday is two.
    assert award_keys(run(eng, [event("login", "2026-03-02T12:00:00+00:00"),
                                event("login", "2026-03-08T12:00:00+00:00")])[1]) == set()
    assert award_keys(run(eng, [event("login", "2026-03-08T12:00:00+00:00"),
                                event("login", "2026-03-09T12:00:00+00:00")])[1]) == {("weekly", None, 1)}
    assert award_keys(run(eng, [event("login", "2026-03-02T12:00:00+00:00"),
                                event("login", "2026-03-16T12:00:00+00:00")])[1]) == set()


def test_met_streak_drops_its_active_periods() -> None:
    eng = engine(STREAK3)
    state, _ = run(eng, days("2026-02-01", 1) + days("2026-03-01", 3) + days("2026-04-01", 1))
    assert state is not None
    assert state.badges["streak"].active == () and state.badges["streak"].n == 3
    assert "a" not in state.badges["streak"].to_json()


# --- window and when --------------------------------------------------------------------------------

WINDOW = """
badges:
  - id: summer
    on: [quiz]
    window: {from: "2026-06-01", until: "2026-09-01"}
    rule: {count: 1}
"""


@pytest.mark.parametrize(
    ("at", "tz", "qualifies"),
    [
        ("2026-06-01T00:00:00+00:00", "UTC", True),       # from is inclusive
        ("2026-05-31T23:59:59+00:00", "UTC", False),
        ("2026-08-31T23:59:59+00:00", "UTC", True),
        ("2026-09-01T00:00:00+00:00", "UTC", False),      # until is exclusive
        ("2026-05-31T22:30:00+00:00", "Europe/Berlin", True),   # already 1 June in Berlin
        ("2026-08-31T22:30:00+00:00", "Europe/Berlin", False),  # already 1 September in Berlin
        ("2026-09-01T03:00:00+00:00", "America/New_York", True),  # still 31 August in New York
    ],
)
def test_window_edges_in_local_time(at: str, tz: str, qualifies: bool) -> None:
    _, results = run(engine(WINDOW), [event("quiz", at, tz=tz)])
    assert bool(results[0].awards) is qualifies


def test_when_uses_local_variables() -> None:
    eng = engine("""
        badges:
          - {id: weekend, on: [quiz], when: "local.weekday >= 6", rule: {count: 1}}
          - {id: night, on: [quiz], when: "local.hour < 5 && local.month == 3 && local.year == 2026", rule: {count: 1}}
          - {id: dated, on: [quiz], when: "local.date == '2026-03-08'", rule: {count: 1}}
    """)
    # Saturday 7 March 2026, 23:30 UTC is Sunday 8 March 08:30 in Tokyo.
    _, results = run(eng, [event("quiz", "2026-03-06T23:30:00+00:00", tz="UTC")])
    assert award_keys(results) == set()
    _, results = run(eng, [event("quiz", "2026-03-07T23:30:00+00:00", tz="Asia/Tokyo")])
    assert award_keys(results) == {("weekend", None, 1), ("dated", None, 1)}
    _, results = run(eng, [event("quiz", "2026-03-07T19:30:00+00:00", tz="Asia/Tokyo")])
    assert award_keys(results) == {("weekend", None, 1), ("night", None, 1), ("dated", None, 1)}


def test_when_over_data_and_event() -> None:
    eng = engine("""
        badges:
          - id: accurate
            on: [quiz]
            when: "data.total_questions > 0 && data.score * 100 >= 85 * data.total_questions"
            rule: {count: 1}
          - {id: typed, on: [quiz, exam], when: "event.type == 'exam' && event.tz != 'UTC'", rule: {count: 1}}
    """)
    assert award_keys(run(eng, [event("quiz", score=8, total_questions=10)])[1]) == set()
    assert award_keys(run(eng, [event("quiz", score=17, total_questions=20)])[1]) == {("accurate", None, 1)}
    assert award_keys(run(eng, [event("exam", tz="Asia/Tokyo")])[1]) == {("typed", None, 1)}
