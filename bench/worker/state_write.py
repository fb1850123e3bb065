"""bench/worker/state_write: what one table write costs the worker, its way against Faust's way, one run.

Both write the same values (``--keys`` users, ``--size`` bytes each) to a RocksDB table of
``--partitions`` partitions and its changelog topic on a real broker, and wait until the broker
acknowledged every record:

* batch (the worker's, streams/worker/state_writer.py): stage every value, one librdkafka changelog
  record per key, one flush, one RocksDB write batch per partition with the changelog offset in it;
* per key (what Faust's table does for every ``table[key] = value``, with librdkafka instead of
  aiokafka, so the figure is a floor for Faust's): a RocksDB put and a changelog record per key,
  and on each acknowledgement a put of the changelog offset.

Figures are CPU microseconds of this process per write (process time; librdkafka's threads
included), best of ``--rounds``.

Usage: python -m bench.worker.state_write [--keys 20000] [--size 1200] [--partitions 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import rocksdict
from confluent_kafka import Producer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.kafka.broker import configured_or_throwaway_broker  # noqa: E402
from streams.kafka import TopicSpec, ensure_topics, produce  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.worker.faust_store import write_batch  # noqa: E402
from streams.worker.state_writer import Changes, StateWriter  # noqa: E402

OFFSET_KEY = b"__faust\0offset__"  # Faust's persisted changelog offset (faust/stores/rocksdb.py)


class Table:
    """RocksDB databases, one per partition, as Faust's store keeps them."""

    def __init__(self, root: Path, partitions: int, changelog_topic: str) -> None:
        options = rocksdict.Options(raw_mode=True)
        self.dbs = [rocksdict.Rdict(str(root / f"p{p}"), options=options) for p in range(partitions)]
        self.changelog_topic = changelog_topic

    def apply(self, partition: int, changes: Changes, offset: int) -> None:
        write_batch(self.dbs[partition], changes, OFFSET_KEY, offset)  # as the worker writes it

    def close(self) -> None:
        for db in self.dbs:
            db.close()


def batch_way(producer: Producer, table: Table, values: list[tuple[int, bytes, bytes]]) -> None:
    writer = StateWriter({"t": table}, lambda topic, partition, key, value, delivered: produce(
        producer, topic, key, value, delivered, partition=partition))
    for partition, key, value in values:
        writer.stage("t", partition, key, value)
    writer.send()
    assert producer.flush(60) == 0
    assert writer.apply() == 1


def per_key_way(producer: Producer, table: Table, values: list[tuple[int, bytes, bytes]]) -> None:
    def acknowledged(error: object, message: object) -> None:
        assert error is None, error
        table.dbs[message.partition()].put(OFFSET_KEY, str(message.offset()).encode())  # type: ignore[attr-defined]

    for partition, key, value in values:
        table.dbs[partition].put(key, value)
        produce(producer, table.changelog_topic, key, value, acknowledged, partition=partition)
        producer.poll(0)
    assert producer.flush(60) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1_200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    values = [(n % args.partitions, f"user-{n:07d}".encode(), bytes([n % 251]) * args.size) for n in range(args.keys)]
    best: dict[str, float] = {}
    with configured_or_throwaway_broker("bench-state-write-kafka-") as bootstrap:
        settings = Settings(kafka_bootstrap_servers=bootstrap)
        topic = f"bench-state-write-{uuid.uuid4().hex[:8]}-changelog"
        ensure_topics(settings, [TopicSpec(topic, args.partitions, {"cleanup.policy": "compact"})])
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                             "linger.ms": 2})
        root = Path(tempfile.mkdtemp(prefix="bench-state-write-"))
        try:
            for round_ in range(args.rounds):
                for name, way in (("batch", batch_way), ("per key", per_key_way)):
                    table = Table(root / f"{name.replace(' ', '-')}-{round_}", args.partitions, topic)
                    began = time.process_time()
                    way(producer, table, values)
                    cpu = (time.process_time() - began) / args.keys * 1e6
                    table.close()
                    best[name] = min(cpu, best.get(name, cpu))
                    print(f"[round {round_ + 1}] {name}: {cpu:.1f} us CPU per write", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"| way ({args.keys:,} writes of {args.size:,} B, {args.partitions} partitions) | CPU us per write (best) |")
    print("|---|---|")
    for name, cpu in best.items():
        print(f"| {name} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
