"""The worker's per-message decision (streams/worker/processor.py) with literal bytes: no Faust, no Kafka.

What the agent must do for one message: dead-letter it, evaluate it against the stored state and
store the new state, or, for a redelivered event, publish the same awards and latest progress again.
"""

from __future__ import annotations

from datetime import datetime

import orjson

from evaluators.engine import Engine
from schemas.records import AwardRecord, DeadLetterRecord, ProgressRecord
from streams.worker.processor import EventProcessor, Outcome
from streams.worker.stored import OUTBOX_EVENTS, StoredUser, progress_bytes
from tests.unit.support import catalog

CATALOG = catalog("""
    events:
      quiz_completed: {required: {score: int}}
    badges:
      - {id: first_quiz, on: [quiz_completed], rule: {count: 1}}
      - {id: two_quizzes, on: [quiz_completed], rule: {count: 2}}
      - {id: every_review, on: [review_written], repeatable: true, rule: {count: 1}}
""")


def processor() -> EventProcessor:
    return EventProcessor(CATALOG, Engine(CATALOG))


def raw(event_id: str, at: str = "2026-03-02T10:00:00+00:00", type: str = "quiz_completed", **data: object) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": type, "user_id": "u1", "occurred_at": at,
                         "data": data or {"score": 5}})


def published_progress(outcome: Outcome) -> list[ProgressRecord]:
    return [ProgressRecord.model_validate_json(value) for _, value in outcome.progress.records()] \
        if outcome.progress is not None else []


def test_bad_input_becomes_a_dead_letter_with_the_original_bytes_and_where_it_was() -> None:
    outcome = processor().process(b"u1", b"\xffnot json", "user-events", 3, 41, None)
    assert outcome.status == "dead_letter" and outcome.new_state is None and not outcome.awards
    assert outcome.dead_letter is not None
    letter = DeadLetterRecord.model_validate_json(outcome.dead_letter)
    assert (letter.source_topic, letter.partition, letter.offset, letter.error_code) == ("user-events", 3, 41,
                                                                                          "invalid_json")
    assert letter.original_value() == b"\xffnot json" and letter.key == "u1"


def test_a_tombstone_and_a_failed_type_check_are_dead_lettered_with_their_codes() -> None:
    tombstone = processor().process(b"u1", None, "t", 0, 0, None)
    assert DeadLetterRecord.model_validate_json(tombstone.dead_letter or b"").error_code == "invalid_json"
    unchecked = processor().process(b"u1", raw("e1", score="five"), "t", 0, 1, None)
    letter = DeadLetterRecord.model_validate_json(unchecked.dead_letter or b"")
    assert letter.error_code == "invalid_data" and "data.score" in letter.reason


def test_an_event_stores_the_new_state_and_publishes_its_awards_and_progress() -> None:
    outcome = processor().process(b"u1", raw("e1"), "t", 0, 0, None)
    assert outcome.status == "processed" and outcome.new_state is not None
    awards = [AwardRecord.model_validate_json(a) for a in outcome.awards]
    assert [a.badge_id for a in awards] == ["first_quiz"] == [a.badge_id for a in outcome.granted]
    assert {p.badge_id: p.progress for p in published_progress(outcome)} == {"first_quiz": 1, "two_quizzes": 1}
    stored = StoredUser.from_bytes(outcome.new_state)
    assert stored.awards_for("e1") == tuple(outcome.awards)


def test_a_redelivered_event_changes_nothing_but_publishes_the_same_records_again() -> None:
    proc = processor()
    first = proc.process(b"u1", raw("e1"), "t", 0, 0, None)
    again = proc.process(b"u1", raw("e1"), "t", 0, 0, first.new_state)
    assert again.status == "duplicate" and again.new_state is None
    assert again.awards == first.awards  # the same award ids: the sink absorbs the repeat
    assert sorted(published_progress(again), key=str) == sorted(published_progress(first), key=str)


