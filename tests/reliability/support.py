"""Shared pieces of the reliability tests: simulated input, the offline reference result, reading
the award database back, and a stack (worker + sink subprocesses) that tests can crash.

The reference ("clean run") is computed offline: awards with ``badgestream evaluate`` (the same
engine, no Kafka), progress rows with the engine in-process, reduced the way the sink reduces
them (newest ``updated_at`` per (user, badge, tier), later records winning ties).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from evaluators.runner import EngineRun, plugin_engine
from schemas.catalog import load_catalog
from schemas.errors import InvalidEventError
from schemas.records import ProgressRecord, newest_progress
from streams.devstack.simulate import simulate_events
from streams.kafka import LIBRDKAFKA_LOG
from tests.integration import harness
from tests.integration.harness import Process, StackConfig

# Faust/broker defaults make a killed worker's partitions wait 15 s; 6 s is the broker's minimum.
FAST_FAILOVER = {"BADGESTREAM_SESSION_TIMEOUT_S": "6"}

AwardKey = tuple[str, str, str, str | None, int, str, str]
ProgressKey = tuple[str, str, str | None]
ProgressValue = tuple[float, float, str]


def utc(value: datetime | str) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:  # SQLite hands back naive datetimes, stored in UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def award_tuple(record: dict[str, Any]) -> AwardKey:
    """What identifies an award and must be reproduced exactly; time normalised to UTC."""
    return (record["award_id"], record["user_id"], record["badge_id"], record.get("tier") or None,
            int(record.get("occurrence", 1)), utc(record["awarded_at"]), record["event_id"])


# --- input ------------------------------------------------------------------------------------

def write_simulated(path: Path, users: int, events: int, seed: int) -> list[bytes]:
    """A realistic stream (duplicates, out-of-order events) as JSON lines; returns the lines."""
    lines = [orjson.dumps(event) for event in simulate_events(users, events, seed=seed)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def produce_paced(bootstrap: str, topic: str, lines: list[bytes], rate: float, *, keyed: bool = True,
                  partitioner: str = "murmur2_random") -> None:
    """Produce ``lines`` keyed by user_id (or with no key) at about ``rate`` events per second (in small
    bursts). ``partitioner``: librdkafka's name; its default, ``consistent_random``, places a key
    elsewhere than the Java client and Faust do, so the worker re-keys those events."""
    producer = harness.producer(bootstrap, partitioner)
    began = time.monotonic()
    for n, line in enumerate(lines, 1):
        producer.produce(topic, key=orjson.loads(line)["user_id"].encode() if keyed else None, value=line)
        if n % 50 == 0:
            producer.poll(0)
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    assert producer.flush(60) == 0


# --- the reference result -------------------------------------------------------------------

@dataclass
class Expected:
    awards: list[AwardKey]
    progress: dict[ProgressKey, ProgressValue]
    valid_events: int = 0
    users: int = 0
    progress_records: int = 0  # records on the progress topic in a clean run, before reduction


def _published_progress(events_file: Path, catalog: Path, *, collapse: bool = True
                        ) -> tuple[list[ProgressRecord], int, int]:
    """Progress records the engine publishes over the file, the valid events and the users
    (``collapse=False``: of every tier that moved, not only the lowest)."""
    loaded = load_catalog(catalog)
    engine = plugin_engine(loaded)
    if not collapse:
        # Per rule: compiled with mypyc (evaluators/__init__.py), ``collapses_tiers`` is an instance
        # attribute, which a patched class attribute would not reach.
        for badge in loaded.badges:
            rule = engine.rule(badge.id)
            if rule is not None and rule.collapses_tiers:
                rule.collapses_tiers = False
    run = EngineRun(engine)
    published: list[ProgressRecord] = []
    valid = 0
    for raw in events_file.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            _event, result = run.read(raw)
        except InvalidEventError:
            continue
        valid += 1
        published += result.progress
    return published, valid, len(run.states)


def expected_offline(events_file: Path, catalog: Path = harness.DEMO_CATALOG) -> Expected:
    """Awards from ``badgestream evaluate``; progress rows from the same engine, reduced like the sink.

    The rows are those of every tier's progress published, as the worker did before it published
    only the lowest tier that moved (the sink derives the others): the sink must end with exactly
    those rows. ``progress_records`` counts what the engine publishes now."""
    awards = sorted(award_tuple(r) for r in harness.offline_awards(events_file, catalog))
    published, valid, users = _published_progress(events_file, catalog)
    every_tier, _, _ = _published_progress(events_file, catalog, collapse=False)
    newest = newest_progress(every_tier, lambda p: (p.user_id, p.badge_id, p.tier or None))
    progress = {k: (float(p.progress), float(p.target), utc(p.updated_at)) for k, p in newest.items()}
    return Expected(awards=awards, progress=progress, valid_events=valid, users=users,
                    progress_records=len(published))


# --- the database -----------------------------------------------------------------------------

@contextlib.contextmanager
def connect(url: str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def award_rows(url: str) -> int:
    try:
        with connect(url) as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM user_badges")).scalar_one())
    except sa.exc.OperationalError:
        return 0
    except sa.exc.ProgrammingError:  # PostgreSQL before the sink's migration ran
        return 0


def progress_rows_count(url: str) -> int:
    try:
        with connect(url) as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM user_badge_progress")).scalar_one())
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        return 0


@dataclass
class DatabaseResult:
    awards: list[AwardKey]
    progress: dict[ProgressKey, ProgressValue]
    duplicate_award_ids: int = 0
    duplicate_natural_keys: int = 0
    rows: int = 0

    @property
    def duplicates(self) -> int:
        return self.duplicate_award_ids + self.duplicate_natural_keys


def read_database(url: str) -> DatabaseResult:
    with connect(url) as conn:
        rows = conn.execute(sa.text(
            "SELECT award_id, user_id, badge_id, tier, occurrence, awarded_at, event_id FROM user_badges"
        )).mappings().all()
        progress = conn.execute(sa.text(
            "SELECT user_id, badge_id, tier, progress, target, updated_at FROM user_badge_progress"
        )).mappings().all()
    awards = sorted(award_tuple(dict(r)) for r in rows)
    by_id = Counter(r["award_id"] for r in rows)
    by_key = Counter((r["user_id"], r["badge_id"], r["tier"], r["occurrence"]) for r in rows)
    return DatabaseResult(
        awards=awards,
        progress={(r["user_id"], r["badge_id"], r["tier"] or None):
                  (float(r["progress"]), float(r["target"]), utc(r["updated_at"])) for r in progress},
        duplicate_award_ids=sum(n - 1 for n in by_id.values() if n > 1),
        duplicate_natural_keys=sum(n - 1 for n in by_key.values() if n > 1),
        rows=len(rows),
    )


def assert_same_result(got: DatabaseResult, expected: Expected) -> None:
    """The database holds exactly the reference awards and progress, with no duplicate row."""
    assert got.duplicates == 0, f"{got.duplicates} duplicate award rows"
    missing = sorted(set(expected.awards) - set(got.awards))
    extra = sorted(set(got.awards) - set(expected.awards))
    assert not missing and not extra, f"{len(missing)} awards missing, e.g. {missing[:3]}; " \
                                      f"{len(extra)} unexpected, e.g. {extra[:3]}"
    assert got.awards == expected.awards
    wrong = {k: (got.progress.get(k), v) for k, v in expected.progress.items() if got.progress.get(k) != v}
    unexpected = set(got.progress) - set(expected.progress)
    assert not wrong and not unexpected, (
        f"{len(wrong)} progress rows differ (got, expected), e.g. {list(wrong.items())[:3]}; "
        f"{len(unexpected)} unexpected, e.g. {sorted(unexpected)[:3]}")


# --- a stack to crash ------------------------------------------------------------------------

class OutputWatch:
    """How many records the worker has produced so far (end offsets of its progress topic).

    ``through_outage``: while the broker is down the last figure read stands, and the probe's own
    connect failures are not logged; otherwise a failed read raises."""

    def __init__(self, bootstrap: str, topic: str, through_outage: bool = False) -> None:
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG,
                                  "group.id": "watermark-probe"}
        if through_outage:
            config["log_level"] = 2
        self.consumer = Consumer(config)
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.partitions = [TopicPartition(topic, p) for p in meta.partitions]
        self.through_outage = through_outage
        self.last = 0

    def produced(self) -> int:
        timeout = 2 if self.through_outage else 10
        try:
            self.last = sum(self.consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in self.partitions)
        except KafkaException:
            if not self.through_outage:
                raise
        return self.last

    def close(self) -> None:
        self.consumer.close()


def sink(stack: StackConfig, name: str = "sink", **env: str) -> Process:
    return Process(["sink"], stack.env(**env), stack.data_dir / f"{name}.log")


def cleanup_topics(bootstrap: str, suffix: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG})
    with contextlib.suppress(Exception):
        topics = [t for t in admin.list_topics(timeout=10).topics if suffix in t]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=30)


def wait_for_database(url: str, expected: Expected, timeout: float, watch: list[Process],
                      settle: float = 4.0) -> None:
    """Until the database holds as many awards and progress rows as expected, then ``settle`` s more
    (so that extras, if any, have time to arrive). Fails at once if a watched process died."""
    wait_for_rows(url, len(expected.awards), len(expected.progress), timeout, watch, settle)


def wait_for_rows(url: str, want_awards: int, want_progress: int, timeout: float, watch: list[Process],
                  settle: float = 4.0) -> None:
    """:func:`wait_for_database` by numbers of rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in watch:
            if not proc.alive():
                raise AssertionError(f"{proc.args[0]} died:\n{proc.log()[-4000:]}")
        if award_rows(url) >= want_awards and progress_rows_count(url) >= want_progress:
            time.sleep(settle)
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s: {award_rows(url)}/{want_awards} awards, "
                         f"{progress_rows_count(url)}/{want_progress} progress rows in the database"
                         + "".join(f"\n--- the last lines of {proc.args[0]} other than awards:\n"
                                   f"{quiet_tail(proc.log())}" for proc in watch))


