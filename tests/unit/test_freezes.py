"""Streak freezes (DESIGN.md "Badge catalog"): a range of periods with N active and at most F skipped ones.

Run detection is checked against a brute-force reading of the definition, and around the local
calendar's awkward places: daylight-saving changes, ISO week 53 and a leap day.
"""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta

import pytest

from evaluators.facts import EventFacts
from tests.unit.support import award_keys, awards_of, engine, event, run


def logins(*days: str, tz: str = "UTC", hour: int = 12) -> list:
    return [event("login", f"{d}T{hour:02d}:00:00+00:00", tz=tz) for d in days]


def streak(days: int | None = None, weeks: int | None = None, freezes: int = 0) -> str:
    unit = f"days: {days}" if days is not None else f"weeks: {weeks}"
    return f"badges:\n  - {{id: s, on: [login], rule: {{streak: {{{unit}, freezes: {freezes}}}}}}}\n"


def brute_force(active: set[int], length: int, freezes: int) -> bool:
    """The definition word for word: some [a, b], a and b active, >= length active, <= freezes inactive."""
    for a, b in itertools.combinations_with_replacement(sorted(active), 2):
        held = sum(1 for p in active if a <= p <= b)
        if held >= length and (b - a + 1) - held <= freezes:
            return True
    return False


def test_award_comes_exactly_when_the_definition_is_first_met() -> None:
    rnd = random.Random(16)
    first = date(2026, 3, 1)
    engines = {(n, f): engine(streak(days=n, freezes=f)) for n in range(1, 6) for f in range(4)}
    for _ in range(400):
        (length, freezes), eng = rnd.choice(list(engines.items()))
        offsets = [rnd.randrange(25) for _ in range(rnd.randint(1, 14))]
        state, seen = None, set()
        for offset in offsets:
            result = eng.evaluate(state, logins(str(first + timedelta(days=offset)))[0])
            state = result.state
            was_met = brute_force(seen, length, freezes) if seen else False
            seen.add(offset)
            assert bool(result.awards) == (brute_force(seen, length, freezes) and not was_met), (
                length, freezes, offsets)


def test_freezes_bridge_gaps_within_one_budget_for_the_whole_range() -> None:
    eng = engine(streak(days=4, freezes=2))
    # 1, 3, 5, 6: two skipped days (2 and 4) in total, four active: awarded on the 6th.
    _, results = run(eng, logins("2026-03-01", "2026-03-03", "2026-03-05", "2026-03-06"))
    assert [len(r.awards) for r in results] == [0, 0, 0, 1]
    assert results[3].awards[0].metadata == {"progress": 4, "target": 4, "unit": "days"}
    # 1, 3, 5, 7: three skipped days (a budget for the range, not per gap): not yet.
    _, results = run(eng, logins("2026-03-01", "2026-03-03", "2026-03-05", "2026-03-07"))
    assert awards_of(results) == []
    # Skipped days do not count towards the length: 1 and 4 (two skipped) are only two active days.
    _, results = run(eng, logins("2026-03-01", "2026-03-04", "2026-03-05"))
    assert awards_of(results) == []


def test_freezes_in_any_arrival_order() -> None:
    eng = engine(streak(days=4, freezes=1))
    days = ["2026-03-01", "2026-03-02", "2026-03-04", "2026-03-05", "2026-03-09"]
    for order in itertools.permutations(days):
        assert award_keys(run(eng, logins(*order))[1]) == {("s", None, 1)}, order


def test_freezes_zero_is_the_plain_streak() -> None:
    plain = engine("badges:\n  - {id: s, on: [login], rule: {streak: {days: 3}}}\n")
    zero = engine(streak(days=3, freezes=0))
    assert plain.catalog.fingerprint == zero.catalog.fingerprint  # stored progress stays valid
    events = logins("2026-03-01", "2026-03-03", "2026-03-04", "2026-03-06", "2026-03-05")
    assert [r.awards for r in run(plain, events)[1]] == [r.awards for r in run(zero, events)[1]]


def test_progress_counts_active_days_only() -> None:
    eng = engine(streak(days=5, freezes=1))
    _, results = run(eng, logins("2026-03-01", "2026-03-03"))
    assert [(p.progress, p.target) for p in results[-1].progress] == [(2.0, 5.0)]


