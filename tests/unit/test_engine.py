"""The engine as a whole: prerequisites, meta-badge cascades, repeats, isolation, catalog changes."""

from __future__ import annotations

from typing import Any

import pytest

from evaluators.base import Decision, EvaluatorView, evaluator
from evaluators.engine import Engine
from evaluators.registry import EvaluatorRegistry
from evaluators.state import StateDecodeError, UserState
from schemas.records import make_award_id
from tests.unit.support import award_keys, awards_of, catalog, engine, event, run

CASCADE = """
badges:
  - {id: first, on: [quiz], rule: {count: 1}}
  - {id: second, on: [quiz], rule: {count: 2}}
  - {id: login, on: [login], rule: {count: 1}}
  - {id: pair, rule: {badges: [first, second]}}
  - {id: any2, rule: {badges: [first, second, login], at_least: 2}}
  - {id: top, rule: {badges: [pair, any2]}}
"""


def test_award_record_fields() -> None:
    eng = engine("badges:\n  - {id: first, on: [quiz], rule: {count: 1}}\n")
    ev = event("quiz", "2026-03-02T10:00:00+01:00", user="u-42", event_id="e-9")
    (award,) = eng.evaluate(None, ev).awards
    assert award.award_id == make_award_id("u-42", "first", None, 1)
    assert (award.user_id, award.event_id, award.catalog_version, award.kind) == ("u-42", "e-9", "test", "award")
    assert award.awarded_at == ev.occurred_at
    assert award.model_dump(mode="json")["awarded_at"] == "2026-03-02T10:00:00+01:00"


def test_unmatched_event_changes_nothing() -> None:
    eng = engine(CASCADE)
    state = UserState.empty("u1")
    result = eng.evaluate(state, event("page_view"))
    assert (result.matched, result.duplicate, result.awards, result.progress) == (False, False, (), ())
    assert result.state is state


def test_meta_badges_cascade_in_one_event() -> None:
    eng = engine(CASCADE)
    _, results = run(eng, [event("quiz"), event("quiz")])
    assert [a.badge_id for a in results[0].awards] == ["first"]
    assert [a.badge_id for a in results[1].awards] == ["second", "pair", "any2", "top"]
    assert {a.event_id for a in results[1].awards} == {results[1].awards[0].event_id}
    pair = results[1].awards[1]
    assert pair.metadata == {"progress": 2, "target": 2}


def test_meta_badge_at_least() -> None:
    eng = engine(CASCADE)
    _, results = run(eng, [event("login"), event("quiz")])
    assert award_keys(results) == {("login", None, 1), ("first", None, 1), ("any2", None, 1)}


def test_prerequisite_granted_later_grants_with_it() -> None:
    eng = engine("""
        badges:
          - {id: first_quiz, on: [quiz], rule: {count: 1}}
          - {id: recruiter, on: [referral], requires: [first_quiz], rule: {count: 2}}
    """)
    _, results = run(eng, [event("referral"), event("referral"), event("referral"),
                           event("quiz", "2026-04-01T00:00:00+00:00")])
    assert awards_of(results[:3]) == []
    assert [p.progress for p in results[1].progress] == [2.0]  # progress accumulated meanwhile
    assert [a.badge_id for a in results[3].awards] == ["first_quiz", "recruiter"]
    assert str(results[3].awards[1].awarded_at) == "2026-04-01 00:00:00+00:00"


def test_prerequisite_held_first() -> None:
    eng = engine("""
        badges:
          - {id: first_quiz, on: [quiz], rule: {count: 1}}
          - {id: recruiter, on: [referral], requires: [first_quiz], rule: {count: 1}}
    """)
    _, results = run(eng, [event("quiz"), event("referral")])
    assert [a.badge_id for a in results[1].awards] == ["recruiter"]


def test_repeatable_occurrences() -> None:
    eng = engine("""
        badges:
          - {id: first_quiz, on: [quiz], rule: {count: 1}}
          - {id: recruiter, on: [referral], requires: [first_quiz], repeatable: true, rule: {count: 3}}
    """)
    state, results = run(eng, [event("referral") for _ in range(7)] + [event("quiz")])
    assert [(a.badge_id, a.occurrence) for a in results[-1].awards] == [
        ("first_quiz", 1), ("recruiter", 1), ("recruiter", 2)]
    state, results = run(eng, [event("referral") for _ in range(2)], state)
    assert [(a.occurrence, a.metadata) for a in awards_of(results)] == [(3, {"progress": 9, "target": 9})]
    ids = {make_award_id("u1", "recruiter", None, k) for k in (1, 2, 3)}
    assert len(ids) == 3


