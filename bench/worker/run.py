"""End-to-end worker benchmark on the real broker: throughput, event->award latency, and the ceiling.

1. ceiling: a bare aiokafka consumer that only reads and decodes (``parse_event``) the same events;
2. throughput: one ``badgestream worker`` subprocess, events/s from the first produce until the
   worker has processed the last one (its own ``badgestream_events_total`` counter);
3. latency: events produced at a steady rate (default 2k/s); for every award, the time from
   producing the deciding event to receiving the award on the award topic; p50/p99.

    python -m bench.worker.run [--events 200000] [--users 10000] [--rate 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.kafka.broker import configured_or_throwaway_broker, free_port  # noqa: E402
from schemas.events import parse_event  # noqa: E402
from streams.devstack.simulate import simulate_events  # noqa: E402
from streams.kafka import ensure_topics, required_topics  # noqa: E402
from streams.settings import Settings  # noqa: E402

EVENTS_TOTAL = re.compile(r"^badgestream_events_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def events_processed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return -1.0
    return sum(float(v) for v in EVENTS_TOTAL.findall(body))


def produce(bootstrap: str, topic: str, events: list[bytes], keys: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20,
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 500000,
                         "enable.idempotence": True})
    for key, value in zip(keys, events, strict=True):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)


async def ceiling(bootstrap: str, topic: str, count: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"ceiling-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000)
    await consumer.start()
    try:
        seen = 0
        began = None
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for messages in batches.values():
                if began is None:
                    began = time.perf_counter()
                for message in messages:
                    parse_event(message.value)
                    seen += 1
        return seen / (time.perf_counter() - (began or time.perf_counter()))
    finally:
        await consumer.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s of the latency phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency phase")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--py-spy", default=None, metavar="FILE",
                        help="record the worker with py-spy (collapsed stacks) into FILE")
    args = parser.parse_args()

    with configured_or_throwaway_broker("bench-worker-kafka-") as bootstrap:
        return run(args, bootstrap)


def run(args: argparse.Namespace, bootstrap: str) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    suffix = uuid.uuid4().hex[:8]
    web_port = free_port()
    settings = Settings(kafka_bootstrap_servers=bootstrap, input_topics=[f"bench-events-{suffix}"],
                        awards_topic=f"bench-awards-{suffix}", progress_topic=f"bench-progress-{suffix}",
                        dlq_topic=f"bench-dlq-{suffix}", sink_dlq_topic=f"bench-sink-dlq-{suffix}",
                        topic_partitions=args.partitions, app_id=f"bench-{suffix}", web_port=web_port,
                        data_dir=workdir / "worker")
    ensure_topics(settings, required_topics(settings))
    ceiling_topic = f"bench-ceiling-{suffix}"
    from streams.kafka import TopicSpec

    ensure_topics(settings, [TopicSpec(ceiling_topic, args.partitions, {})])

    print(f"generating {args.events} events for {args.users} users ...", flush=True)
    dicts = list(simulate_events(args.users, args.events, seed=7))
    values = [orjson.dumps(e) for e in dicts]
    keys = [e["user_id"].encode() for e in dicts]

    produce(bootstrap, ceiling_topic, values, keys)
    ceiling_rate = asyncio.run(ceiling(bootstrap, ceiling_topic, len(values)))
    print(f"ceiling (aiokafka read + parse_event): {ceiling_rate:,.0f} events/s", flush=True)

    env = {**os.environ, "PYTHONPATH": str(REPO),
           "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "BADGESTREAM_INPUT_TOPICS": settings.input_topics[0],
           "BADGESTREAM_AWARDS_TOPIC": settings.awards_topic, "BADGESTREAM_PROGRESS_TOPIC": settings.progress_topic,
           "BADGESTREAM_DLQ_TOPIC": settings.dlq_topic, "BADGESTREAM_TOPIC_PARTITIONS": str(args.partitions),
           "BADGESTREAM_APP_ID": settings.app_id, "BADGESTREAM_WEB_PORT": str(web_port),
           "BADGESTREAM_DATA_DIR": str(workdir / "worker")}
    log = (workdir / "worker.log").open("wb")
    command = [sys.executable, "-m", "streams.cli", "worker", "-l", "warn"]
    if args.py_spy:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [py_spy, "record", "--format", "raw", "--rate", "50", "-o", str(Path(args.py_spy).resolve()),
                   "--", *command]
    worker = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Warm up: one event through, so partitions are assigned and tables recovered.
        warm = orjson.dumps({"event_id": "warm-1", "type": "user_logged_in", "user_id": "warm",
                             "occurred_at": "2026-01-01T00:00:00+00:00"})
        produce(bootstrap, settings.input_topics[0], [warm], [b"warm"])
        deadline = time.monotonic() + 180
        while events_processed(web_port) < 1:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"worker did not start; see {workdir / 'worker.log'}")
            time.sleep(0.2)

        began = time.perf_counter()
        producer_thread = threading.Thread(target=produce, args=(bootstrap, settings.input_topics[0], values, keys))
        producer_thread.start()
        target = len(values) + 1
        while events_processed(web_port) < target:
            if worker.poll() is not None:
                raise SystemExit(f"worker died; see {workdir / 'worker.log'}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        producer_thread.join()
        throughput = len(values) / elapsed
        print(f"worker throughput: {len(values)} events in {elapsed:.1f}s = {throughput:,.0f} events/s "
              f"({throughput / ceiling_rate:.0%} of the ceiling)", flush=True)

        # Latency at a steady rate, on fresh users so that awards happen.
        count = int(args.rate * args.seconds)
        latency_events = [dict(e, user_id="lat-" + e["user_id"], event_id="lat-" + e["event_id"])
                          for e in simulate_events(max(args.users // 4, 100), count, seed=11)]
        sent_at: dict[str, float] = {}
        received: list[float] = []
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{suffix}",
                             "auto.offset.reset": "latest", "enable.auto.commit": False})
        consumer.subscribe([settings.awards_topic])
        consumer.poll(2.0)
        while not consumer.assignment():
            consumer.poll(0.5)
        stop = threading.Event()

        def collect() -> None:
            while not stop.is_set():
                # poll, not consume(n, timeout): consume waits for n messages or the timeout,
                # which would add up to the timeout to every measured latency.
                message = consumer.poll(0.05)
                if message is not None and message.error() is None:
                    now = time.perf_counter()
                    event_id = orjson.loads(message.value())["event_id"]
                    if event_id in sent_at:
                        received.append(now - sent_at[event_id])

        collector = threading.Thread(target=collect)
        collector.start()
        producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 0,
                             "enable.idempotence": True})
        start = time.perf_counter()
        for n, event in enumerate(latency_events):
            due = start + n / args.rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.001))
            sent_at[event["event_id"]] = time.perf_counter()
            producer.produce(settings.input_topics[0], key=event["user_id"].encode(), value=orjson.dumps(event))
            producer.poll(0)
        producer.flush(30)
        actual_rate = len(latency_events) / (time.perf_counter() - start)
        time.sleep(3)
        stop.set()
        collector.join()
        consumer.close()
        if received:
            ms = [v * 1000 for v in received]
            print(f"latency at {actual_rate:,.0f} events/s over {args.seconds:.0f}s: {len(ms)} awards, "
                  f"p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
                  f"mean {statistics.fmean(ms):.1f} ms", flush=True)
        else:
            print("latency: no awards received", flush=True)
    finally:
        worker.send_signal(signal.SIGINT if args.py_spy else signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
