"""Replay benchmark: events/s of ``badgestream replay`` over a pre-filled input topic on the real broker.

Fills a topic with N simulated events (default 1M, 10k users), then times the replay path
(confluent-kafka consumer from the beginning to the captured end offsets, driving the engine
directly, the demo catalog) — and, separately, the bare read of the same topic, so the split
between Kafka and the engine is visible.

    python -m bench.replay.run [--events 1000000] [--users 10000] [--partitions 4] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.worker.run import produce  # noqa: E402
from deploy.kafka.broker import configured_or_throwaway_broker  # noqa: E402
from schemas.catalog import load_catalog  # noqa: E402
from streams.devstack.simulate import simulate_events  # noqa: E402
from streams.kafka import INPUT_TOPIC_CONFIG, TopicSpec, ensure_topics  # noqa: E402
from streams.replay.replay import read_input, replay  # noqa: E402
from streams.settings import DEMO_CATALOG, Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of the replay")
    args = parser.parse_args()

    with configured_or_throwaway_broker("bench-replay-kafka-") as bootstrap:
        return run(args, bootstrap)


def run(args: argparse.Namespace, bootstrap: str) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        topic = f"bench-replay-{uuid.uuid4().hex[:8]}"
        settings = Settings(kafka_bootstrap_servers=bootstrap, input_topics=[topic], app_id="bench-replay")
        ensure_topics(settings, [TopicSpec(topic, args.partitions, INPUT_TOPIC_CONFIG)])
        began = time.perf_counter()
        events = list(simulate_events(args.users, args.events, seed=21))
        values = [orjson.dumps(e) for e in events]
        keys = [e["user_id"].encode() for e in events]
        del events
        print(f"generated {len(values):,} events in {time.perf_counter() - began:.1f}s", flush=True)
        began = time.perf_counter()
        produce(bootstrap, topic, values, keys)
        print(f"produced in {time.perf_counter() - began:.1f}s", flush=True)
        del values, keys

        began = time.perf_counter()
        read = sum(1 for _ in read_input(settings, show_progress=False))
        read_seconds = time.perf_counter() - began
        print(f"bare read of the topic: {read:,} events in {read_seconds:.1f}s = {read / read_seconds:,.0f} events/s",
              flush=True)

        catalog = load_catalog(DEMO_CATALOG)
        profiler = cProfile.Profile() if args.profile else None
        began = time.perf_counter()
        if profiler:
            profiler.enable()
        result = replay(settings, catalog, show_progress=True)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - began
        print(f"replay: {result.events:,} events ({result.invalid} invalid, {result.duplicates:,} duplicates), "
              f"{result.users:,} users, {len(result.awards):,} awards in {seconds:.1f}s = "
              f"{result.events / seconds:,.0f} events/s", flush=True)
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
