"""Explanations of one badge (``evaluators.explain``): every rule kind from a literal user state.

Streak states are built from literal events rather than literal runs, so these tests do not depend on
how a streak stores its periods (only ``streaks.streak_standing`` reads that).
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest

from evaluators.explain import (
    AwardEvidence,
    ReportedProgress,
    explain_badge,
    state_from_awards,
    window_status,
)
from evaluators.resends import ResendWindow, SeenIds, event_digest
from evaluators.state import BadgeState, UserState
from evaluators.streaks import StreakBadge, streak_standing
from evaluators.what_if import what_if
from schemas.catalog.cel import top_level_operands
from tests.unit.support import engine, event, run

CATALOG = """
    levels:
      - {id: rookie, name: Rookie, at: 20}
    badges:
      - {id: first, name: First Quiz, on: [quiz], points: 10, rule: {count: 1}}
      - {id: master, name: Quiz Master, on: [quiz], points: {bronze: 1, silver: 2},
         rule: {tiers: {bronze: 2, silver: 5}}}
      - {id: explorer, name: Explorer, on: [quiz], rule: {distinct: {field: data.quiz_id, count: 3}}}
      - {id: collector, on: [quiz], rule: {sum: {field: data.score, at_least: 100}}}
      - {id: daily, name: Daily, on: [login], rule: {streak: {days: 4, freezes: 1}}}
      - {id: weekly, on: [quiz], rule: {streak: {weeks: 3}}}
      - id: summer
        on: [quiz]
        window: {from: "2026-06-01", until: "2026-09-01"}
        when: "data.score > 5 && local.weekday >= 6"
        rule: {count: 2}
      - {id: recruiter, name: Recruiter, on: [referral], requires: [first], repeatable: true, hidden: true,
         rule: {count: 3}}
      - {id: scholar, name: Scholar, rule: {badges: [first, explorer, daily], at_least: 2}}
      - {id: comeback, on: [login], rule: {evaluator: comeback}}
