"""The award sink against a real broker and both databases: exactly-once effect, dead letters, outages.

One test class, run once with SQLite and once with PostgreSQL through the ``database_url``
fixture. Records are produced as the worker produces them (JSON, keyed by user_id) and the sink
runs in-process until it has caught up or for a bounded number of batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.records import AwardRecord, DeadLetterRecord, ProgressRecord, make_award_id
from streams import db
from streams.settings import Settings
from streams.sink.award_sink import AwardSink, Backoff

pytestmark = pytest.mark.kafka

T0 = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
CATALOG = {"catalog_version": "v1", "badges": [
    {"id": "first_quiz", "name": "First Quiz", "on": ["quiz_completed"], "rule": {"count": 1}},
    {"id": "quiz_master", "name": "Quiz Master", "on": ["quiz_completed"],
     "rule": {"tiers": {"bronze": 10, "silver": 50}}},
]}


def award(user: str, badge: str = "first_quiz", tier: str | None = None, *, kind: str = "award") -> AwardRecord:
    return AwardRecord(award_id=make_award_id(user, badge, tier, 1), user_id=user, badge_id=badge, tier=tier,
                       awarded_at=T0, event_id=f"e-{user}-{badge}", catalog_version="v1", kind=kind)  # type: ignore[arg-type]


def progress(user: str, value: float, seconds: int = 0) -> ProgressRecord:
    return ProgressRecord(user_id=user, badge_id="quiz_master", tier="silver", progress=value, target=50,
                          updated_at=T0 + timedelta(seconds=seconds))


class Harness:
    """Topics, settings, a producer and inspection helpers for one test."""

    def __init__(self, bootstrap: str, topic_factory: Callable[..., str], group: str, database_url: str) -> None:
        self.settings = Settings(
            kafka_bootstrap_servers=bootstrap,
            awards_topic=topic_factory("sink-awards", partitions=2),
            progress_topic=topic_factory("sink-progress"),
            sink_dlq_topic=topic_factory("sink-dlq"),
            sink_group_id=group,
            database_url=database_url,
            sink_batch_size=50,
            sink_batch_timeout_ms=100,
        )
        self.bootstrap = bootstrap
        self.producer = Producer({"bootstrap.servers": bootstrap})
        self.engine = db.make_engine(database_url)

    def sink(self, **kwargs: Any) -> AwardSink:
        kwargs.setdefault("catalog", CATALOG)
        kwargs.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
        return AwardSink(self.settings, **kwargs)

    def produce(self, records: list[AwardRecord | ProgressRecord | bytes], topic: str | None = None,
                key: bytes = b"u-raw") -> None:
        for record in records:
            if isinstance(record, bytes):
                self.producer.produce(topic or self.settings.awards_topic, key=key, value=record)
                continue
            target = topic or (self.settings.awards_topic if isinstance(record, AwardRecord)
                               else self.settings.progress_topic)
            self.producer.produce(target, key=record.user_id.encode(), value=record.model_dump_json())
        assert self.producer.flush(30) == 0

    def committed(self) -> dict[tuple[str, int], int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.settings.sink_group_id})
        try:
            partitions = [TopicPartition(self.settings.awards_topic, 0), TopicPartition(self.settings.awards_topic, 1),
                          TopicPartition(self.settings.progress_topic, 0)]
            # No commit yet (OFFSET_INVALID) reads as 0: where the group would start.
            return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=20)}
        finally:
            consumer.close()

    def end_offsets(self) -> dict[tuple[str, int], int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "watermarks"})
        try:
            return {(topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1]
                    for topic, p in [(self.settings.awards_topic, 0), (self.settings.awards_topic, 1),
                                     (self.settings.progress_topic, 0)]}
        finally:
            consumer.close()

    def rows(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return db.count_rows(conn)

    def dead_letters(self, expected: int, timeout: float = 30) -> list[DeadLetterRecord]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"read-{self.settings.sink_dlq_topic}",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([self.settings.sink_dlq_topic])
        found: list[DeadLetterRecord] = []
        try:
            deadline = time.monotonic() + timeout
            while len(found) < expected and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    found.append(DeadLetterRecord.model_validate_json(message.value()))
        finally:
            consumer.close()
        return found

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def harness(kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str],
            database_url: str) -> Iterator[Harness]:
    h = Harness(kafka_bootstrap, topic_factory, unique_name("sink"), database_url)
    yield h
    h.close()


@contextlib.contextmanager
def database_outage(request: pytest.FixtureRequest, url: str) -> Iterator[None]:
    """Make the database refuse the sink for real, then come back.

    SQLite: another connection holds the write lock (as a backup or a long migration would), so
    the sink's transactions fail with "database is locked". PostgreSQL: the server stops
    accepting connections to the database and terminates the open ones, as a failover would.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        holder = sqlite3.connect(parsed.database, timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    admin = sa.create_engine(request.getfixturevalue("postgres_server_url"), isolation_level="AUTOCOMMIT")
    name = parsed.database
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                         {"name": name})
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class TestAwardSink:
    """Every test runs on SQLite and on PostgreSQL."""

    def test_writes_awards_and_progress_then_commits(self, harness: Harness) -> None:
        users = [f"u-{i}" for i in range(20)]
        harness.produce([award(u) for u in users] + [progress(u, i) for i, u in enumerate(users)])
        with harness.sink() as sink:
            stats = sink.run(until_caught_up=True)
        assert stats.messages == 40 and stats.dead_letters == 0
        assert harness.rows() == {"badges": 2, "user_badges": 20, "user_badge_progress": 20}
        assert harness.committed() == harness.end_offsets()

    def test_the_same_batch_delivered_twice_writes_once(self, harness: Harness) -> None:
        harness.produce([award(f"u-{i}") for i in range(10)] + [progress("u-1", 5, seconds=5)])
        with harness.sink() as sink:
            sink.start()
            messages: list[Any] = []
            wait_for(lambda: messages.extend(m for m in sink.consumer.consume(50, 0.2) if m.error() is None)
                     or len(messages) == 11, what="11 messages")
            first = sink.process_batch(messages)
            second = sink.process_batch(messages)
        assert (first.written.awards_inserted, first.written.progress_written) == (10, 1)
        assert (second.written.awards_inserted, second.written.progress_written) == (0, 1)  # same value, no-op
        assert harness.rows()["user_badges"] == 10
        assert harness.committed() == harness.end_offsets()

    def test_crash_between_upsert_and_offset_commit(self, harness: Harness) -> None:
        harness.produce([award(f"u-{i}") for i in range(30)] + [progress("u-1", 1), progress("u-1", 9, seconds=9)])
        before = harness.end_offsets()
        with harness.sink() as crashed:
            crashed.start()
            seen = 0
            while seen < 32:  # step 1 and 2 for everything, never step 3: the process "dies" here
                messages = [m for m in crashed.consumer.consume(50, 0.2) if m.error() is None]
                if messages:
                    crashed.process_batch(messages, commit=False)
                    seen += len(messages)
        assert harness.rows()["user_badges"] == 30
        assert set(harness.committed().values()) == {0}  # nothing committed

        # A fresh consumer in the same group starts from the committed offsets: everything again.
        with harness.sink() as restarted:
            stats = restarted.run(until_caught_up=True)
        assert stats.messages == 32
        assert harness.rows() == {"badges": 2, "user_badges": 30, "user_badge_progress": 1}
        with harness.engine.connect() as conn:
            assert db.user_progress(conn, "u-1")[0].progress == 9
        assert harness.committed() == before

    def test_progress_reordered_across_batches_never_moves_backwards(self, harness: Harness) -> None:
        harness.produce([progress("u-1", 40, seconds=40)])
        with harness.sink() as sink:
            sink.run(until_caught_up=True)
            harness.produce([progress("u-1", 10, seconds=10), progress("u-1", 20, seconds=20)])  # late arrivals
            sink.run(until_caught_up=True)
        with harness.engine.connect() as conn:
            (row,) = db.user_progress(conn, "u-1")
        assert (row.progress, row.updated_at) == (40, T0 + timedelta(seconds=40))

    def test_revocation_through_the_sink(self, harness: Harness) -> None:
        harness.produce([award("u-1"), award("u-2")])
        harness.produce([award("u-1", kind="revocation")])
        with harness.sink() as sink:
            sink.run(until_caught_up=True)
        with harness.engine.connect() as conn:
            assert db.user_awards(conn, "u-1")[0].revoked_at is not None
            assert db.leaderboard(conn) == [("u-2", 1)]
        assert harness.rows()["user_badges"] == 2  # revoked, not deleted

    def test_undecodable_records_go_to_the_dlq_and_do_not_block_the_partition(self, harness: Harness) -> None:
        forged = award("u-9").model_copy(update={"award_id": "not-derived"})
        harness.produce([award("u-1")])
        harness.produce([b"{not json", b"\xff\xfe binary"], key=b"u-1")
        harness.produce([forged, award("u-2")])
        # Well-formed, but no database could keep them alike: PostgreSQL refuses NUL characters and
        # over-long index entries, SQLite turns NaN into NULL. Dead letters, not a blocked partition.
        harness.produce([award("u-\x00-nul"), award("u-4", badge="b" * 300)])
        harness.produce([b'{"user_id": "u-1"}', progress("u-5", 1).model_dump_json().replace("1.0", "NaN").encode()],
                        topic=harness.settings.progress_topic, key=b"u-1")
        harness.produce([progress("u-3", 1)])
        with harness.sink() as sink:
            stats = sink.run(until_caught_up=True)
        assert stats.dead_letters == 7
        assert harness.rows()["user_badges"] == 2 and harness.rows()["user_badge_progress"] == 1
        assert harness.committed() == harness.end_offsets()
        letters = sorted(harness.dead_letters(7), key=lambda d: (d.source_topic, d.partition, d.offset))
        assert {d.stage for d in letters} == {"sink"}
        codes = sorted(d.error_code for d in letters)
        assert codes == ["invalid_award"] * 5 + ["invalid_progress"] * 2
        reasons = " | ".join(d.reason for d in letters)
        assert "user_id contains a NUL character" in reasons and "badge_id is longer than 255" in reasons
        assert "progress and target must be finite" in reasons
        binary = next(d for d in letters if d.value_encoding == "base64")
        assert binary.original_value() == b"\xff\xfe binary" and binary.key == "u-1"
        assert any("not make_award_id" in d.reason for d in letters)
        assert any("updated_at: Field required" in d.reason for d in letters)

    def test_database_outage_blocks_without_committing_then_catches_up(
        self, harness: Harness, database_url: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
    ) -> None:
        harness.produce([award(f"u-{i}") for i in range(5)])
        engine = db.make_engine(database_url, sqlite_busy_timeout_ms=100)
        with harness.sink(engine=engine) as sink:
            sink.run(until_caught_up=True)
            committed_before = harness.committed()
            caplog.set_level(logging.WARNING, logger="streams.sink.award_sink")
            with database_outage(request, database_url):
                harness.produce([award(f"u-{i}") for i in range(5, 25)])
                runner = threading.Thread(target=sink.run, kwargs={"until_caught_up": True})
                runner.start()
                wait_for(lambda: sum("unavailable" in r.getMessage() for r in caplog.records) >= 3,
                         what="the sink retrying")
                assert harness.committed() == committed_before  # blocked, nothing committed
            runner.join(timeout=60)
            assert not runner.is_alive()
        assert harness.rows()["user_badges"] == 25
        assert harness.committed() == harness.end_offsets()
        retry_lines = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
        assert all("badgestream-local" not in line for line in retry_lines)  # the URL is masked
        assert "retrying in" in retry_lines[0]

    def test_stop_finishes_the_current_batch_and_commits(self, harness: Harness) -> None:
        harness.produce([award(f"u-{i}") for i in range(120)])
        with harness.sink() as sink:
            stop = threading.Event()
            original = sink.process_batch

            def process_then_stop(*args: Any, **kwargs: Any) -> Any:
                stop.set()  # as SIGTERM would, in the middle of the first batch
                return original(*args, **kwargs)

            sink.process_batch = process_then_stop  # type: ignore[method-assign]
            stats = sink.run(stop)
        assert stats.batches == 1
        committed = sum(harness.committed().values())
        assert committed == stats.messages == harness.rows()["user_badges"]