def test_non_repeatable_badge_is_awarded_once() -> None:
    eng = engine("badges:\n  - {id: one, on: [quiz], rule: {count: 1}}\n")
    _, results = run(eng, [event("quiz") for _ in range(5)])
    assert len(awards_of(results)) == 1


def test_bad_cel_at_runtime_is_isolated() -> None:
    eng = engine("""
        badges:
          - {id: broken, on: [quiz], when: "data.score > 5", rule: {count: 1}}
          - {id: typed, on: [quiz], when: "data.score + 1.5 > 0", rule: {count: 1}}
          - {id: notbool, on: [quiz], when: "data.score", rule: {count: 1}}
          - {id: fine, on: [quiz], rule: {count: 1}}
    """)
    result = eng.evaluate(None, event("quiz", score=3))
    assert [a.badge_id for a in result.awards] == ["fine"]
    kinds = {(f.badge_id, f.kind) for f in result.errors}
    assert kinds == {("typed", "cel"), ("notbool", "cel")}
    result = eng.evaluate(None, event("quiz"))
    assert {(f.badge_id, f.kind) for f in result.errors} == {("broken", "cel"), ("typed", "cel"), ("notbool", "cel")}
    assert "no such key: 'score'" in result.errors[0].message
    assert [a.badge_id for a in result.awards] == ["fine"]


@evaluator("explodes")
def explodes(view: EvaluatorView) -> Decision:
    raise RuntimeError("boom")


@evaluator("nonsense")
def nonsense(view: EvaluatorView) -> Any:
    return {"award": True}


@evaluator("unjsonable")
def unjsonable(view: EvaluatorView) -> Decision:
    return Decision(award=True, memory={"when": object()})


@evaluator("greedy")
def greedy(view: EvaluatorView) -> Decision:
    return Decision(memory={"x": "y" * 10_000})


@evaluator("every_other")
def every_other(view: EvaluatorView) -> Decision:
    """Awards on every second event; tries to cheat by mutating the memory it was handed."""
    seen = int(view.memory.get("seen", 0)) + 1
    view.memory["seen"] = 999  # type: ignore[index]
    return Decision(award=seen % 2 == 0, progress=seen % 2, target=2, memory={"seen": seen})


def custom_registry() -> EvaluatorRegistry:
    registry = EvaluatorRegistry.builtin()
    for func in (explodes, nonsense, unjsonable, greedy, every_other):
        registry.register(func)
    return registry


def test_failing_custom_evaluators_are_isolated() -> None:
    eng = engine("""
        badges:
          - {id: a, on: [quiz], rule: {evaluator: explodes}}
          - {id: b, on: [quiz], rule: {evaluator: nonsense}}
          - {id: c, on: [quiz], rule: {evaluator: unjsonable}}
          - {id: d, on: [quiz], rule: {evaluator: greedy}}
          - {id: fine, on: [quiz], rule: {count: 1}}
    """, custom_registry())
    result = eng.evaluate(None, event("quiz"))
    assert [a.badge_id for a in result.awards] == ["fine"]
    messages = {f.badge_id: f.message for f in result.errors}
    assert all(f.kind == "evaluator" for f in result.errors)
    assert messages["a"] == "evaluator 'explodes' raised RuntimeError: boom"
    assert "returned dict, not a Decision" in messages["b"]
    assert "memory is not JSON" in messages["c"]
    assert "the limit is 4096" in messages["d"]
    assert set(result.state.badges) == {"fine"}


def test_custom_evaluator_memory_and_repeats() -> None:
    eng = engine("badges:\n  - {id: alt, on: [quiz], repeatable: true, rule: {evaluator: every_other}}\n",
                 custom_registry())
    state, results = run(eng, [event("quiz") for _ in range(5)])
    assert [(a.occurrence, a.metadata) for a in awards_of(results)] == [
        (1, {"progress": 0.0, "target": 2.0, "evaluator": "every_other"}),
        (2, {"progress": 0.0, "target": 2.0, "evaluator": "every_other"}),
    ]
    assert state is not None and state.badges["alt"].memory == {"seen": 5}


