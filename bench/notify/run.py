"""Notifier benchmark on the real broker: deliveries/s to a local receiver, and event -> webhook latency.

1. throughput: a backlog of awards on a fresh award topic; one ``badgestream notify`` subprocess
   per configuration (1 endpoint, 10 endpoints; and 1 endpoint with one request at a time, the
   serial alternative) delivers it to a verifying receiver in this process; deliveries/s from
   the first delivery to the last (and the wall time from the notifier's start), and the
   notifier's own CPU time (user + system, from /proc) per delivery over the same span;
2. faulty endpoint: awards produced straight onto the award topic at ``--faulty-rate`` for
   ``--faulty-seconds`` to a notifier with default settings and one endpoint where 25% of requests
   answer 500 and 5% stall past the request timeout (seeded); per award, the time from producing it
   to the endpoint seeing its first attempt, and to its first 2xx;
3. end to end: a ``badgestream worker``, a ``badgestream sink`` (SQLite) and a notifier; events
   produced at a steady rate (default 500/s) on fresh users; for every award and nudge webhook, the
   time from producing the deciding event to the receiver having it, and from the worker producing
   the award (nudge) record (its Kafka timestamp) to the receiver having it; p50/p99.

    python -m bench.notify.run [--awards 5000] [--faulty-rate 300] [--faulty-seconds 15] [--rate 500] [--seconds 20]
                               [--phases throughput faulty e2e]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.kafka.broker import configured_or_throwaway_broker, free_port  # noqa: E402
from schemas.records import AwardRecord, make_award_id  # noqa: E402
from streams.devstack.receiver import Received, Response, WebhookReceiver  # noqa: E402
from streams.devstack.simulate import simulate_events  # noqa: E402
from streams.kafka import ensure_topics, required_topics  # noqa: E402
from streams.settings import Settings  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shown(values: list[float], q: float, missing: int) -> str:
    """The q-quantile in ms, counting ``missing`` values as larger than any seen ("> max" when it falls among them)."""
    ordered = sorted(values)
    index = int(q * (len(ordered) + missing))
    if index >= len(ordered):
        return f"> {ordered[-1]:.0f} s" if ordered else "none"
    return f"{ordered[index] * 1000:,.0f} ms"


def record_times(bootstrap: str, topics: list[str]) -> dict[str, float]:
    """award_id / nudge_id -> the record's Kafka timestamp (seconds), for every record on ``topics``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bn-read-{uuid.uuid4().hex[:8]}",
                        "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics)
    found: dict[str, float] = {}
    idle_until = time.monotonic() + 10
    while time.monotonic() < idle_until:
        for message in consumer.consume(1000, 0.5):
            if message.error() is None and message.value():
                value = orjson.loads(message.value() or b"{}")
                found[str(value.get("award_id") or value.get("nudge_id"))] = message.timestamp()[1] / 1000
                idle_until = time.monotonic() + 2  # read until nothing more comes for 2 s
    consumer.close()
    return found


def notifier(env: dict[str, str], workdir: Path, name: str, **extra: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "notify"], env={**env, **extra}, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--awards", type=int, default=5000, help="backlog of the throughput phase")
    parser.add_argument("--faulty-rate", type=float, default=300.0, help="awards/s of the faulty-endpoint phase")
    parser.add_argument("--faulty-seconds", type=float, default=15.0, help="length of the faulty-endpoint phase")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s of the end-to-end phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the end-to-end phase")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--phases", nargs="+", choices=("throughput", "faulty", "e2e"),
                        default=["throughput", "faulty", "e2e"])
    args = parser.parse_args()
    with configured_or_throwaway_broker("bench-notify-kafka-") as bootstrap:
        return run(args, bootstrap)


