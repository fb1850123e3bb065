"""The sink dies between its database commit and its offset commit, again and again.

That is the one window where a batch is in the database but Kafka will deliver it again. Each
crashed sink is a real process, ended with ``os._exit`` right after the database commit of its
n-th batch (tests/reliability/crashing_sink.py), so it never commits offsets, never closes its
consumer and never leaves the group cleanly. A new sink then starts from the committed offsets and
writes the same batch again. The database must hold exactly the clean run's awards and progress
rows, with no duplicate. The test runs on SQLite and on PostgreSQL.

The records are exactly what the worker publishes for a simulated stream, including what it
re-publishes for duplicate events. They are computed in-process with the worker's own
``EventProcessor`` and produced to the award and progress topics.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from evaluators.resends import SeenIds
from evaluators.runner import plugin_engine
from schemas.catalog import load_catalog
from streams.worker.processor import EventProcessor
from tests.integration import harness
from tests.integration.harness import Process, StackConfig
from tests.reliability import support

pytestmark = pytest.mark.kafka

BATCH_SIZE = 150


def worker_output(lines: list[bytes], catalog: Path = harness.DEMO_CATALOG) -> tuple[list[bytes], list[bytes]]:
    """Awards and progress records the worker publishes for ``lines``, in order."""
    cat = load_catalog(catalog)
    processor = EventProcessor(cat, plugin_engine(cat))
    stored: dict[str, bytes] = {}
    seen: dict[str, SeenIds] = {}  # each user's remembered event ids: resends change nothing
    awards: list[bytes] = []
    progress: list[bytes] = []
    for offset, line in enumerate(lines):
        user = str(orjson.loads(line)["user_id"])
        outcome = processor.evaluate(processor.decode(line), stored.get(user), ("input", 0, offset),
                                     seen=seen.get(user))
        if outcome.new_state is not None:
            stored[user] = outcome.new_state
        if outcome.seen is not None:
            seen[user] = outcome.seen
        awards += outcome.awards
        progress += [value for _, value in outcome.progress.records()] if outcome.progress else []
    return awards, progress


def produce_records(stack: StackConfig, topic: str, records: list[bytes]) -> None:
    producer = harness.producer(stack.bootstrap)
    for n, value in enumerate(records, 1):
        producer.produce(topic, key=orjson.loads(value)["user_id"].encode(), value=value)
        if n % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def crashing_sink(stack: StackConfig, number: int, batches: int) -> Process:
    env = stack.env(CRASH_AFTER_BATCHES=str(batches), BADGESTREAM_SINK_BATCH_SIZE=str(BATCH_SIZE),
                    **support.FAST_FAILOVER)
    return Process([], env, stack.data_dir / f"crashing-sink-{number}.log", module="tests.reliability.crashing_sink")


def test_sink_killed_between_database_commit_and_offset_commit(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path, database_url: str) -> None:
    stack = StackConfig(bootstrap=kafka_bootstrap, suffix=unique_name("sinkcrash"), data_dir=tmp_path, partitions=2,
                        database_url=database_url).create_topics()
    try:
        rng = random.Random(21)
        events_file = tmp_path / "events.jsonl"
        lines = support.write_simulated(events_file, users=200, events=2_500, seed=21)
        expected = support.expected_offline(events_file)
        awards, progress = worker_output(lines)
        produce_records(stack, stack.awards_topic, awards)
        produce_records(stack, stack.progress_topic, progress)
        record = support.CrashLog("sink_crash", events=len(lines), users=expected.users)
        record.notes.append(f"{len(awards)} award and {len(progress)} progress records; batches of {BATCH_SIZE}; "
                            f"database {database_url.split(':', 1)[0]}")

        rows_before: list[int] = []
        for number in range(1, 7):
            batches = rng.randint(1, 4)
            rows_before.append(support.award_rows(database_url) + support.progress_rows_count(database_url))
            sink = crashing_sink(stack, number, batches).start()
            try:
                status = sink.wait(timeout=120)
            finally:
                sink.stop()
            assert status == 137, f"sink {number} did not crash where told (exit {status}):\n{sink.log()[-3000:]}"
            assert "dying before its offset commit" in sink.log()
            record.crash(f"os._exit after the database commit of batch {batches}", number, 6)
        # Each crashed sink wrote something (its last batch at least) that Kafka still owed: the
        # database grew between crashes, so the crashes hit batches with rows in them.
        rows_after = support.award_rows(database_url) + support.progress_rows_count(database_url)
        assert rows_before[1] > rows_before[0] and rows_after > rows_before[-1]

        clean = support.sink(stack, name="clean-sink", **support.FAST_FAILOVER).start()
        began = time.monotonic()
        try:
            support.wait_for_database(database_url, expected, timeout=180, watch=[clean])
        finally:
            clean.stop()
        got = support.read_database(database_url)
        record.notes.append(f"clean sink caught up in {time.monotonic() - began:.0f}s")
        record.report(awards_expected=len(expected.awards), awards_in_db=got.rows, progress_rows=len(got.progress),
                      duplicates=got.duplicates)
        support.assert_same_result(got, expected)
    finally:
        support.cleanup_topics(stack.bootstrap, stack.suffix)
