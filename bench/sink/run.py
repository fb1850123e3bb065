"""Award sink benchmark: awards/s from a pre-filled award topic into SQLite and PostgreSQL.

The topic is filled first (default 200k awards over 4 partitions, keyed by user_id); then, for
each database, a fresh sink (new consumer group, empty database) is timed from ``start()`` —
migrations, catalog, group join included — until it has caught up, and the rows are counted.

    python -m bench.sink.run [--awards 200000] [--batch-size 5000] [--databases sqlite,postgresql]

Broker: ``BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS`` if set, else a local KRaft broker started (and
stopped) like the test fixtures do. PostgreSQL: ``--postgres-url`` / ``BADGESTREAM_TEST_POSTGRES_URL``
(a server URL; a fresh database is created in it), else a throwaway local cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.kafka.broker import configured_or_throwaway_broker  # noqa: E402
from deploy.postgres.server import throwaway_postgres  # noqa: E402
from schemas.records import make_award_id  # noqa: E402
from streams import db  # noqa: E402
from streams.kafka import produce  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.sink.award_sink import AwardSink  # noqa: E402

CATALOG = {"catalog_version": "bench", "badges": [
    {"id": f"badge_{i}", "name": f"Badge {i}", "on": ["quiz_completed"], "rule": {"count": i + 1}} for i in range(20)
]}


def say(message: str) -> None:
    print(f"[bench.sink] {message}", file=sys.stderr, flush=True)


def postgres_server(url: str | None) -> contextlib.AbstractContextManager[str]:
    return contextlib.nullcontext(url) if url else throwaway_postgres("bench-sink-pg-")


@contextlib.contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fill_topic(bootstrap: str, topic: str, awards: int, users: int, partitions: int) -> float:
    """Create the award topic and produce ``awards`` distinct awards to it; returns seconds taken."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # The (empty) progress topic too: "caught up" means every assigned partition of both is at its end.
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1),
                                   NewTopic(f"{topic}-progress", num_partitions=1, replication_factor=1)])
    for future in futures.values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 500000, "compression.type": "lz4"})
    began = time.monotonic()
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    for i in range(awards):
        user = f"u-{i % users}"
        badge, occurrence = f"badge_{(i // users) % 20}", i // (users * 20) + 1
        record = {"award_id": make_award_id(user, badge, None, occurrence), "user_id": user, "badge_id": badge,
                  "tier": None, "occurrence": occurrence, "awarded_at": (t0 + timedelta(seconds=i)).isoformat(),
                  "event_id": f"e-{i}", "catalog_version": "bench", "metadata": {"progress": 1, "target": 1},
                  "kind": "award", "backfill": False}
        produce(producer, topic, user.encode(), orjson.dumps(record), drain=0.1)
        if i % 10000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("the award topic could not be filled")
    return time.monotonic() - began


def warm_up_group_coordinator(bootstrap: str, topic: str) -> None:
    """Commit one offset with a throwaway group, so a fresh broker creates ``__consumer_offsets`` now.

    Otherwise the first measured sink would pay for it (about 3 s on this machine), which a
    running cluster never does.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-warm-up-{uuid.uuid4().hex[:8]}"})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        consumer.close()


def measure(bootstrap: str, topic: str, url: str, awards: int, batch_size: int) -> dict[str, float]:
    settings = Settings(kafka_bootstrap_servers=bootstrap, awards_topic=topic, progress_topic=f"{topic}-progress",
                        sink_dlq_topic=f"{topic}-dlq", sink_group_id=f"bench-sink-{uuid.uuid4().hex[:8]}",
                        database_url=url, sink_batch_size=batch_size, sink_batch_timeout_ms=200)
    began = time.monotonic()
    with AwardSink(settings, catalog=CATALOG, log_every_batches=20) as sink:
        sink.start()
        started = time.monotonic()
        stats = sink.run(until_caught_up=True)
        finished = time.monotonic()
        with sink.engine.connect() as conn:
            rows = db.count_rows(conn)["user_badges"]
    if rows != awards or stats.messages != awards:
        raise RuntimeError(f"expected {awards} awards, the sink read {stats.messages} and the table has {rows}")
    return {
        "awards": awards,
        "seconds": round(finished - began, 2),
        "startup_seconds": round(started - began, 2),
        "awards_per_second": round(awards / (finished - began)),
        "batches": stats.batches,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink.run", description=__doc__.splitlines()[0])
    parser.add_argument("--awards", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=5000, help="sink_batch_size for the run")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=os.environ.get("BADGESTREAM_TEST_POSTGRES_URL"))
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    wanted = [name.strip() for name in args.databases.split(",") if name.strip()]
    results: dict[str, dict[str, float]] = {}
    with configured_or_throwaway_broker("bench-sink-kafka-") as bootstrap:
        topic = f"bench-awards-{uuid.uuid4().hex[:8]}"
        seconds = fill_topic(bootstrap, topic, args.awards, args.users, args.partitions)
        say(f"filled {topic} with {args.awards} awards in {seconds:.1f}s")
        warm_up_group_coordinator(bootstrap, topic)
        if "sqlite" in wanted:
            workdir = Path(tempfile.mkdtemp(prefix="bench-sink-sqlite-"))
            try:
                results["sqlite"] = measure(bootstrap, topic, f"sqlite:///{workdir / 'bench.db'}", args.awards,
                                            args.batch_size)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        if "postgresql" in wanted:
            with postgres_server(args.postgres_url) as server_url, fresh_postgres_database(server_url) as url:
                results["postgresql"] = measure(bootstrap, topic, url, args.awards, args.batch_size)
    if args.json:
        print(json.dumps(results))
    else:
        for name, result in results.items():
            print(f"{name:<11} {result['awards']:>8} awards in {result['seconds']:>6.2f}s "
                  f"(start-up {result['startup_seconds']:.2f}s): {result['awards_per_second']:>7} awards/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
