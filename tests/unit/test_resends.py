"""Upstream resends by record time (evaluators/resends.py): the window, the position tag, chunks and buckets."""

from __future__ import annotations

from evaluators.resends import CHUNK_IDS, CHUNKS, ResendWindow, SeenIds, bucket_of, event_digest, position_tag
from evaluators.runner import EngineRun
from tests.unit.support import engine, event

HOUR = 3600 * 1000
WINDOW = ResendWindow(24 * HOUR)


def remember(seen: SeenIds, event_id: str, at_ms: int, tag: int = 1) -> SeenIds:
    return seen.with_id(WINDOW, event_digest(event_id), at_ms, tag)[0]


def test_a_resend_within_the_window_either_way_is_recognised_and_one_past_it_is_not() -> None:
    seen = remember(SeenIds(), "e1", 100 * HOUR)
    digest = event_digest("e1")
    assert seen.resent(WINDOW, digest, 100 * HOUR + 23 * HOUR, tag=2)
    assert seen.resent(WINDOW, digest, 100 * HOUR - 23 * HOUR, tag=2)  # an earlier record time, later read
    assert not seen.resent(WINDOW, digest, 100 * HOUR + 25 * HOUR, tag=2)
    assert not seen.resent(WINDOW, event_digest("e2"), 100 * HOUR, tag=2)
    assert not seen.resent(WINDOW, digest, 100 * HOUR, tag=1)  # the same position: the same message
    assert seen.remembers(digest, 1) and not seen.remembers(digest, 2)


def test_a_busy_bucket_grows_in_chunks_and_only_the_newest_is_written() -> None:
    seen = SeenIds()
    written = []
    for n in range(CHUNK_IDS * 3 + 5):
        seen, change = seen.with_id(WINDOW, event_digest(f"e{n}"), 100 * HOUR + n, tag=n)
        written.append(change.written)
        assert not change.dropped
    base = WINDOW.bucket(100 * HOUR) * CHUNKS
    assert sorted(seen.buckets) == [base, base + 1, base + 2, base + 3]
    assert written[0] == written[CHUNK_IDS - 1] == (base,) and written[CHUNK_IDS] == (base + 1,)
    assert all(len(packed) <= CHUNK_IDS * 20 for packed in seen.buckets.values())
    assert len(seen) == CHUNK_IDS * 3 + 5
    assert seen.resent(WINDOW, event_digest("e0"), 101 * HOUR, tag=-1)  # found in every chunk
    assert seen.resent(WINDOW, event_digest(f"e{CHUNK_IDS * 3 + 4}"), 101 * HOUR, tag=-1)


def test_buckets_past_two_windows_are_dropped_whole() -> None:
    seen = SeenIds()
    for n in range(CHUNK_IDS + 1):  # two chunks in the first bucket
        seen = remember(seen, f"old{n}", 0)
    seen, change = seen.with_id(WINDOW, event_digest("new"), 60 * HOUR, 1)
    assert change.dropped == (0, 1) and {bucket_of(key) for key in seen.buckets} == {WINDOW.bucket(60 * HOUR)}
    seen, change = seen.with_id(WINDOW, event_digest("late"), 20 * HOUR, 1)  # within the retention: kept
    assert not change.dropped and WINDOW.bucket(20 * HOUR) in {bucket_of(key) for key in seen.buckets}


def test_a_position_tag_names_one_message() -> None:
    assert position_tag("in", 0, 5) == position_tag("in", 0, 5)
    assert len({position_tag("in", 0, 5), position_tag("in", 1, 5), position_tag("in", 0, 6)}) == 3


def test_offline_a_file_is_one_moment_so_every_resend_in_it_is_absorbed() -> None:
    run = EngineRun(engine("badges:\n  - {id: every, on: [quiz], repeatable: true, rule: {count: 1}}\n"))
    first = run.evaluate(event("quiz", event_id="q1"))
    later = [run.evaluate(event("quiz", event_id=f"n{n}")) for n in range(500)]
    again = run.evaluate(event("quiz", event_id="q1"))
    assert first.awards and all(result.awards for result in later)
    assert again.duplicate and not again.awards
    # with record times, a resend past the window counts again
    timed = EngineRun(run.engine)
    timed.evaluate(event("quiz", event_id="q1"), record_ms=0)
    assert not timed.evaluate(event("quiz", event_id="q1"), record_ms=25 * HOUR).duplicate


def scanned(seen: SeenIds, digest: bytes, at_ms: int, tag: int) -> bool:
    """resent by reading every entry, without the set of digests SeenIds keeps."""
    for packed in seen.buckets.values():
        for at in range(0, len(packed), 20):
            if (packed[at:at + 8] == digest and abs(int.from_bytes(packed[at + 8:at + 16], "big", signed=True) - at_ms)
                    <= WINDOW.window_ms and int.from_bytes(packed[at + 16:at + 20], "big") != tag):
                return True
    return False


def test_the_set_of_digests_answers_as_the_chunks_do_through_hand_overs_drops_and_branches() -> None:
    import random

    rnd = random.Random(21)
    ids = [f"e{n}" for n in range(300)]  # few enough that ids come again, inside and outside the window
    seen = SeenIds()
    older: list[SeenIds] = []  # values handed on from: asked again later, they answer for themselves
    for step in range(3000):
        at = step * HOUR // 20 + rnd.randrange(-30 * HOUR, 30 * HOUR)  # drifting, so buckets are dropped
        digest, tag = event_digest(rnd.choice(ids)), rnd.randrange(4)
        for value in [seen, *rnd.sample(older, min(2, len(older)))]:
            assert value.resent(WINDOW, digest, at, tag) == scanned(value, digest, at, tag), step
        if rnd.random() < 0.05:
            older.append(seen)
        if older and rnd.random() < 0.02:  # a branch: another id added to an older value
            branch = rnd.choice(older).with_id(WINDOW, digest, at, tag)[0]
            assert branch.resent(WINDOW, digest, at, tag + 1) and scanned(branch, digest, at, tag + 1)
        seen = seen.with_id(WINDOW, digest, at, tag)[0]
    assert any(change for change in [seen.with_id(WINDOW, b"x" * 8, 10**9 * HOUR, 0)[1].dropped])