def test_freezes_across_daylight_saving_changes() -> None:
    eng = engine(streak(days=3, freezes=1))
    # Berlin springs forward on Sunday 29 March 2026. At 22:30 UTC every day the local date is the
    # same day before the change (23:30 CET) and the next day after it (00:30 CEST): three UTC days
    # in a row are 27, 28 and 30 March in Berlin, and the local 29th is the skipped day.
    spring = [event("login", f"2026-03-{d}T22:30:00+00:00", tz="Europe/Berlin") for d in (27, 28, 29)]
    assert [EventFacts(e).local.day for e in spring] == [27, 28, 30]
    assert award_keys(run(engine(streak(days=3)), spring)[1]) == set()
    assert award_keys(run(eng, spring)[1]) == {("s", None, 1)}
    spring_four = [*spring, event("login", "2026-03-30T22:30:00+00:00", tz="Europe/Berlin")]  # 31 March
    assert award_keys(run(engine(streak(days=4, freezes=1)), spring_four)[1]) == {("s", None, 1)}
    assert award_keys(run(engine(streak(days=4, freezes=0)), spring_four)[1]) == set()
    # Falling back on 25 October: two events in the 25-hour day are one day; 24 and 26 are still two apart.
    autumn = [event("login", t, tz="Europe/Berlin") for t in
              ("2026-10-24T00:10:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00",
               "2026-10-27T00:05:00+01:00")]
    assert [EventFacts(e).local.day for e in autumn] == [24, 25, 25, 27]
    assert award_keys(run(eng, autumn)[1]) == {("s", None, 1)}  # 24, 25, (26 frozen), 27
    strict = engine(streak(days=4, freezes=1))
    assert award_keys(run(strict, autumn)[1]) == set()  # only three distinct active days


def test_freezes_through_iso_week_53() -> None:
    eng = engine(streak(weeks=3, freezes=1))
    # 2026 has 53 ISO weeks: W52 (Mon 21 Dec), W53 (Mon 28 Dec), 2027-W01 (Mon 4 Jan), W02 (Mon 11 Jan).
    assert date(2026, 12, 31).isocalendar()[1] == 53
    # Active in W52, 2027-W01 and W02: W53 is the one frozen week.
    events = logins("2026-12-21", "2027-01-04", "2027-01-17")
    _, results = run(eng, events)
    assert [len(r.awards) for r in results] == [0, 0, 1]
    # Had W53 not existed, W52 and 2027-W01 would be adjacent; it does, so W51, W53 and W02 skip two weeks.
    _, results = run(eng, logins("2026-12-14", "2026-12-28", "2027-01-11"))
    assert awards_of(results) == []


@pytest.mark.parametrize(("start", "expected"), [("2028-02-27", set()), ("2027-02-27", {("s", None, 1)})])
def test_freezes_around_a_leap_day(start: str, expected: set) -> None:
    eng = engine(streak(days=3, freezes=1))
    first = date.fromisoformat(start)
    # The 27th, then two days later (1 March in a common year, the leap day 29 February in 2028), then 3 days on.
    days = [first, first + timedelta(days=2), first + timedelta(days=3)]
    assert award_keys(run(eng, logins(*map(str, days)))[1]) == {("s", None, 1)}
    # 27 February and 1 March, one freeze: in 2028 two days (28, 29) lie between, in 2027 only the 28th.
    awards = award_keys(run(eng, logins(str(first), f"{first.year}-03-01", f"{first.year}-03-02"))[1])
    assert awards == expected


def test_freezes_with_events_years_late() -> None:
    eng = engine(streak(days=4, freezes=1))
    # Every third day for eight years (two skipped days per gap: never within one freeze).
    history = [str(date(2018, 1, 1) + timedelta(days=3 * i)) for i in range(975)]
    state, results = run(eng, logins(*history))
    assert awards_of(results) == []
    # Years late: 2 January 2018 joins 1 and 4 January (3 January is the one freeze); 5 January is
    # still missing, so nothing yet.
    state, results = run(eng, logins("2018-01-02"), state)
    assert awards_of(results) == []
    state, results = run(eng, logins("2018-01-05"), state)  # 1, 2, (3), 4, 5: four active, one freeze
    assert award_keys(results) == {("s", None, 1)}
    assert results[0].awards[0].metadata == {"progress": 4, "target": 4, "unit": "days"}


def test_week_freezes_with_a_week_years_late() -> None:
    eng = engine(streak(weeks=3, freezes=1))
    # Mondays three weeks apart for six years (two skipped weeks per gap), then, six years late, the
    # week after the first one.
    state, results = run(eng, logins(*(str(date(2021, 1, 4) + timedelta(weeks=3 * i)) for i in range(100))))
    assert awards_of(results) == []
    state, results = run(eng, logins("2021-01-13"), state)  # the week after the first: W01, W02, (W03), W04
    assert award_keys(results) == {("s", None, 1)}


def test_a_freeze_budget_longer_than_the_split_gap_still_bridges() -> None:
    from evaluators.streaks import STREAK_SPLIT_GAP

    freezes = STREAK_SPLIT_GAP + 72
    eng = engine(streak(days=3, freezes=freezes))
    first = date(2026, 1, 1)
    # Days 0, 150 and 201 in any order: 198 days skipped in [0, 201], within the budget.
    days = [str(first + timedelta(days=d)) for d in (0, 150, 201)]
    for order in itertools.permutations(days):
        assert award_keys(run(eng, logins(*order))[1]) == {("s", None, 1)}, order
    # With day freezes + 3 (203) instead of 201, [0, 203] skips 201 days: one too many.
    assert awards_of(run(eng, logins(*days[:2], str(first + timedelta(days=freezes + 3))))[1]) == []