"""


@pytest.fixture(scope="module")
def eng():  # type: ignore[no-untyped-def]
    return engine(CATALOG)


def badge_state(eng, badge_id: str, **fields: object) -> BadgeState:  # type: ignore[no-untyped-def]
    state = BadgeState(eng.rule(badge_id).fp)
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def user(eng, points: int = 0, **badges: BadgeState) -> UserState:  # type: ignore[no-untyped-def]
    return UserState("u1", badges, catalog_fp=eng.fingerprint, points=points)


def test_an_unknown_id_is_none(eng) -> None:  # type: ignore[no-untyped-def]
    assert explain_badge(eng, "u1", "nope", user(eng)) is None


def test_count_held_carries_its_evidence(eng) -> None:  # type: ignore[no-untyped-def]
    evidence = [AwardEvidence("first", None, 1, "e-9", "2026-03-02T10:00:00+00:00", "a1", "user-events", 2, 41, 10)]
    answer = explain_badge(eng, "u1", "first", user(eng, first=badge_state(eng, "first", n=1, granted=1)),
                           evidence=evidence)
    assert answer is not None
    assert answer["held"] and answer["complete"] and answer["requirements"] is None
    assert answer["parts"] == [{"tier": None, "occurrence": 1, "held": True, "points": 10, "award": {
        "award_id": "a1", "event_id": "e-9", "awarded_at": "2026-03-02T10:00:00+00:00", "topic": "user-events",
        "partition": 2, "offset": 41, "points": 10}}]
    assert answer["last_event"] == {"at": "2026-03-02T10:00:00+00:00", "event_id": "e-9", "what": "award"}
    assert answer["unknown"] == []


def test_tiers_one_held_one_not(eng) -> None:  # type: ignore[no-untyped-def]
    answer = explain_badge(eng, "u1", "master", user(eng, master=badge_state(eng, "master", n=3, tiers=("bronze",))))
    assert answer is not None
    assert [(p["tier"], p["held"]) for p in answer["parts"]] == [("bronze", True), ("silver", False)]
    assert answer["parts"][1] == {"tier": "silver", "occurrence": 1, "held": False, "points": 2,
                                       "progress": 3, "target": 5, "remaining": 2}
    assert answer["held"] and not answer["complete"]
    assert answer["missing"] == ["2 more quiz events for silver"]
    assert "the evidence of tier bronze" in answer["unknown"][0]  # held in the state, no award row given


def test_distinct_and_sum_say_the_field(eng) -> None:  # type: ignore[no-untyped-def]
    state = user(eng, explorer=badge_state(eng, "explorer", n=1, values=frozenset({'"q1"'})),
                 collector=badge_state(eng, "collector", total=Fraction(125, 2)))
    explorer = explain_badge(eng, "u1", "explorer", state)
    collector = explain_badge(eng, "u1", "collector", state)
    assert explorer is not None and collector is not None
    assert explorer["requirements"]["rule"] == {"kind": "distinct", "progress": 1, "target": 3, "remaining": 2,
                                                "field": "data.quiz_id"}
    assert explorer["missing"] == ["2 more different quiz id values in quiz events"]
    assert collector["requirements"]["rule"]["remaining"] == 37.5
    assert collector["missing"] == ["37.5 more score in quiz events"]


def test_a_streak_tells_current_and_best_run_freezes_used_and_periods_missing(eng) -> None:  # type: ignore[no-untyped-def]
    # Logins on Mar 1, 2, then Mar 5, 6 (Mar 3-4 skipped: 2 > 1 freeze), then Mar 8 (Mar 7 skipped: 1 freeze).
    days = ["2026-03-01", "2026-03-02", "2026-03-05", "2026-03-06", "2026-03-08"]
    state, _ = run(eng, [event("login", f"{d}T08:00:00+00:00") for d in days])
    answer = explain_badge(eng, "u1", "daily", state)
    assert answer is not None
    rule = answer["requirements"]["rule"]
    assert (rule["current"], rule["best"], rule["freezes_used"], rule["missing"]) == (3, 3, 1, 1)
    assert (rule["unit"], rule["length"], rule["freezes"], rule["last_active"]) == ("days", 4, 1, "2026-03-08")
    assert answer["missing"] == ["1 more day in a row with login events (current run 3 of 4, 1 of 1 freezes used)"]


def test_a_weekly_streak_counts_iso_weeks(eng) -> None:  # type: ignore[no-untyped-def]
    state, _ = run(eng, [event("quiz", "2026-03-04T08:00:00+00:00", quiz_id="a", score=1),
                         event("quiz", "2026-03-11T08:00:00+00:00", quiz_id="a", score=1)])
    rule = eng.rule("weekly")
    assert isinstance(rule, StreakBadge) and state is not None
    standing = streak_standing(rule, state.badges["weekly"])
    assert (standing["current"], standing["missing"], standing["last_active"]) == (2, 1, "2026-03-09")


def test_a_met_streak_has_nothing_missing(eng) -> None:  # type: ignore[no-untyped-def]
    days = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    state, _ = run(eng, [event("login", f"{d}T08:00:00+00:00") for d in days])
    answer = explain_badge(eng, "u1", "daily", state)
    assert answer is not None and answer["complete"] and answer["missing"] == []


@pytest.mark.parametrize(("today", "status", "words"), [
    (date(2026, 5, 31), "not_yet_open", "the window is not open yet"),
    (date(2026, 6, 1), "open", None),
    (date(2026, 9, 1), "closed", "the window has closed"),
])
def test_the_window_is_told_on_the_users_date(eng, today: date, status: str, words: str | None) -> None:  # type: ignore[no-untyped-def]
    answer = explain_badge(eng, "u1", "summer", user(eng), today=today, tz="Europe/Berlin")
    assert answer is not None
    window = answer["requirements"]["window"]
    assert window == {"from": "2026-06-01", "until": "2026-09-01", "status": status, "today": today.isoformat(),
                      "tz": "Europe/Berlin"}
    assert answer["requirements"]["when"] == "data.score > 5 && local.weekday >= 6"
    window_words = [m for m in answer["missing"] if m.startswith("only from")]
    assert window_words and (words is None or words in window_words[0])
    assert window_status(eng.catalog.badges_by_id["summer"], None) is None


def test_prerequisites_held_and_missing_and_a_met_rule_waiting(eng) -> None:  # type: ignore[no-untyped-def]
    waiting = explain_badge(eng, "u1", "recruiter", user(eng, recruiter=badge_state(eng, "recruiter", n=3)))
    assert waiting is not None
    assert waiting["requirements"]["requires"] == {"held": [], "missing": [{"badge_id": "first",
                                                                             "name": "First Quiz"}]}
    assert waiting["requirements"]["rule"]["met"] is True
    assert "first hold First Quiz" in waiting["missing"]
    # Repeatable: two occurrences held, the third under way.
    state = user(eng, first=badge_state(eng, "first", n=1, granted=1),
                 recruiter=badge_state(eng, "recruiter", n=7, granted=2))
    answer = explain_badge(eng, "u1", "recruiter", state)
    assert answer is not None
    assert [(p["occurrence"], p["held"]) for p in answer["parts"]] == [(1, True), (2, True), (3, False)]
    assert (answer["parts"][2]["progress"], answer["parts"][2]["target"]) == (7, 9)
    assert answer["requirements"]["requires"]["held"] == [{"badge_id": "first", "name": "First Quiz"}]


def test_meta_badge_components_held_and_missing(eng) -> None:  # type: ignore[no-untyped-def]
    state = user(eng, first=badge_state(eng, "first", n=1, granted=1), scholar=badge_state(eng, "scholar", n=1))
    answer = explain_badge(eng, "u1", "scholar", state)
    assert answer is not None
    components = answer["requirements"]["rule"]["components"]
    assert components == {"needed": 2, "held": [{"badge_id": "first", "name": "First Quiz"}],
                          "missing": [{"badge_id": "explorer", "name": "Explorer"},
                                      {"badge_id": "daily", "name": "Daily"}]}
    assert answer["missing"] == ["hold 1 more of: Explorer, Daily"]


def test_custom_evaluator_and_level(eng) -> None:  # type: ignore[no-untyped-def]
    state = user(eng, 12, comeback=badge_state(eng, "comeback", reported=(3.0, 14.0), memory={"last": 1}))
    comeback = explain_badge(eng, "u1", "comeback", state)
    level = explain_badge(eng, "u1", "rookie", state)
    assert comeback is not None and level is not None
    assert comeback["requirements"]["rule"] == {"kind": "evaluator", "progress": 3, "target": 14, "remaining": 11,
                                                "evaluator": "comeback", "params": {}}
    assert (level["kind"], level["name"], level["held"]) == ("level", "Rookie", False)
    assert level["parts"][0]["remaining"] == 8
    assert level["missing"] == ["8 more points (you have 12, Rookie is at 20)"]


def test_without_engine_state_it_explains_from_awards_and_published_progress(eng) -> None:  # type: ignore[no-untyped-def]
    evidence = [AwardEvidence("first", None, 1, "e-1", "2026-03-01T08:00:00+00:00", points=10),
                AwardEvidence("master", "bronze", 1, "e-2", "2026-03-02T08:00:00+00:00", points=1)]
    reported = [ReportedProgress("silver", 4, 5, "2026-03-03T08:00:00+00:00")]
    answer = explain_badge(eng, "u1", "master", None, evidence=evidence, reported=reported, source="database")
    assert answer is not None
    assert answer["state_source"] == "database" and "engine state" in answer["unknown"][0]
    assert answer["parts"][1]["progress"] == 4 and answer["parts"][0]["award"]["event_id"] == "e-2"
    assert answer["last_event"] == {"at": "2026-03-03T08:00:00+00:00", "event_id": None, "what": "progress"}
    streak = explain_badge(eng, "u1", "daily", None, evidence=evidence)
    assert streak is not None and any("current run" in text for text in streak["unknown"])
    rebuilt = state_from_awards(eng, "u1", evidence)
    assert rebuilt.held("first") and rebuilt.held("master") and rebuilt.points == 11


@pytest.mark.parametrize(("source", "expected"), [
    ("a && b", ("&&", ["a", "b"])),
    ("a || b && c", ("||", ["a", "b && c"])),
    ("(a || b) && size(x) > 0", ("&&", ["(a || b)", "size(x) > 0"])),
    ("data.s == 'x && y' || f(a, b)", ("||", ["data.s == 'x && y'", "f(a, b)"])),
    ("a ? b && c : d", (None, ["a ? b && c : d"])),
    ("local.weekday >= 6", (None, ["local.weekday >= 6"])),
])
def test_top_level_operands(source: str, expected: tuple[str | None, list[str]]) -> None:
    assert top_level_operands(source) == expected


# --- what-if, from literal events ---------------------------------------------------------------------

def test_what_if_shows_a_cel_error_and_each_operand(eng) -> None:  # type: ignore[no-untyped-def]
    # A Saturday in the window, but no score: the first operand fails, the second is true.
    answer = what_if(eng, None, event("quiz", "2026-06-06T10:00:00+00:00", quiz_id="q1"))
    summer = next(entry for entry in answer["badges"] if entry["badge_id"] == "summer")
    assert not summer["qualifies"]
    when = summer["checks"][-1]
    assert when["check"] == "when" and when["ok"] is False and "no such key" in when["error"]
    assert [o["value"] for o in when["operands"]] == [None, True] and "error" in when["operands"][0]
    assert answer["errors"] == [{"badge_id": "summer", "kind": "cel", "message": when["error"]}]


def test_what_if_says_why_a_qualifying_event_changes_nothing(eng) -> None:  # type: ignore[no-untyped-def]
    state, _ = run(eng, [event("quiz", quiz_id="q1", score=1)])
    again = what_if(eng, state, event("quiz", "2026-03-03T10:00:00+00:00", quiz_id="q1", score=0))
    explorer = next(entry for entry in again["badges"] if entry["badge_id"] == "explorer")
    assert explorer["qualifies"] and not explorer["changes"]
    assert explorer["no_change"] == "data.quiz_id is missing, or that value was already counted"
    collector = next(entry for entry in again["badges"] if entry["badge_id"] == "collector")
    assert collector["no_change"].startswith("data.score is missing, not a number or not above 0")


def test_what_if_of_an_unheard_type_or_a_duplicate_changes_nothing(eng) -> None:  # type: ignore[no-untyped-def]
    assert what_if(eng, None, event("page_view"))["matched"] is False
    state, _ = run(eng, [event("quiz", quiz_id="q1", event_id="same")])
    seen = SeenIds().with_id(ResendWindow(), event_digest("same"), 0)[0]  # the worker's remembered ids
    duplicate = what_if(eng, state, event("quiz", quiz_id="q2", event_id="same"), seen=seen,
                        record_ms=23 * 3600 * 1000)
    assert duplicate["duplicate"] and duplicate["badges"] == [] and duplicate["awards"] == []


def test_what_if_names_prerequisites_still_missing(eng) -> None:  # type: ignore[no-untyped-def]
    state, _ = run(eng, [event("referral"), event("referral")])
    answer = what_if(eng, state, event("referral"))
    recruiter = answer["badges"][0]
    assert recruiter["progress_after"] == [{"tier": None, "progress": 3, "target": 6}]
    assert recruiter["awards"] == [] and recruiter["requires_missing"] == [{"badge_id": "first", "name": "First Quiz"}]