def test_comeback_evaluator() -> None:
    eng = engine("badges:\n  - {id: comeback, on: [login], rule: {evaluator: comeback}}\n")
    logins = ["2026-01-01T10:00:00+00:00", "2026-01-10T10:00:00+00:00", "2026-01-05T10:00:00+00:00",
              "2026-01-24T09:59:59+00:00", "2026-01-24T10:00:00+00:00", "2026-03-01T10:00:00+00:00"]
    _, results = run(eng, [event("login", t) for t in logins])
    # 24 January 09:59:59 is a second short of 14 days after 10 January (and is a login itself);
    # the late 5 January login changes nothing; 1 March comes after five weeks away.
    assert [len(r.awards) for r in results] == [0, 0, 0, 0, 0, 1]
    _, results = run(eng, [event("login", t) for t in (logins[0], logins[1], logins[5])])
    assert [len(r.awards) for r in results] == [0, 0, 1]
    _, results = run(eng, [event("login", t) for t in ("2026-01-01T10:00:00+00:00", "2026-01-15T10:00:00+00:00")])
    assert [len(r.awards) for r in results] == [0, 1]


def test_definition_change_resets_progress_and_keeps_awards() -> None:
    old = engine("badges:\n  - {id: qm, on: [quiz], rule: {tiers: {bronze: 2, silver: 4}}}\n"
                 "  - {id: stay, on: [quiz], rule: {count: 10}}\n")
    state, _ = run(old, [event("quiz") for _ in range(3)])
    new = engine("badges:\n  - {id: qm, on: [quiz], rule: {tiers: {bronze: 2, silver: 3, gold: 5}}}\n"
                 "  - {id: stay, on: [quiz], rule: {count: 10}}\n")
    result = new.evaluate(state, event("quiz"))
    assert [(f.badge_id, f.kind) for f in result.errors] == [("qm", "definition_changed")]
    assert result.awards == ()  # silver needs 3 under the new definition, counted afresh: 1 so far
    assert result.state.badges["qm"].n == 1 and result.state.badges["qm"].tiers == ("bronze",)
    assert result.state.badges["stay"].n == 4  # unchanged definitions keep their progress
    state, results = run(new, [event("quiz") for _ in range(4)], result.state)
    assert [a.tier for a in awards_of(results)] == ["silver", "gold"]  # bronze is never awarded twice
    assert all(not r.errors for r in results)


def test_catalog_change_awards_a_meta_badge_that_now_holds() -> None:
    old = engine(CASCADE)
    state, _ = run(old, [event("quiz")])
    new = engine(CASCADE + "  - {id: starter, rule: {badges: [first]}}\n")
    result = new.evaluate(state, event("login"))
    assert [a.badge_id for a in result.awards] == ["login", "any2", "starter"]


def test_input_state_is_not_mutated() -> None:
    eng = engine(CASCADE)
    state, _ = run(eng, [event("quiz")])
    assert state is not None
    before = state.to_bytes()
    result = eng.evaluate(state, event("quiz"))
    assert result.awards and state.to_bytes() == before
    assert result.state is not state


def test_state_bytes_round_trip() -> None:
    eng = engine("""
        badges:
          - {id: c, on: [quiz], rule: {tiers: {a: 1, b: 50}}}
          - {id: d, on: [quiz], rule: {distinct: {field: data.q, count: 9}}}
          - {id: s, on: [quiz], rule: {sum: {field: data.x, at_least: 1000}}}
          - {id: k, on: [quiz], rule: {streak: {days: 9}}}
          - {id: e, on: [quiz], repeatable: true, rule: {evaluator: every_other}}
    """, custom_registry())
    state, _ = run(eng, [event("quiz", f"2026-03-0{d}T10:00:00+00:00", q=f"q{d}", x=d + 0.25) for d in (1, 3, 4)])
    assert state is not None
    raw = state.to_bytes()
    again = UserState.from_bytes(raw)
    assert again == state and again.to_bytes() == raw
    assert again.badges["k"].active == ((739676, 0b1101),)  # 1, 3 and 4 March
    assert str(again.badges["s"].total) == "35/4"  # 1.25 + 3.25 + 4.25, exactly
    # The engine goes on from decoded bytes exactly as from the objects.
    follow = event("quiz", "2026-03-02T10:00:00+00:00", q="q2", x=1)
    assert eng.evaluate(again, follow).state.to_bytes() == eng.evaluate(state, follow).state.to_bytes()