def run(args: argparse.Namespace, bootstrap: str) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    suffix = uuid.uuid4().hex[:8]
    web_port = free_port()
    settings = Settings(kafka_bootstrap_servers=bootstrap, input_topics=[f"bn-events-{suffix}"],
                        awards_topic=f"bn-awards-{suffix}", progress_topic=f"bn-progress-{suffix}",
                        nudges_topic=f"bn-nudges-{suffix}", dlq_topic=f"bn-dlq-{suffix}",
                        sink_dlq_topic=f"bn-sink-dlq-{suffix}", notify_dlq_topic=f"bn-notify-dlq-{suffix}",
                        app_id=f"bn-{suffix}", web_port=web_port, data_dir=workdir / "worker")
    ensure_topics(settings, required_topics(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO), "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "BADGESTREAM_INPUT_TOPICS": settings.input_topics[0], "BADGESTREAM_AWARDS_TOPIC": settings.awards_topic,
           "BADGESTREAM_PROGRESS_TOPIC": settings.progress_topic, "BADGESTREAM_NUDGES_TOPIC": settings.nudges_topic,
           "BADGESTREAM_DLQ_TOPIC": settings.dlq_topic, "BADGESTREAM_NOTIFY_DLQ_TOPIC": settings.notify_dlq_topic,
           "BADGESTREAM_APP_ID": settings.app_id, "BADGESTREAM_WEB_PORT": str(web_port),
           "BADGESTREAM_DATA_DIR": str(workdir / "worker"), "BADGESTREAM_WEBHOOK_SECRET": SECRET,
           "BADGESTREAM_NOTIFY_METRICS_PORT": "0", "BADGESTREAM_SINK_DLQ_TOPIC": settings.sink_dlq_topic,
           "BADGESTREAM_SINK_GROUP_ID": f"bn-sink-{suffix}",
           "BADGESTREAM_DATABASE_URL": f"sqlite:///{workdir / 'awards.db'}"}
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    rows: list[tuple[str, str]] = []

    at = datetime(2026, 11, 21, tzinfo=UTC)
    # 1. throughput from a backlog
    if "throughput" in args.phases:
        for i in range(args.awards):
            user = f"u{i}"
            award = AwardRecord(award_id=make_award_id(user, "bench", None, 1), user_id=user, badge_id="bench",
                                awarded_at=at, event_id=f"e{i}", catalog_version="bench")
            producer.produce(settings.awards_topic, key=user.encode(), value=award.model_dump_json().encode())
            producer.poll(0)
        producer.flush(60)
        with WebhookReceiver(SECRET) as receiver:
            def received(prefix: str) -> int:
                return sum(r.path.startswith(prefix) for r in receiver.received)

            def received_at_least(prefix: str, n: int) -> Callable[[], bool]:
                return lambda: received(prefix) >= n

            for endpoints, concurrency in ((1, 1), (1, 8), (10, 8)):
                urls = [receiver.url(f"/c{concurrency}-e{endpoints}-{n}") for n in range(endpoints)]
                total = args.awards * endpoints
                began = time.time()
                proc = notifier(env, workdir, f"notify-{endpoints}x{concurrency}",
                                BADGESTREAM_WEBHOOK_URLS=",".join(urls),
                                BADGESTREAM_NOTIFY_CONCURRENCY=str(concurrency),
                                BADGESTREAM_NOTIFY_GROUP_ID=f"bn-{endpoints}x{concurrency}-{suffix}",
                                BADGESTREAM_NOTIFY_OUTBOX=str(workdir / f"outbox-{endpoints}x{concurrency}.sqlite"))
                prefix = f"/c{concurrency}-e{endpoints}-"
                try:
                    wait_for(received_at_least(prefix, 1), 120, "the first delivery", proc)
                    cpu_from = cpu_seconds(proc.pid)
                    done_from = received(prefix)
                    wait_for(received_at_least(prefix, total), 900, f"{total} deliveries", proc)
                    cpu = (cpu_seconds(proc.pid) - cpu_from) / max(1, total - done_from)
                finally:
                    proc.terminate()
                    proc.wait(30)
                got = [r for r in receiver.received if r.path.startswith(prefix)]
                assert all(r.valid for r in got)
                first, last = min(r.at for r in got), max(r.at for r in got)
                rate = len(got) / max(last - first, 1e-9)
                line = (f"| {endpoints} | {concurrency} | {len(got)} | {rate:,.0f} | {cpu * 1e6:,.0f} µs | "
                        f"{last - began:.1f} s |")
                rows.append(("throughput", line))
                print(line, flush=True)

    # 2. a faulty endpoint at a steady rate, default settings
    if "faulty" in args.phases:
        timeout = Settings().notify_timeout_s
        produced: dict[str, float] = {}
        first_attempt: dict[str, float] = {}

        def faulty(path: str, webhook_id: str, seen: int) -> Response:
            if seen == 1:
                first_attempt.setdefault(webhook_id, time.time())
            draw = random.Random(f"{webhook_id}:{seen}").random()
            if draw < 0.05:
                return Response(200, delay=timeout + 2.0)  # stalls past the notifier's timeout
            return Response(500) if draw < 0.30 else Response(200)

        count = int(args.faulty_rate * args.faulty_seconds)
        faulty_topic = f"bn-faulty-awards-{suffix}"  # its own topic: not behind the throughput phase's backlog
        ensure_topics(settings, [t for t in required_topics(settings.model_copy(update={"awards_topic": faulty_topic}))
                                 if t.name == faulty_topic])
        with WebhookReceiver(SECRET, respond=faulty) as receiver:
            proc = notifier(env, workdir, "notify-faulty", BADGESTREAM_WEBHOOK_URLS=receiver.url("/faulty"),
                            BADGESTREAM_AWARDS_TOPIC=faulty_topic,
                            BADGESTREAM_NOTIFY_GROUP_ID=f"bn-faulty-{suffix}",
                            BADGESTREAM_NOTIFY_OUTBOX=str(workdir / "outbox-faulty.sqlite"))
            try:
                warm_award = AwardRecord(award_id="warm", user_id="warm", badge_id="bench", awarded_at=at,
                                         event_id="warm", catalog_version="bench")
                producer.produce(faulty_topic, key=b"warm", value=warm_award.model_dump_json().encode())
                producer.flush(10)
                wait_for(lambda: "warm" in first_attempt, 120, "the notifier to start", proc)
                began = time.time()
                for i in range(count):
                    pause = began + i / args.faulty_rate - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    user = f"f{i}"
                    award = AwardRecord(award_id=make_award_id(user, "bench", None, 1), user_id=user, badge_id="bench",
                                        awarded_at=at, event_id=f"f{i}", catalog_version="bench")
                    produced[award.award_id] = time.time()
                    producer.produce(faulty_topic, key=user.encode(), value=award.model_dump_json().encode())
                    producer.poll(0)
                producer.flush(30)
                tail = time.time() + 10  # first attempts still missing after this count as "later"
                while time.time() < tail and not all(a in first_attempt for a in produced):
                    time.sleep(0.1)
            finally:
                proc.terminate()
                proc.wait(60)
            firsts = [first_attempt[a] - t for a, t in produced.items() if a in first_attempt]
            delivered = {r.webhook_id: r.at for r in receiver.delivered()}
            oks = [delivered[a] - t for a, t in produced.items() if a in delivered]
        for what, values in (("first attempt", firsts), ("first 2xx", oks)):
            line = (f"| {what} | {len(values)} of {count} | {shown(values, 0.5, count - len(values))} | "
                    f"{shown(values, 0.99, count - len(values))} |")
            rows.append(("faulty", line))
            print(line, flush=True)

    # 3. end to end at a steady rate, with the demo catalog (it declares nudges)
    if "e2e" in args.phases:
        sent: dict[str, float] = {}
        latencies: dict[str, list[float]] = {"badge.awarded": [], "badge.nudge": []}

        def record(item: Received) -> None:
            began = sent.get(str(item.data.get("event_id")))
            if began is not None:
                latencies.setdefault(item.type, []).append(item.at - began)

        with WebhookReceiver(SECRET, on_received=record) as receiver:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l", "warn"], env=env, cwd=REPO,
                                      stdout=(workdir / "worker.log").open("wb"), stderr=subprocess.STDOUT)
            sink = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink"], env=env, cwd=REPO,
                                    stdout=(workdir / "sink.log").open("wb"), stderr=subprocess.STDOUT)
            proc = notifier(env, workdir, "notify-e2e", BADGESTREAM_WEBHOOK_URLS=receiver.url("/e2e"),
                            BADGESTREAM_NOTIFY_GROUP_ID=f"bn-e2e-{suffix}",
                            BADGESTREAM_NOTIFY_OUTBOX=str(workdir / "outbox-e2e.sqlite"))
            try:
                warm = {"event_id": "warm-1", "type": "quiz_completed", "user_id": "warm",
                        "occurred_at": "2026-05-01T10:00:00+00:00",
                        "data": {"quiz_id": "q1", "score": 9, "total_questions": 10}}
                sent["warm-1"] = time.time()
                producer.produce(settings.input_topics[0], key=b"warm", value=orjson.dumps(warm))
                producer.flush(10)
                wait_for(lambda: any(r.data.get("event_id") == "warm-1" for r in receiver.received), 240,
                         "the worker and notifier to start", worker)
                events = list(simulate_events(args.users, int(args.rate * args.seconds), seed=5))
                began = time.time()
                for i, event in enumerate(events):
                    due = began + i / args.rate
                    pause = due - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    sent[event["event_id"]] = time.time()
                    producer.produce(settings.input_topics[0], key=event["user_id"].encode(), value=orjson.dumps(event))
                    producer.poll(0)
                producer.flush(30)
                produced_for = time.time() - began
                time.sleep(10)  # the tail
            finally:
                for child in (proc, sink, worker):
                    child.terminate()
                    child.wait(60)
        print(f"end to end: {len(events)} events in {produced_for:.1f}s ({len(events) / produced_for:.0f}/s)")
        # The notifier's own part: from the worker producing the award (or nudge) record (its Kafka
        # timestamp) to the receiver having the webhook.
        written = record_times(bootstrap, [settings.awards_topic, settings.nudges_topic])
        after_record: dict[str, list[float]] = {}
        for item in receiver.delivered("/e2e"):
            if item.webhook_id in written and str(item.data.get("event_id")) in sent:
                after_record.setdefault(item.type, []).append(item.at - written[item.webhook_id])
        for kind, values in latencies.items():
            if values:
                since = after_record.get(kind) or [math.nan]
                line = (f"| {kind} | {len(values)} | {statistics.median(values) * 1000:.0f} ms | "
                        f"{percentile(values, 0.99) * 1000:.0f} ms | {statistics.median(since) * 1000:.0f} ms | "
                        f"{percentile(since, 0.99) * 1000:.0f} ms |")
                rows.append(("e2e", line))
                print(line, flush=True)
    print("\n| endpoints | concurrency | deliveries | deliveries/s | notifier CPU per delivery | wall time |\n"
          "|---|---|---|---|---|---|")
    print("\n".join(line for kind, line in rows if kind == "throughput"))
    print(f"\nfaulty endpoint at {args.faulty_rate:.0f} awards/s for {args.faulty_seconds:.0f} s (+10 s tail):\n"
          "| from award to | seen | p50 | p99 |\n|---|---|---|---|")
    print("\n".join(line for kind, line in rows if kind == "faulty"))
    print(f"\nat {args.rate:.0f} events/s (event -> webhook, and award/nudge record -> webhook):\n"
          "| webhook | received | p50 | p99 | record -> webhook p50 | p99 |\n|---|---|---|---|---|---|")
    print("\n".join(line for kind, line in rows if kind == "e2e"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
