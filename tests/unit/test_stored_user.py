"""The worker's stored value per user: redelivery by input offset, the resend window, pruning, size."""

from __future__ import annotations

from datetime import datetime

import orjson

from evaluators.resends import CHUNK_IDS, CHUNKS, SeenIds, event_digest
from evaluators.runner import plugin_engine
from schemas.catalog import load_catalog
from streams.devstack.simulate import simulate_events
from streams.settings import DEMO_CATALOG
from streams.worker.processor import EventProcessor, Outcome
from streams.worker.stored import Origin, StoredUser

CATALOG = load_catalog(DEMO_CATALOG)
PROCESSOR = EventProcessor(CATALOG, plugin_engine(CATALOG))


def quiz(n: int, user: str = "u", day: int = 2) -> bytes:
    return orjson.dumps({"event_id": f"e{n}", "type": "quiz_completed", "user_id": user, "tz": "UTC",
                         "occurred_at": f"2026-05-{day:02d}T10:{n % 60:02d}:00+00:00",
                         "data": {"quiz_id": f"q{n % 7}", "score": 9, "total_questions": 10}})


HOUR_MS = 3600 * 1000


def feed(values: list[bytes], stored: bytes | None = None, first_offset: int = 0,
         committed: int | None = None, seen: SeenIds | None = None,
         record_ms: int = 0) -> tuple[bytes | None, list[Outcome]]:
    outcomes = []
    for offset, value in enumerate(values, first_offset):
        outcome = PROCESSOR.evaluate(PROCESSOR.decode(value), stored, ("in", 0, offset),
                                     None if committed is None else (lambda t, p: committed),
                                     seen=seen, record_ms=record_ms)
        stored = outcome.new_state if outcome.new_state is not None else stored
        seen = outcome.seen if outcome.seen is not None else seen
        outcomes.append(outcome)
    return stored, outcomes


def test_a_redelivery_is_recognised_by_offset_however_old() -> None:
    events = [quiz(n) for n in range(200)]
    stored, outcomes = feed(events)
    assert outcomes[0].awards  # first_quiz and more
    # kill -9 before the first offset commit: everything is read again from offset 0, far beyond
    # the event-id window. Nothing is counted twice, and the first event's awards go out again.
    again = PROCESSOR.evaluate(PROCESSOR.decode(events[0]), stored, ("in", 0, 0))
    assert again.status == "duplicate" and again.new_state is None
    assert again.awards == outcomes[0].awards
    _, replays = feed(events, stored)
    assert all(o.status == "duplicate" and o.new_state is None for o in replays)
    assert [a for o in replays for a in o.awards] == [a for o in outcomes for a in o.awards]


def test_the_next_offset_after_a_redelivery_is_evaluated() -> None:
    stored, _ = feed([quiz(1), quiz(2)])
    later = PROCESSOR.evaluate(PROCESSOR.decode(quiz(3)), stored, ("in", 0, 2))
    assert later.status == "processed" and later.new_state is not None
    other_partition = PROCESSOR.evaluate(PROCESSOR.decode(quiz(4)), stored, ("in", 1, 0))
    assert other_partition.status == "processed"  # offsets of another partition are not comparable
    assert StoredUser.from_bytes(later.new_state).marks == {("in", 0, False): 2}


def fed_with_ids(count: int) -> tuple[bytes | None, SeenIds]:
    stored, outcomes = feed([quiz(n) for n in range(count)])
    seen = [o.seen for o in outcomes if o.seen is not None][-1]
    return stored, seen


def test_an_upstream_resend_within_the_window_changes_nothing() -> None:
    # 1,000 events later and 23 hours later in record time: the same id in a new message.
    stored, seen = fed_with_ids(1000)
    resend = PROCESSOR.evaluate(PROCESSOR.decode(quiz(1)), stored, ("in", 0, 1000), seen=seen,
                                record_ms=23 * HOUR_MS)
    assert resend.status == "duplicate" and resend.new_state is None and not resend.progress
    assert StoredUser.from_bytes(stored or b"").id_buckets == tuple(sorted(seen.buckets))


def test_an_upstream_resend_beyond_the_window_counts_again() -> None:
    """The documented limit: 24 hours of record time by default."""
    stored, seen = fed_with_ids(10)
    resend = PROCESSOR.evaluate(PROCESSOR.decode(quiz(0)), stored, ("in", 0, 10), seen=seen,
                                record_ms=25 * HOUR_MS)
    assert resend.status == "processed"


