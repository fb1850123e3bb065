"""What-if tells the truth: on the demo catalog, what ``evaluators.explain.what_if`` predicts for an event is
what :meth:`Engine.evaluate` then does with it (awards, levels, nudges, progress, points), and it stores nothing.

Hypothesis, derandomised (the same examples every run): random users' histories, then one more event,
sometimes a resend of an earlier one. A second engine, built separately from the same catalog, gives
the "then": the prediction must not depend on anything the predicting engine kept.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluators.engine import Engine
from evaluators.runner import EngineRun
from evaluators.state import UserState
from evaluators.what_if import what_if
from schemas.catalog import load_catalog
from schemas.events import EventEnvelope
from streams.settings import DEMO_CATALOG
from tests.unit.support import event

CATALOG = load_catalog(DEMO_CATALOG)
PREDICTING = Engine(CATALOG)
DECIDING = Engine(CATALOG)
START = datetime(2026, 5, 20, 6, tzinfo=UTC)  # the summer window opens within reach


@st.composite
def events(draw: st.DrawFn, user: str = "u1") -> EventEnvelope:
    kind = draw(st.sampled_from(["quiz_completed", "quiz_completed", "user_logged_in", "referral_signup"]))
    at = START + timedelta(hours=draw(st.integers(0, 24 * 40)))  # dense enough for streaks and nudges
    tz = draw(st.sampled_from(["UTC", "Europe/Berlin", "Pacific/Auckland"]))
    if kind == "quiz_completed":
        total = draw(st.integers(1, 10))
        data: dict[str, Any] = {"quiz_id": f"q{draw(st.integers(0, 6))}", "score": draw(st.integers(0, total)),
                                "total_questions": total}
    elif kind == "referral_signup":
        data = {"referred_user_id": f"r{draw(st.integers(0, 50))}"}
    else:
        data = {}
    return event(kind, at, user=user, tz=tz, **data)


def _awards(records: Any) -> list[tuple[Any, ...]]:
    return [(a.badge_id, a.tier, a.occurrence, a.points, a.award_id) for a in records]


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(events(), max_size=40), next_event=events(), resend=st.integers(-1, 39))
def test_what_if_predicts_what_the_engine_then_does(history: list[EventEnvelope], next_event: EventEnvelope,
                                                    resend: int) -> None:
    if 0 <= resend < len(history):
        next_event = history[resend]  # an upstream resend: a duplicate changes nothing
    check(history, next_event)


def _quiz(day: int, quiz: str = "q1", score: int = 9) -> EventEnvelope:
    return event("quiz_completed", START + timedelta(days=day), quiz_id=quiz, score=score, total_questions=10)


def _login(day: int) -> EventEnvelope:
    return event("user_logged_in", START + timedelta(days=day))


def test_what_if_on_chosen_histories_that_award_level_up_and_nudge() -> None:
    """The property's check on histories chosen to reach each kind of outcome at least once."""
    # The third quiz: quiz_master bronze (5) is 2 away, its nudge; the first quiz has already awarded.
    nudged = check([_quiz(0), _quiz(1)], _quiz(2))
    assert [(n["badge_id"], n["remaining"]) for n in nudged["nudges"]] == [("quiz_master", 2.0)]
    # Five different quizzes: explorer, then scholar by cascade, and the points reach Rookie.
    levelled = check([_quiz(day, f"q{day}") for day in range(4)], _quiz(4, "q4"))
    assert {"explorer", "scholar"} <= {a["badge_id"] for a in levelled["awards"]}
    assert "scholar" in levelled["cascade"]
    assert [a["name"] for a in levelled["levels"]] == ["Rookie"]
    # Six days of logins, then the seventh: daily_warrior.
    streak = check([_login(day) for day in range(6)], _login(6))
    assert [a["badge_id"] for a in streak["awards"]] == ["daily_warrior"]
    # A quiz below 85%: accuracy_expert does not qualify, and says which operand was false.
    low = check([], _quiz(0, score=3))
    accuracy = next(b for b in low["badges"] if b["badge_id"] == "accuracy_expert")
    when = accuracy["checks"][-1]
    assert not accuracy["qualifies"] and when["operator"] == "&&"
    assert [o["value"] for o in when["operands"]] == [True, False]
    # Outside the summer window.
    summer = next(b for b in low["badges"] if b["badge_id"] == "summer_scholar")
    assert not summer["qualifies"] and summer["checks"][-1] == {
        "check": "window", "ok": False, "local_date": "2026-05-20", "from": "2026-06-01", "until": "2026-09-01"}


def check(history: list[EventEnvelope], next_event: EventEnvelope) -> dict[str, Any]:
    """Run ``history``, predict ``next_event``, let a separate engine decide it; assert they agree."""
    past = EngineRun(PREDICTING)
    for past_event in history:
        past.evaluate(past_event)
    state = past.states.get("u1", UserState.empty("u1"))
    stored = state.to_bytes()

    prediction = what_if(PREDICTING, state, next_event)
    assert state.to_bytes() == stored  # a dry run keeps nothing
    actual = DECIDING.evaluate(state, next_event)

    predicted_awards = [(a["badge_id"], a["tier"], a["occurrence"], a["points"], a["award_id"])
                        for a in prediction["awards"] + prediction["levels"]]
    assert sorted(predicted_awards) == sorted(_awards(actual.awards))
    assert {a["badge_id"] for a in prediction["levels"]} == {
        a.badge_id for a in actual.awards if a.badge_id in CATALOG.levels_by_id}
    assert prediction["nudges"] == [n.model_dump(mode="json") for n in actual.nudges]
    assert prediction["progress"] == [p.model_dump(mode="json") for p in actual.progress]
    assert prediction["points"] == {"before": state.points, "after": actual.state.points}
    assert prediction["duplicate"] == actual.duplicate

    # Each badge's verdict agrees with what happened to it: no change without qualifying, and the
    # progress after is the progress of the engine's new state.
    for entry in prediction["badges"]:
        rule = DECIDING.rule(entry["badge_id"])
        assert rule is not None
        old, new = state.badges.get(rule.id), actual.state.badges.get(rule.id)
        changed = new is not None and new != old
        assert entry["changes"] == changed, entry
        if changed:
            assert entry["qualifies"], entry
        if entry["qualifies"] and not changed and "error" not in entry:
            assert entry["no_change"]
        after = [(p["tier"], p["progress"], p["target"]) for p in entry["progress_after"]]
        assert after == [(tier, value, target) for tier, value, target in rule.progress(new or rule.fresh())]
    if not actual.duplicate:
        listening = {rule.id for rule in DECIDING.listeners(next_event.type)}
        assert {entry["badge_id"] for entry in prediction["badges"]} == listening
    return prediction