@pytest.mark.parametrize("raw", [b"", b"BSu", b"XXX\x01\x00\x00\x00\x02{}", b"BSu\x09\x00\x00\x00\x02{}",
                                 b"BSu\x01\x00\x00\x00\x02{}", b"BSu\x01\x00\x00\x00\x02{}abc",
                                 b"BSu\x01\x00\x00\x00\x05[1,2]", b"BSu\x01\x00\x00\x00\x09{\"b\":{}}"])
def test_bad_state_bytes(raw: bytes) -> None:
    with pytest.raises(StateDecodeError):
        UserState.from_bytes(raw)


def test_engine_refuses_unknown_evaluator_and_checks_catalog() -> None:
    cat = catalog("badges:\n  - {id: a, on: [quiz], rule: {evaluator: mystery}}\n")
    with pytest.raises(Exception, match="unknown custom evaluator 'mystery'"):
        Engine(cat)
    assert Engine(catalog("badges: []\n")).catalog_version == "test"


def test_hidden_badges_are_awarded_like_any_other() -> None:
    eng = engine("badges:\n  - {id: secret, hidden: true, on: [quiz], rule: {count: 1}}\n")
    assert award_keys([eng.evaluate(None, event("quiz"))]) == {("secret", None, 1)}


def test_without_progress_records_state_and_awards_are_the_same() -> None:
    from pathlib import Path

    from schemas.catalog import load_catalog
    from schemas.events import parse_event

    root = Path(__file__).resolve().parents[2]
    demo = Engine(load_catalog(root / "deploy" / "demo" / "catalog.yaml"))
    with_progress: dict[str, UserState] = {}
    without: dict[str, UserState] = {}
    progress_seen = 0
    for line in (root / "deploy" / "demo" / "events.jsonl").read_bytes().splitlines():
        envelope = parse_event(line)
        full = demo.evaluate(with_progress.get(envelope.user_id), envelope)
        lean = demo.evaluate(without.get(envelope.user_id), envelope, with_progress=False)
        assert lean.awards == full.awards
        assert lean.progress == () == lean.progress_entries
        assert lean.state.to_bytes() == full.state.to_bytes()
        # The worker's form: the same progress as entries, the records' time being the event's.
        entries = demo.evaluate(with_progress.get(envelope.user_id), envelope, progress_entries=True)
        assert entries.progress == () and entries.awards == full.awards
        assert entries.progress_entries == tuple((p.badge_id, p.tier, p.progress, p.target) for p in full.progress)
        assert all(p.updated_at == envelope.occurred_at for p in full.progress)
        assert entries.state.to_bytes() == full.state.to_bytes()
        progress_seen += len(full.progress)
        with_progress[envelope.user_id], without[envelope.user_id] = full.state, lean.state
    assert progress_seen > 0


def test_records_built_without_validation_equal_validated_ones() -> None:
    """The engine builds its records with ``trusted_record``, which fills pydantic's per-instance
    slots itself: if a pydantic release changes them, this fails before the worker does."""
    from schemas.records import AwardRecord, ProgressRecord, trusted_record

    eng = engine("badges:\n  - {id: first, on: [quiz], rule: {count: 1}}\n"
                 "  - {id: two, on: [quiz], rule: {count: 2}}\n")
    result = eng.evaluate(None, event("quiz", user="u-1", event_id="e-1"))
    for record in (*result.awards, *result.progress):
        validated = type(record).model_validate(record.model_dump())
        assert record == validated and record.model_dump_json() == validated.model_dump_json()
        assert record.model_fields_set == validated.model_fields_set
    (award,) = result.awards
    assert trusted_record(AwardRecord, {**award.__dict__, "tier": None}) == award
    assert isinstance(trusted_record(ProgressRecord, {**result.progress[0].__dict__}), ProgressRecord)


def test_award_and_nudge_ids_keep_their_digests() -> None:
    """Ids already stored and published must stay recognisable: these are the digests of the first
    implementation (one ``update`` per length-prefixed part), pinned."""
    from schemas.records import make_nudge_id

    assert make_award_id("u-42", "quiz_master", "gold", 1) == "bec152c6fb0329aefb5288341e1abe74"
    assert make_award_id("ü", "b", None, 12) == "d7ff37c55697e66abd3b3a21efe01c9c"
    assert make_nudge_id("u-42", "quiz_master", "gold", 1, 2) == "ec6515c2f60dc6cd8d20a0326f3abde1"