def test_an_id_stored_before_its_state_does_not_hide_its_own_redelivery() -> None:
    """A crash inside a commit: the event's id reached the resend table, the value did not. The
    message read again is the same message (same origin), not a resend: it is evaluated."""
    stored, seen = fed_with_ids(3)
    first = PROCESSOR.evaluate(PROCESSOR.decode(quiz(3)), stored, ("in", 0, 3), seen=seen)
    assert first.status == "processed" and first.seen is not None
    again = PROCESSOR.evaluate(PROCESSOR.decode(quiz(3)), stored, ("in", 0, 3), seen=first.seen)
    assert again.status == "processed" and again.granted == first.granted
    elsewhere = PROCESSOR.evaluate(PROCESSOR.decode(quiz(3)), stored, ("in", 1, 9), seen=first.seen)
    assert elsewhere.status == "duplicate"  # the same id in another message is a resend


def test_a_redelivery_whose_ids_were_lost_remembers_them_again() -> None:
    stored, _ = fed_with_ids(3)
    lost = SeenIds()  # the value reached the table, the ids of its events did not
    again = PROCESSOR.evaluate(PROCESSOR.decode(quiz(2)), stored, ("in", 0, 2), seen=lost)
    assert again.status == "duplicate" and again.new_state is None
    assert again.seen is not None and again.seen.remembers(event_digest("e2"), Origin("in", 0, 2).tag)
    resend = PROCESSOR.evaluate(PROCESSOR.decode(quiz(2)), stored, ("in", 0, 3), seen=again.seen)
    assert resend.status == "duplicate"  # so a later resend of it is still recognised


def test_an_id_remembered_again_into_a_new_chunk_is_listed_in_the_value() -> None:
    """The chunk the re-remembered id goes to must be one the value lists, or it is never read back."""
    stored, _ = fed_with_ids(1)
    full = SeenIds()
    for n in range(CHUNK_IDS):  # the user's first chunk, full of other ids
        full = full.with_id(PROCESSOR.window, event_digest(f"other{n}"), 0, tag=n)[0]
    again = PROCESSOR.evaluate(PROCESSOR.decode(quiz(0)), stored, ("in", 0, 0), seen=full)
    assert again.status == "duplicate" and again.seen is not None and again.new_user is not None
    assert again.new_user.id_buckets == tuple(sorted(again.seen.buckets)) == (0, 1)
    assert again.new_user.state == StoredUser.from_bytes(stored or b"").state  # nothing else changes


def test_a_rekeyed_copy_forwarded_again_is_recognised_by_its_origin() -> None:
    """After a crash the forwarder sends the uncommitted input again: the same events reach the
    re-key topic a second time, at new offsets, far beyond any window of recent ids."""
    stored: bytes | None = None
    seen = None
    for n in range(300):
        outcome = PROCESSOR.evaluate(PROCESSOR.decode(quiz(n)), stored, ("by-user", 0, n), seen=seen,
                                     origin=Origin("in", 2, 1000 + n, rekeyed=True))
        stored = outcome.new_state or stored
        seen = outcome.seen or seen
    for n in range(300):  # the second copies, read at offsets 300..599 of the re-key topic
        copy = PROCESSOR.evaluate(PROCESSOR.decode(quiz(n)), stored, ("by-user", 0, 300 + n), seen=SeenIds(),
                                  origin=Origin("in", 2, 1000 + n, rekeyed=True))
        assert copy.status == "duplicate" and copy.new_state is None
    # The same partition's events evaluated directly have marks of their own (another path, own order).
    direct = PROCESSOR.evaluate(PROCESSOR.decode(quiz(900)), stored, ("in", 2, 5), seen=seen)
    assert direct.status == "processed"
    assert StoredUser.from_bytes(direct.new_state or b"").marks == {("in", 2, True): 1299, ("in", 2, False): 5}


def test_committed_entries_leave_the_outbox_and_the_progress_tail() -> None:
    stored, _ = feed([quiz(n) for n in range(20)])
    user = StoredUser.from_bytes(stored or b"")
    assert user.outbox and user.progress
    # Every offset up to 20 committed: the next write keeps only what event 20 itself made.
    stored, (last,) = feed([quiz(20)], stored, first_offset=20, committed=20)
    user = StoredUser.from_bytes(stored or b"")
    assert all(entry.position == ("in", 0, 20) for entry in user.outbox)
    assert {value[3] for value in user.progress.values()} == {("in", 0, 20)}
    assert last.progress is not None and len(user.progress) == len(last.progress.keys)
    # A redelivery of event 20 still re-publishes what it made.
    again = PROCESSOR.evaluate(PROCESSOR.decode(quiz(20)), stored, ("in", 0, 20))
    assert again.awards == last.awards
    assert again.progress is not None and sorted(again.progress.records()) == sorted(last.progress.records())