def quiet_tail(log: str, lines: int = 40) -> str:
    """The last ``lines`` lines of a process log without its per-award and per-progress lines (what a
    stalled worker said last, for a timeout's message)."""
    kept = [line for line in log.splitlines() if " award " not in line and " progress " not in line]
    return "\n".join(line[:300] for line in kept[-lines:])


@dataclass
class CrashLog:
    """What a crash test did, for the report printed with ``-s`` and kept in the test's log."""

    name: str
    events: int = 0
    users: int = 0
    crashes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def crash(self, what: str, progress: int, total: int) -> None:
        self.crashes.append(f"{what} at {progress}/{total}")

    def report(self, **figures: Any) -> str:
        line = {"test": self.name, "events": self.events, "users": self.users, "crashes": len(self.crashes),
                **figures}
        text = "RELIABILITY " + json.dumps(line) + "\n  crash points: " + ", ".join(self.crashes)
        if self.notes:
            text += "\n  " + "\n  ".join(self.notes)
        print(text)
        return text


def kill_points(rng: random.Random, total: int, kills: int, low: float = 0.1, high: float = 0.85) -> list[int]:
    """``kills`` distinct thresholds (counts of something), spread at random over [low, high] of ``total``."""
    points: set[int] = set()
    while len(points) < kills:
        points.add(int(total * rng.uniform(low, high)))
    return sorted(points)
