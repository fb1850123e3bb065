"""kill -9 of the worker, again and again, while it works through a simulated stream.

The worker and the sink run as subprocesses on the real broker; the sink writes to SQLite. The
worker is killed at random moments (some while it processes, some while it is still recovering
from the previous kill) and restarted each time. The database must end up with exactly the
awards and progress rows of a clean run — computed offline with the same engine
(``badgestream evaluate`` for awards) — and no duplicate row.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.integration import harness
from tests.integration.harness import StackConfig
from tests.reliability import support

pytestmark = pytest.mark.kafka

STACK_NAME = "crash"  # topic names of this module's stacks (tests/reliability/conftest.py)


def committed_offsets(stack: StackConfig) -> list[int]:
    group = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": stack.app_id})
    try:
        for _ in range(50):
            try:
                offsets = group.committed(
                    [TopicPartition(stack.input_topic, p) for p in range(stack.partitions)], timeout=10)
                return [tp.offset for tp in offsets]
            except KafkaException:  # coordinator not ready yet, or moving
                time.sleep(0.2)
        raise AssertionError("the group coordinator does not answer")
    finally:
        group.close()


def run_with_worker_crashes(stack: StackConfig, events: int, users: int, kills: int, seed: int,
                            early: bool = False, rate: float = 300.0) -> None:
    """Crash the worker while it works; the database must hold the clean result.

    Kills come at random amounts of output. Every third one, and with ``early`` all of them, fall in
    the first seconds of a worker: while it rejoins the group and recovers its table, or before it
    has committed any offset."""
    rng = random.Random(seed)
    events_file = stack.data_dir / "events.jsonl"
    lines = support.write_simulated(events_file, users=users, events=events, seed=seed)
    expected = support.expected_offline(events_file)
    # Progress records the clean run produces: the yardstick for "how far the worker got".
    clean_output = expected.progress_records
    record = support.CrashLog("worker_crash", events=len(lines), users=expected.users)
    assert stack.database_url is not None
    worker = harness.worker(stack, **support.FAST_FAILOVER).start()
    sink = support.sink(stack).start()
    watch = support.OutputWatch(stack.bootstrap, stack.progress_topic)
    began = time.monotonic()
    try:
        # Paced, as live traffic: the worker is much faster than kill/restart cycles otherwise.
        producing = threading.Thread(target=support.produce_paced, daemon=True,
                                     args=(stack.bootstrap, stack.input_topic, lines, rate))
        producing.start()
        low, high = (0.03, 0.06) if early else (0.05, 0.9)
        points = support.kill_points(rng, clean_output, kills, low=low, high=high)
        for number, point in enumerate(points, 1):
            if number % 3 == 0 or (early and number > 1):
                # Shortly after the restart: before or while it rejoins the group and recovers.
                time.sleep(rng.uniform(0.5, 4.0))
                where = "recovering"
            else:
                # At the point, and only once this worker has produced something itself (processing),
                # unless it has already read all input (re-reading after rewinds can be quick): then
                # the kill hits an idle worker, which must lose nothing either.
                target = max(point, watch.produced() + 20)

                def reached(p: int = target) -> bool:
                    return watch.produced() >= p or not worker.alive() or (
                        not producing.is_alive() and sum(committed_offsets(stack)) >= len(lines))

                harness.wait_until(reached, timeout=240, what=f"{point} progress records from the worker",
                                   interval=0.1)
                time.sleep(rng.uniform(0, 0.3))
                where = "processing" if watch.produced() >= target else "idle, all input read"
            assert worker.alive(), f"the worker died on its own:\n{worker.log()[-4000:]}"
            worker.kill9()
            record.crash(f"kill -9 #{number} ({where})", watch.produced(), clean_output)
            worker.start()
        producing.join(timeout=600)
        support.wait_for_database(stack.database_url, expected, timeout=300 + events / 100, watch=[worker, sink])
        published = harness.consume(stack.bootstrap, stack.awards_topic, idle=2, timeout=120)
    finally:
        watch.close()
        worker.stop()
        sink.stop()
    got = support.read_database(stack.database_url)
    republished = sum(n - 1 for n in Counter(m.value() for m in published).values() if n > 1)
    rewinds = worker.log().count("reading again from")
    record.notes.append(f"wall time {time.monotonic() - began:.0f}s; worker starts {worker.starts}; the "
                        f"award topic holds {len(published)} records, {republished} of them re-published "
                        f"after a crash (absorbed by the sink); input partitions read again instead of "
                        f"skipped (streams/worker/faust_seam.py): {rewinds}")
    record.report(awards_expected=len(expected.awards), awards_in_db=got.rows,
                  progress_rows=len(got.progress), duplicates=got.duplicates, rewinds=rewinds)
    assert worker.starts == kills + 1
    support.assert_same_result(got, expected)


def test_worker_kill9_during_a_run_gives_the_clean_result(stack: StackConfig) -> None:
    run_with_worker_crashes(stack, events=5_000, users=300, kills=3, seed=8)


def test_kill9_before_the_first_offset_commit(stack: StackConfig) -> None:
    run_with_worker_crashes(stack, events=5_000, users=300, kills=3, seed=9, early=True)


@pytest.mark.slow
def test_worker_kill9_five_times_during_50k_events(stack: StackConfig) -> None:
    run_with_worker_crashes(stack, events=50_000, users=1_200, kills=7, seed=88, rate=500.0)


def test_a_redelivered_event_republishes_the_latest_progress_lost_in_a_crash() -> None:
    """The case the live test found: state (changelog) written, progress record lost with the process."""
    from evaluators.runner import plugin_engine
    from schemas.catalog import load_catalog
    from streams.worker.processor import EventProcessor

    catalog = load_catalog(harness.DEMO_CATALOG)
    processor = EventProcessor(catalog, plugin_engine(catalog))

    def quiz(n: int, day: int) -> bytes:
        return json.dumps({"event_id": f"e{n}", "type": "quiz_completed", "user_id": "u", "tz": "UTC",
                           "occurred_at": f"2026-05-{day:02d}T10:00:00+00:00",
                           "data": {"quiz_id": f"q{n}", "score": 5, "total_questions": 10}}).encode()

    first = processor.process(b"u", quiz(1, 2), "t", 0, 0, None)
    second = processor.process(b"u", quiz(2, 1), "t", 0, 1, first.new_state)  # late: older occurred_at
    # kill -9: second.progress never reached Kafka, second.new_state did. The event comes again:
    again = processor.process(b"u", quiz(2, 1), "t", 0, 1, second.new_state)
    assert again.status == "duplicate"
    def published(outcome: Any) -> list[bytes]:
        return [value for _, value in outcome.progress.records()] if outcome.progress else []

    latest = {}
    for value in published(first) + published(second):  # what the sink keeps: newest updated_at, ties later
        record = json.loads(value)
        key = (record["badge_id"], record["tier"])
        if key not in latest or record["updated_at"] >= latest[key]["updated_at"]:
            latest[key] = record
    republished = [json.loads(value) for value in published(again)]
    assert sorted(republished, key=lambda r: (r["badge_id"], r["tier"] or "")) == sorted(
        latest.values(), key=lambda r: (r["badge_id"], r["tier"] or ""))
