"""The Faust worker on the real broker, as a subprocess: awards, dead letters, crash recovery."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration import harness
from tests.integration.harness import StackConfig, award_key, awards_from

pytestmark = pytest.mark.kafka

SMALL_CATALOG = """\
catalog_version: "worker-test-1"
events:
  quiz_completed: {required: {quiz_id: string, score: int, total_questions: int}}
badges:
  - id: first_quiz
    name: First Quiz
    description: Complete your first quiz.
    on: [quiz_completed]
    rule: {count: 1}
  - id: five_quizzes
    name: Five Quizzes
    description: Complete five quizzes.
    on: [quiz_completed]
    rule: {count: 5}
"""


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def quiz(event_id: str, user: str, day: int = 1, score: int = 7) -> bytes:
    return json.dumps({
        "event_id": event_id, "type": "quiz_completed", "user_id": user,
        "occurred_at": f"2026-11-{day:02d}T10:00:00+00:00", "tz": "UTC",
        "data": {"quiz_id": f"q-{event_id}", "score": score, "total_questions": 10},
    }).encode()


@pytest.fixture
def stack(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> StackConfig:
    return StackConfig(bootstrap=kafka_bootstrap, suffix=unique_name("w"), data_dir=tmp_path,
                       partitions=2).create_topics()


def _small_catalog(stack: StackConfig) -> StackConfig:
    path = stack.data_dir / "catalog.yaml"
    path.write_text(SMALL_CATALOG)
    stack.catalog = path
    return stack


def _cleanup(stack: StackConfig) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if stack.suffix in t]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)


def test_demo_events_give_exactly_the_offline_awards(stack: StackConfig) -> None:
    expected = harness.offline_awards(harness.DEMO_EVENTS)
    assert len(expected) >= 20, "the demo stream should earn a good number of badges"
    worker = harness.worker(stack).start()
    try:
        harness.produce_lines(stack.bootstrap, stack.input_topic, harness.read_events())
        messages = harness.consume(stack.bootstrap, stack.awards_topic, expected=len(expected), timeout=180,
                                   watch=worker)
        assert worker.alive(), worker.log()[-3000:]
    finally:
        worker.stop()
        _cleanup(stack)
    got = list(awards_from(messages))
    assert Counter(r["award_id"] for r in got).most_common(1)[0][1] == 1, "an award was published twice"
    assert sorted(map(award_key, got)) == sorted(map(award_key, expected))


def test_bad_input_is_dead_lettered_while_good_events_around_it_are_processed(stack: StackConfig) -> None:
    _small_catalog(stack)
    bad: list[tuple[bytes, str]] = [
        (b"this is not json", "invalid_json"),
        (b"\xff\xfe\x00 not utf-8", "invalid_json"),
        (json.dumps({"event_id": "x1", "type": "quiz_completed", "user_id": "u-bad"}).encode(), "invalid_envelope"),
        (json.dumps({"event_id": "x2", "type": "quiz_completed", "user_id": "u-bad",
                     "occurred_at": "2026-11-01T10:00:00"}).encode(), "invalid_envelope"),
        (json.dumps({"event_id": "x3", "type": "quiz_completed", "user_id": "u-bad",
                     "occurred_at": "2026-11-01T10:00:00+00:00", "tz": "Mars/Olympus"}).encode(),
         "invalid_envelope"),
        (json.dumps({"event_id": "x4", "type": "quiz_completed", "user_id": "u-bad",
                     "occurred_at": "2026-11-01T10:00:00+00:00",
                     "data": {"quiz_id": "q", "score": "nine", "total_questions": 10}}).encode(), "invalid_data"),
        (json.dumps({"event_id": "x5", "type": "quiz_completed", "user_id": "u-bad",
                     "occurred_at": "2026-11-01T10:00:00+00:00", "data": {"blob": "x" * 70_000}}).encode(),
         "too_large"),
    ]
    lines = [quiz("g1", "u-1")] + [raw for raw, _ in bad] + [quiz("g2", "u-2")]
    worker = harness.worker(stack).start()
    try:
        harness.produce_lines(stack.bootstrap, stack.input_topic, lines, key_of=lambda _line: b"u-1")
        dead = harness.consume(stack.bootstrap, stack.dlq_topic, expected=len(bad), timeout=120, watch=worker)
        awards = harness.consume(stack.bootstrap, stack.awards_topic, expected=2, timeout=60, watch=worker)
        assert worker.alive(), worker.log()[-3000:]
        port = worker.env["BADGESTREAM_WEB_PORT"]
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        state = json.loads(http_get(f"http://127.0.0.1:{port}/users/u-2/state"))
    finally:
        worker.stop()
        _cleanup(stack)
    records = [json.loads(m.value()) for m in dead]
    assert sorted(r["error_code"] for r in records) == sorted(code for _, code in bad)
    for record in records:
        assert record["source_topic"] == stack.input_topic
        assert record["reason"], record
        original = record["value"].encode() if record["value_encoding"] == "utf-8" else None
        if original is not None:
            assert original in [raw for raw, _ in bad]
    assert any(r["value_encoding"] == "base64" for r in records), "non-UTF-8 bytes must be kept as base64"
    # g2 was keyed "u-1" on purpose: the worker re-keyed it by user_id and still awarded u-2.
    got = sorted((r["user_id"], r["badge_id"]) for r in awards_from(awards))
    assert got == [("u-1", "first_quiz"), ("u-2", "first_quiz")]
    # The evidence names where each deciding event was first read: g2's original input position
    # (offset 6, after g1 and the five bad records), not its place in the re-keying topic.
    sources = {r["user_id"]: r["source"] for r in awards_from(awards)}
    assert sources["u-1"]["topic"] == sources["u-2"]["topic"] == stack.input_topic
    assert sources["u-2"]["partition"] == sources["u-1"]["partition"]
    assert (sources["u-1"]["offset"], sources["u-2"]["offset"]) == (0, len(bad) + 1)

    # Observability: the counters saw all of it, and the state view answers for the key.
    counts = Counter(re.findall(r'^badgestream_dead_letters_total\{reason="(\w+)"\} (\d+)', metrics, re.MULTILINE))
    dead_by_code = {code: int(float(n)) for code, n in counts}
    assert dead_by_code == dict(Counter(code for _, code in bad))
    assert 'badgestream_awards_total{badge="first_quiz"} 2.0' in metrics
    assert "badgestream_processing_seconds_bucket" in metrics
    assert state["user_id"] == "u-2"
    assert "first_quiz" in state["badges"]


def test_kill9_and_restart_recovers_state_and_awards_nothing_twice(stack: StackConfig) -> None:
    _small_catalog(stack)
    worker = harness.worker(stack).start()
    try:
        harness.produce_lines(stack.bootstrap, stack.input_topic, [quiz(f"e{i}", "u-7", day=i) for i in range(1, 4)])
        # first_quiz awarded; progress of five_quizzes reaches 3.
        harness.wait_until(
            lambda: any(json.loads(m.value())["badge_id"] == "five_quizzes" and json.loads(m.value())["progress"] == 3
                        for m in harness.consume(stack.bootstrap, stack.progress_topic, idle=1, timeout=5)),
            timeout=120, what="progress 3/5")
        time.sleep(6)  # past Faust's commit interval (2.8 s): offsets and state are committed
        worker.kill9()
        assert not worker.alive()
        worker.start()
        harness.produce_lines(stack.bootstrap, stack.input_topic, [quiz(f"e{i}", "u-7", day=i) for i in range(4, 6)])
        messages = harness.consume(stack.bootstrap, stack.awards_topic, expected=2, timeout=120, idle=8,
                                   watch=worker)
        assert worker.alive(), worker.log()[-3000:]
    finally:
        worker.stop()
        _cleanup(stack)
    got = [(r["badge_id"], r["event_id"]) for r in awards_from(messages)]
    # five_quizzes needs the three events from before the crash: the state came back.
    assert sorted(got) == [("first_quiz", "e1"), ("five_quizzes", "e5")]


def test_many_input_topics_including_one_partitioned_differently(stack: StackConfig) -> None:
    """A second input topic with 1 partition (the state table has 2) is only re-keyed by user_id."""
    from confluent_kafka.admin import AdminClient, NewTopic

    _small_catalog(stack)
    other = f"mobile-events-{stack.suffix}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    admin.create_topics([NewTopic(other, num_partitions=1, replication_factor=1)])[other].result(timeout=30)
    worker = harness.worker(stack, BADGESTREAM_INPUT_TOPICS=f"{stack.input_topic},{other}").start()
    try:
        harness.produce_lines(stack.bootstrap, stack.input_topic, [quiz(f"a{i}", f"u-{i}", day=1) for i in range(6)])
        harness.produce_lines(stack.bootstrap, other, [quiz(f"b{i}", f"u-{i}", day=2) for i in range(6)])
        harness.produce_lines(stack.bootstrap, other, [quiz(f"c{i}", f"u-{i}", day=3) for i in range(6)])
        harness.produce_lines(stack.bootstrap, stack.input_topic,
                              [quiz(f"d{d}-{i}", f"u-{i}", day=d) for d in (4, 5) for i in range(6)])
        harness.produce_lines(stack.bootstrap, other, [quiz("z1", "u-9", day=1)])  # offset 12 of `other`
        messages = harness.consume(stack.bootstrap, stack.awards_topic, expected=13, timeout=120, watch=worker)
        assert "rekey" in worker.log()
    finally:
        worker.stop()
        _cleanup(stack)
    got = sorted((r["user_id"], r["badge_id"]) for r in awards_from(messages))
    # Five quizzes per user across both topics: the state saw all of them in one place.
    assert got == sorted([(f"u-{i}", b) for i in range(6) for b in ("first_quiz", "five_quizzes")]
                         + [("u-9", "first_quiz")])
    # u-9's award was decided by an event re-keyed from `other`: its evidence is that original input.
    (z1,) = [r for r in awards_from(messages) if r["user_id"] == "u-9"]
    assert z1["source"] == {"topic": other, "partition": 0, "offset": 12}