def test_an_uncommitted_award_stays_in_the_outbox() -> None:
    stored, outcomes = feed([quiz(n) for n in range(10)], committed=0)
    stored, _ = feed([quiz(n) for n in range(10, 40)], stored, first_offset=10, committed=3)
    user = StoredUser.from_bytes(stored or b"")
    assert outcomes[0].awards and user.awards_at(("in", 0, 0)) == ()  # committed: dropped
    assert outcomes[4].awards  # bronze at the 5th quiz, offset 4: not committed, kept
    assert user.awards_at(("in", 0, 4)) == tuple(outcomes[4].awards)


def test_a_value_stored_by_the_previous_format_is_read() -> None:
    from evaluators.state import UserState
    from streams.worker.stored import _HEADER

    state = PROCESSOR.engine.evaluate(None, PROCESSOR.decode(quiz(1))).state
    old_state = state.to_bytes() + bytes(8 * 2000)  # the 2048-digest window of before
    raw = _HEADER.pack(2, len(old_state)) + old_state + orjson.dumps({
        "o": [["e1", ['{"award_id": "a"}']]],
        "p": [["first_quiz", None, 1, 1, "2026-05-02T10:01:00+00:00"]],
    })
    user = StoredUser.from_bytes(raw)
    assert user.awards_for("e1") == (b'{"award_id":"a"}',)  # the record (the worker wrote compact JSON)
    assert user.progress[("first_quiz", None)][:3] == [1, 1, datetime.fromisoformat("2026-05-02T10:01:00+00:00")]
    assert isinstance(user.state, UserState)
    rewritten = PROCESSOR.evaluate(PROCESSOR.decode(quiz(2)), raw, ("in", 0, 5))
    assert rewritten.new_state is not None and StoredUser.from_bytes(rewritten.new_state).marks


def test_a_mature_user_stays_under_4_kib() -> None:
    """3,000 demo events of one user, offsets committed 100 events behind (a commit every few seconds)."""
    stored: bytes | None = None
    largest = 0
    for offset, event in enumerate(simulate_events(1, 3000, seed=3)):
        outcome = PROCESSOR.evaluate(PROCESSOR.decode(orjson.dumps(event)), stored, ("in", 0, offset),
                                     lambda t, p, offset=offset: max(0, offset - 100))
        if outcome.new_state is not None:
            stored = outcome.new_state
            if offset >= 1000:  # past the first months, when awards come thick and stay uncommitted
                largest = max(largest, len(stored))
    assert stored is not None and len(stored) <= 4096 and largest <= 4096, (len(stored or b""), largest)


def test_awards_carry_where_their_event_was_read() -> None:
    from schemas.records import EventSource
    from streams.worker.handler import SOURCE_HEADER, read_source_header

    first = PROCESSOR.evaluate(PROCESSOR.decode(quiz(1)), None, ("in", 3, 41))
    assert first.granted and {a.source for a in first.granted} == {EventSource(topic="in", partition=3,
                                                                                           offset=41)}
    assert all(orjson.loads(a)["source"] == {"topic": "in", "partition": 3, "offset": 41} for a in first.awards)
    # A re-keyed event is read from the internal topic but names its original input position.
    rekeyed = PROCESSOR.evaluate(PROCESSOR.decode(quiz(1)), None, ("app-events-by-user", 0, 7),
                                 origin=Origin("in", 1, 5, rekeyed=True))
    assert {a.source for a in rekeyed.granted} == {EventSource(topic="in", partition=1, offset=5)}
    header = [(SOURCE_HEADER, b'["in", 1, 5, 1700000000000]')]
    assert read_source_header(header) == (Origin("in", 1, 5, rekeyed=True), 1700000000000)
    assert read_source_header([(SOURCE_HEADER, b'["in", 1, 5]')]) == (Origin("in", 1, 5, rekeyed=True), None)
    assert read_source_header([(SOURCE_HEADER, b"not json")]) is None
    assert read_source_header(None) is None


def test_a_redelivery_after_a_crash_publishes_the_same_nudges_again() -> None:
    # quiz_master's bronze tier (5 quizzes) nudges at 2 to go: the third quiz.
    stored, outcomes = feed([quiz(1), quiz(2), quiz(3)])
    assert not outcomes[1].nudges and outcomes[2].nudges
    # kill -9 after the state write, before the nudge reached Kafka: the event is read again.
    again = PROCESSOR.evaluate(PROCESSOR.decode(quiz(3)), stored, ("in", 0, 2))
    assert again.status == "duplicate" and again.new_state is None
    assert again.nudges == outcomes[2].nudges
    # Once its offset is committed the entry is gone, like an award's.
    _, later = feed([quiz(4)], stored, first_offset=3, committed=3)
    assert StoredUser.from_bytes(later[0].new_state or b"").entry_at(("in", 0, 2)) is None


