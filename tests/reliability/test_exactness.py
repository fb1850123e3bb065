"""Exact on every input path: re-keyed input across kill -9, any arrival order, resends by record time.

Events come from a plain confluent-kafka producer, as an upstream team would send them:

* keyed by user_id with librdkafka's default partitioner (``consistent_random``, CRC32), which places
  most users elsewhere than the worker's table partition, so most events pass through the re-key
  topic — and the worker is killed three times while it works. After a crash the forwarder sends
  the uncommitted input again, so the same events reach the re-key topic a second time, at new
  offsets: a copy is recognised by the original position it carries, not by where it was read.
  (Before, only a window of the user's last 64 event ids caught such a copy; with few users and a
  backlog, hundreds of a user's events lie between the two copies, and they were counted twice.)
* each user's history shuffled (arrival order unrelated to event time, over about five months),
  and the same history with no key at all (a user's events spread over every partition): the award
  set equals the in-order run's (streaks included: no lateness horizon).
* the same event id resent 1,000 events later and 23 hours later in record time changes nothing;
  one resent 25 hours later is counted again, as documented; a replay of the topic agrees.
"""

from __future__ import annotations

import random
import subprocess
import sys
import urllib.request
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from streams.kafka import partition_for
from tests.integration import harness
from tests.integration.harness import StackConfig
from tests.reliability import support

pytestmark = pytest.mark.kafka

STACK_NAME = "exact"

USERS = 20
EVENTS = 6_000  # about 300 events and five months of history per user


def test_kill9_on_rekeyed_input_counts_nothing_twice(stack: StackConfig) -> None:
    """A backlog of 20,000 events of 20 users, keyed by user_id but placed by librdkafka's default
    partitioner; the worker is killed three times while it forwards and evaluates them."""
    events_file = stack.data_dir / "events.jsonl"
    lines = support.write_simulated(events_file, users=USERS, events=20_000, seed=19)
    expected = support.expected_offline(events_file)
    support.produce_paced(stack.bootstrap, stack.input_topic, lines, rate=50_000.0, partitioner="consistent_random")
    placed_elsewhere = sum(1 for line in lines if partition_for(orjson.loads(line)["user_id"].encode(), 4)
                           != consistent_partition(orjson.loads(line)["user_id"].encode(), 4))
    assert placed_elsewhere > len(lines) // 2  # most events are re-keyed

    record = support.CrashLog("rekeyed_crash", events=len(lines), users=expected.users)
    assert stack.database_url is not None
    worker = harness.worker(stack, **support.FAST_FAILOVER).start()
    sink = support.sink(stack).start()
    port = int(worker.env["BADGESTREAM_WEB_PORT"])
    rng = random.Random(19)
    try:
        # Each kill once this worker has handled a random number of messages (forwarded or
        # evaluated: about 35,000 in a first life) — or, if its share of the work ran out first,
        # once the database is complete, and then it must lose nothing and count nothing twice.
        for number, target in enumerate([rng.randint(3_000, 15_000), rng.randint(500, 5_000),
                                         rng.randint(500, 5_000)], 1):
            def reached(at_least: int = target) -> bool:
                return (handled(port) >= at_least or not worker.alive()
                        or support.award_rows(stack.database_url or "") >= len(expected.awards))

            harness.wait_until(reached, timeout=240, what=f"{target} messages handled", interval=0.02)
            assert worker.alive(), f"the worker died on its own:\n{worker.log()[-4000:]}"
            done = handled(port)
            worker.kill9()
            record.crash(f"kill -9 #{number} after {done:,.0f} messages handled", support.award_rows(
                stack.database_url), len(expected.awards))
            worker.start()
        support.wait_for_database(stack.database_url, expected, timeout=300, watch=[worker, sink])
    finally:
        worker.stop()
        sink.stop()
    got = support.read_database(stack.database_url)
    record.report(awards_expected=len(expected.awards), awards_in_db=got.rows, progress_rows=len(got.progress),
                  duplicates=got.duplicates)
    support.assert_same_result(got, expected)


def handled(port: int) -> float:
    """Messages the worker has handled since it started (its ``badgestream_events_total``), 0 while it
    does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("badgestream_events_total{"))


def consistent_partition(key: bytes, partitions: int) -> int:
    """librdkafka's ``consistent_random`` partitioner for a key: CRC32, modulo."""
    return zlib.crc32(key) % partitions


def award_ids(url: str) -> set[str]:
    return {key[0] for key in support.read_database(url).awards}