def test_an_event_no_badge_listens_to_leaves_the_state_alone() -> None:
    outcome = processor().process(b"u1", raw("e1", type="page_view"), "t", 0, 0, None)
    assert outcome.status == "unmatched" and outcome.new_state is None and not outcome.awards


def test_the_stored_latest_progress_keeps_the_newest_and_a_tie_goes_to_the_later_record() -> None:
    proc = processor()
    late = proc.process(b"u1", raw("e1", at="2026-03-02T12:00:00+00:00"), "t", 0, 0, None)
    early = proc.process(b"u1", raw("e2", at="2026-03-02T09:00:00+00:00"), "t", 0, 1, late.new_state)
    stored = StoredUser.from_bytes(early.new_state or b"")
    # two_quizzes moved to 2 with the earlier-timed event: the sink keeps the newer record (progress 1).
    assert stored.progress[("two_quizzes", None)][:3] == [1, 2, datetime.fromisoformat("2026-03-02T12:00:00+00:00")]
    assert [p.progress for p in published_progress(early) if p.badge_id == "two_quizzes"] == []  # the sink keeps 1
    latest, changed = stored.with_progress([("two_quizzes", None, 2, 2)],
                                           datetime.fromisoformat("2026-03-02T12:00:00+00:00"))
    assert latest[("two_quizzes", None)][0] == 2 and changed == (("two_quizzes", None),)  # a tie: the later wins


def test_a_progress_record_is_built_as_pydantic_writes_it() -> None:
    for at in ("2026-03-02T12:00:00+00:00", "2026-03-02T12:00:00.000120+01:00", "2026-03-02T12:00:00-05:30"):
        for progress, target in ((1, 3), (2.5, 100.0), (0, 7)):
            for tier in (None, "gold"):
                record = ProgressRecord(user_id="u1", badge_id="b", tier=tier, progress=progress, target=target,
                                        updated_at=at)
                built = progress_bytes("u1", ("b", tier), [progress, target, record.updated_at, None])
                assert built == record.model_dump_json().encode()


def test_the_stored_value_round_trips_and_the_outbox_is_bounded() -> None:
    proc = processor()
    stored: bytes | None = None
    for n in range(OUTBOX_EVENTS + 5):
        outcome = proc.process(b"u1", raw(f"e{n}", type="review_written"), "t", 0, n, stored)
        assert outcome.awards  # every review is awarded: every event enters the outbox
        stored = outcome.new_state
    user = StoredUser.from_bytes(stored or b"")
    assert StoredUser.from_bytes(user.to_bytes()) == user
    assert len(user.outbox) == OUTBOX_EVENTS  # the oldest are dropped, the newest kept
    assert not user.awards_for("e0") and user.awards_for(f"e{OUTBOX_EVENTS + 4}")


def test_award_records_are_written_as_pydantic_writes_them() -> None:
    """award_bytes skips pydantic's serialiser; the bytes are the same (the outbox keeps them, the sink reads them)."""
    from evaluators.runner import plugin_engine
    from schemas.catalog import load_catalog
    from streams.devstack.simulate import simulate_events
    from streams.settings import Settings
    from streams.worker.processor import award_bytes
    from streams.worker.stored import Origin

    demo = load_catalog(Settings().catalog_path)
    engine, states, checked = plugin_engine(demo), {}, 0
    for n, event in enumerate(simulate_events(20, 1500, seed=5)):
        envelope = EventProcessor(demo, engine).decode(orjson.dumps(event))
        evaluation = engine.evaluate(states.get(envelope.user_id), envelope)
        states[envelope.user_id] = evaluation.state
        for award in (*evaluation.awards, *engine.with_source(evaluation.awards, Origin("t", 1, n).evidence())):
            assert award_bytes(award) == award.model_dump_json().encode()
            checked += 1
    odd = AwardRecord(award_id="a", user_id="u", badge_id="b", awarded_at="2026-03-02T10:00:00.5-05:30",
                      event_id="e", catalog_version="v", metadata={"seen": {1, 2}})  # orjson cannot write a set
    assert award_bytes(odd) == odd.model_dump_json().encode()
    assert checked > 100