def test_an_outbox_entry_of_format_3_reads_with_its_position_and_no_nudges() -> None:
    from streams.worker.stored import _HEADER

    state = PROCESSOR.engine.evaluate(None, PROCESSOR.decode(quiz(1))).state.to_bytes()
    raw = _HEADER.pack(3, len(state)) + state + orjson.dumps({
        "h": [["in", 0, 7]],
        "o": [["e1", ['{"award_id":"a"}'], 0, 7]],  # records are compact JSON (pydantic's), as ever
    })
    entry = StoredUser.from_bytes(raw).entry_at(("in", 0, 7))
    assert entry is not None and entry.awards == (b'{"award_id":"a"}',) and entry.nudges == ()
    assert StoredUser.from_bytes(StoredUser.from_bytes(raw).to_bytes()).entry_at(("in", 0, 7)) == entry


def test_a_user_stays_under_4_kib_even_with_a_full_outbox_of_uncommitted_awards() -> None:
    """Nothing committed at all (a long catch-up between two commits): the outbox is at its bound."""
    user: StoredUser | None = None
    largest = 0
    for offset, event in enumerate(simulate_events(1, 3000, seed=3)):
        outcome = PROCESSOR.evaluate_user(PROCESSOR.decode(orjson.dumps(event)), user, ("in", 0, offset))
        if outcome.new_user is not None:
            user = outcome.new_user
            largest = max(largest, len(user.to_bytes()))
    assert user is not None and len(user.outbox) > 16
    assert largest <= 4096
    assert StoredUser.from_bytes(user.to_bytes()) == user  # compressed (format 5), read back whole


def test_a_small_value_is_stored_uncompressed_and_reads_back() -> None:
    from evaluators.state import UserState
    from streams.worker.stored import _HEADER

    chunks = (4 * CHUNKS, 5 * CHUNKS, 5 * CHUNKS + 1)  # bucket 4, and bucket 5 in two chunks
    small = StoredUser(UserState.empty("u1"), marks={("in", 0, False): 7, ("in", 3, True): 9}, id_buckets=chunks)
    raw = small.to_bytes()
    assert _HEADER.unpack_from(raw)[0] == 7 and StoredUser.from_bytes(raw) == small


def test_a_large_value_is_one_zstd_frame_and_a_zlib_one_of_before_still_reads() -> None:
    import zlib

    from streams.worker.stored import _HEADER, COMPRESSED, COMPRESSED_ZLIB

    user: StoredUser | None = None
    for offset, event in enumerate(simulate_events(1, 300, seed=3)):
        outcome = PROCESSOR.evaluate_user(PROCESSOR.decode(orjson.dumps(event)), user, ("in", 0, offset))
        user = outcome.new_user or user
    assert user is not None and user.progress
    raw = user.to_bytes()
    version, length = _HEADER.unpack_from(raw)
    assert version == COMPRESSED and raw[_HEADER.size:_HEADER.size + 4] == b"\x28\xb5\x2f\xfd"  # zstd's magic
    assert StoredUser.from_bytes(raw) == user
    # The same value as the worker wrote it before zstd: format 8, zlib over state and tail.
    import zstandard
    body = zstandard.ZstdDecompressor().decompress(raw[_HEADER.size:])
    old = _HEADER.pack(COMPRESSED_ZLIB, length) + zlib.compress(body, 6)
    assert StoredUser.from_bytes(old) == user


def test_outbox_records_read_back_byte_for_byte() -> None:
    """Embedded as JSON in the stored value, re-published from it after a crash: the same bytes."""
    user: StoredUser | None = None
    published: list[bytes] = []
    for offset, event in enumerate(simulate_events(3, 2000, seed=5)):
        outcome = PROCESSOR.evaluate_user(PROCESSOR.decode(orjson.dumps(event)), user if user and
                                          user.state.user_id == event["user_id"] else None, ("in", 0, offset))
        if outcome.new_user is not None and event["user_id"] == "u-000000":
            user = outcome.new_user
            again = StoredUser.from_bytes(user.to_bytes())
            for entry, read_back in zip(user.outbox, again.outbox, strict=True):
                assert read_back.awards == entry.awards and read_back.nudges == entry.nudges
                published.extend(entry.awards + entry.nudges)
    assert len(set(published)) > 20