def test_sink_command_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str], sqlite_url: str,
    tmp_path: Any,
) -> None:
    """``badgestream sink`` as a process: SIGTERM finishes the batch, commits, closes, exits 0."""
    import os
    import signal
    import subprocess
    import sys

    pytest.importorskip("schemas.catalog", reason="the catalog loader (schemas/catalog/) is not there yet")
    harness = Harness(kafka_bootstrap, topic_factory, unique_name("sink-cli"), sqlite_url)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(json.dumps(CATALOG))  # JSON is YAML
    harness.produce([award(f"u-{i}") for i in range(10)])
    env = {**os.environ, "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "BADGESTREAM_AWARDS_TOPIC": harness.settings.awards_topic,
           "BADGESTREAM_PROGRESS_TOPIC": harness.settings.progress_topic,
           "BADGESTREAM_SINK_DLQ_TOPIC": harness.settings.sink_dlq_topic,
           "BADGESTREAM_SINK_GROUP_ID": harness.settings.sink_group_id,
           "BADGESTREAM_DATABASE_URL": sqlite_url, "BADGESTREAM_CATALOG_PATH": str(catalog)}
    process = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: process.poll() is None and _count(harness) == 10, timeout=60, what="the sink writing")
        wait_for(lambda: harness.committed() == harness.end_offsets(), timeout=30, what="offsets committed")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "SIGTERM received" in output and "sink stopped after" in output
    assert "badgestream-local" not in output
    harness.close()


def _count(harness: Harness) -> int:
    try:
        return harness.rows()["user_badges"]
    except sa.exc.OperationalError:
        return 0  # tables not created yet