def run_to_completion(stack: StackConfig, lines: list[bytes], expected_awards: int, *, keyed: bool) -> set[str]:
    """Worker and sink over ``lines`` (murmur2-keyed, or with no key) until the awards are in; their ids."""
    assert stack.database_url is not None
    worker = harness.worker(stack).start()
    sink = support.sink(stack).start()
    try:
        support.produce_paced(stack.bootstrap, stack.input_topic, lines, rate=5000.0, keyed=keyed)
        support.wait_for_rows(stack.database_url, expected_awards, 0, timeout=300, watch=[worker, sink])
    finally:
        worker.stop()
        sink.stop()
    return award_ids(stack.database_url)


def in_order(stack: StackConfig, seed: int) -> tuple[list[bytes], set[str]]:
    lines = support.write_simulated(stack.data_dir / "events.jsonl", users=USERS, events=EVENTS, seed=seed)
    return lines, {record["award_id"] for record in harness.offline_awards(stack.data_dir / "events.jsonl")}


def test_each_users_history_shuffled_gives_the_in_order_award_set(stack: StackConfig) -> None:
    lines, expected = in_order(stack, seed=23)
    rng = random.Random(23)
    by_user: dict[str, list[bytes]] = {}
    for line in lines:
        by_user.setdefault(orjson.loads(line)["user_id"], []).append(line)
    for history in by_user.values():
        rng.shuffle(history)
    shuffled = []
    while by_user:  # users interleaved at random, each user's own events in shuffled order
        user = rng.choice(sorted(by_user))
        shuffled.append(by_user[user].pop())
        if not by_user[user]:
            del by_user[user]
    assert sorted(shuffled) == sorted(lines)
    spread = [orjson.loads(line)["occurred_at"][:10] for line in shuffled]
    assert (datetime.fromisoformat(max(spread)) - datetime.fromisoformat(min(spread))).days >= 120
    assert run_to_completion(stack, shuffled, len(expected), keyed=True) == expected


def test_null_keyed_input_spread_over_every_partition_gives_the_in_order_award_set(stack: StackConfig) -> None:
    lines, expected = in_order(stack, seed=29)
    assert run_to_completion(stack, lines, len(expected), keyed=False) == expected


HOUR_MS = 3600 * 1000
EVERY_QUIZ = """\
catalog_version: "resends"
badges:
  - {id: every_quiz, name: Every quiz, on: [quiz_completed], repeatable: true, rule: {count: 1}}
"""


def test_resends_change_nothing_within_the_window_and_count_again_after_it(tmp_path: Path,
                                                                            stack: StackConfig) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(EVERY_QUIZ)
    stack.catalog = catalog
    began = int((datetime.now(UTC) - timedelta(days=3)).timestamp() * 1000)  # record times in the past

    def quiz(n: int) -> bytes:
        return orjson.dumps({"event_id": f"q{n}", "type": "quiz_completed", "user_id": "u-resend",
                             "occurred_at": (datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=n)).isoformat()})

    records = [(quiz(n), began + n) for n in range(1_001)]
    records.append((quiz(0), began + 23 * HOUR_MS))  # 1,000 events and 23 hours later: the same event
    records.append((quiz(1), began + 25 * HOUR_MS))  # 25 hours later: past the window, counted again
    producer = harness.producer(stack.bootstrap)
    for value, at in records:
        producer.produce(stack.input_topic, key=b"u-resend", value=value, timestamp=at)
    assert producer.flush(60) == 0

    assert stack.database_url is not None
    worker = harness.worker(stack).start()
    sink = support.sink(stack).start()
    try:
        support.wait_for_rows(stack.database_url, 1_002, 0, timeout=240, watch=[worker, sink])
    finally:
        worker.stop()
        sink.stop()
    got = support.read_database(stack.database_url)
    assert got.duplicates == 0
    occurrences = sorted((key[4], key[6]) for key in got.awards)
    assert len(occurrences) == 1_002, f"{len(occurrences)} awards"
    assert occurrences[-1] == (1_002, "q1")  # the late resend, counted again
    assert [event for _, event in occurrences].count("q0") == 1  # the resend within the window: nothing

    # A replay of the topic decides by the same record times: no difference from the live run.
    replayed = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--quiet"], cwd=harness.REPO,
                              env=stack.env(), capture_output=True, text=True, timeout=180)
    assert replayed.returncode == 0, replayed.stderr
    assert "no difference" in replayed.stdout, replayed.stdout
