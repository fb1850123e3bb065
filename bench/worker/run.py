"""bench/worker: the worker end to end on the real broker, side by side with its alternatives, one table.

For a fresh-user stream and a mature one (few users, long histories), in one run:

a. bare confluent-kafka read + ``parse_event`` of the stream: the ceiling of any Python consumer;
b. a plain loop without Faust doing the worker's work: consume, decode, evaluate with the state in a
   dict (the worker's own :class:`EventProcessor`), produce awards and progress: the limit of this design;
c. the seed article's design: per event, for every badge listening to its type, SQL against SQLite
   (store the event, count the user's qualifying events, read and upsert progress);
w. the worker (``badgestream worker`` subprocess): events/s until its ``badgestream_events_total``
   has seen the last event;
d. latency at a steady offered rate (``--rate``, ``--seconds``): per award, from the input record's produce
   time to the award record's timestamp (and to the bench receiving it), with what the worker kept up;
e. restart: kill -9 the worker, start it again, time until it has processed a new event
   (static group membership, and dynamic as before);
f. output records (awards + progress + nudges) and changelog bytes per input event, largest stored value;
   and awards + progress per event on the demo stream (``make run``'s), DESIGN.md's measure.

Usage: python -m bench.worker.run [--fresh-users 10000] [--fresh-events 40000] [--mature-users 100]
       [--mature-events 30000] [--rate 2000] [--seconds 10] [--streams fresh,mature]
       [--worker-only | --latency-only | --scale-out [--workers 1,2,3]]
Everything shares the machine (broker JVM, producers, the worker): the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.kafka.broker import configured_or_throwaway_broker, free_port  # noqa: E402
from evaluators.runner import plugin_engine  # noqa: E402
from schemas.catalog import load_catalog  # noqa: E402
from schemas.events import parse_event  # noqa: E402
from streams.devstack.simulate import simulate_events  # noqa: E402
from streams.kafka import TopicSpec, ensure_topics, record_time_ms, required_topics  # noqa: E402
from streams.kafka import produce as produce_one  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.worker.handler import InputHandler, InputMessage, Topics  # noqa: E402
from streams.worker.metrics import WorkerMetrics  # noqa: E402
from streams.worker.output import OutputProducer  # noqa: E402
from streams.worker.processor import EventProcessor  # noqa: E402
from streams.worker.state_cache import StateCache  # noqa: E402

EVENTS_TOTAL = "badgestream_events_total{"
SEED_EVENTS = 3000  # the seed design is slow: measured on the first events of the stream


def commit_figures(port: int) -> dict[str, str]:
    """Rows d. of the worker's commits: all of them, their state writes, and one slice of those writes
    (before 2026-12-02 a commit wrote its pending states in one go, the loop waiting throughout: "none")."""
    return {"d. commits (count, mean, p99), whole run": histogram(port, "badgestream_commit_seconds"),
            "d. of which writing pending states": histogram(port, "badgestream_state_flush_seconds"),
            "d. one slice of those writes (the fetch loop waits for it)":
                histogram(port, "badgestream_state_write_slice_seconds")}


def histogram(port: int, name: str) -> str:
    """``count, mean and p99 (as the upper bound of its bucket)`` of one of the worker's histograms."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return "n/a"
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for line in body.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_count"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_sum"):
            total = float(line.rsplit(" ", 1)[1])
    if not count:
        return "none"
    p99 = next(bound for bound, seen in buckets if seen >= 0.99 * count)
    return f"{count:,.0f}, mean {total / count * 1000:.1f} ms, p99 <= {p99 * 1000:g} ms"


def events_processed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(EVENTS_TOTAL))


def produce(bootstrap: str, topic: str, events: list[bytes], keys: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20,
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 500000,
                         "enable.idempotence": True})
    for key, value in zip(keys, events, strict=True):
        produce_one(producer, topic, key, value)
        producer.poll(0)
    producer.flush(120)


def consumer(bootstrap: str, topics: list[str], **extra: Any) -> Consumer:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra})
    c.subscribe(topics)
    return c


def read(bootstrap: str, topic: str, count: int, handle: Any) -> float:
    """events/s of reading ``count`` records of ``topic`` and calling ``handle`` on each (clock starts at the first)."""
    c = consumer(bootstrap, [topic])
    seen, began = 0, None
    try:
        while seen < count:
            for message in c.consume(2000, timeout=1.0):
                if message.error() is not None:
                    continue
                if began is None:
                    began = time.perf_counter()
                handle(message)
                seen += 1
        return seen / (time.perf_counter() - (began or time.perf_counter()))
    finally:
        c.close()


def bare(bootstrap: str, topic: str, count: int) -> float:
    return read(bootstrap, topic, count, lambda m: parse_event(m.value()))


def plain_loop(bootstrap: str, topic: str, count: int, out_topic: str, partitions: int) -> float:
    """(b): the worker's work without Faust: the worker's own input handler (decode, evaluate, state
    cache, outputs, metrics) with its tables in dicts and confluent-kafka reading the input."""
    catalog = load_catalog(Settings().catalog_path)
    processor = EventProcessor(catalog, plugin_engine(catalog))
    table: dict[bytes, bytes] = {}
    ids: dict[bytes, bytes] = {}

    def write_ids(key: bytes, value: bytes | None, event: Any) -> None:
        if value is None:
            ids.pop(key, None)
        else:
            ids[key] = value

    # The values stay decoded between commits, as in the worker; this loop never commits, so they
    # are written only past the cache's limit.
    states = StateCache(lambda key, value, event: table.__setitem__(key, value), Settings().worker_state_cache,
                        write_ids=write_ids)
    out = OutputProducer(Settings(kafka_bootstrap_servers=bootstrap))  # the worker's, progress coalescing too
    handler = InputHandler(processor, states, out, WorkerMetrics(catalog.event_types()),
                           Topics(out_topic, out_topic, out_topic, out_topic, rekey=out_topic), partitions,
                           table.get, ids.get)

    def handle(message: Any) -> None:
        handler.handle(InputMessage(message.topic(), message.partition(), message.offset(), message.key(),
                                    message.value(), message.headers(),
                                    record_time_ms(message.timestamp()) / 1000 or None), None)

    began = time.perf_counter()
    rate = read(bootstrap, topic, count, handle)
    out.release()
    out.flush_blocking(60)
    return min(rate, count / (time.perf_counter() - began))


SEED_SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, event_id TEXT, user_id TEXT, type TEXT, occurred_at TEXT, data TEXT);
CREATE INDEX events_user ON events (user_id, type);
CREATE TABLE progress (user_id TEXT, badge_id TEXT, progress INTEGER, target INTEGER, PRIMARY KEY (user_id, badge_id));
CREATE TABLE user_badges (user_id TEXT, badge_id TEXT, awarded_at TEXT, PRIMARY KEY (user_id, badge_id));
"""


def seed_design(bootstrap: str, topic: str, count: int, path: Path) -> float:
    """(c): the seed article's worker: every listening badge queries the user's history in SQLite."""
    catalog = load_catalog(Settings().catalog_path)
    listening: dict[str, list[tuple[str, list[str], int]]] = {}
    for badge in catalog.badges:
        target = getattr(badge.rule, "count", None) or 1
        for event_type in badge.on:
            listening.setdefault(event_type, []).append((badge.id, list(badge.on), int(target)))
    db = sqlite3.connect(path)
    db.executescript(SEED_SCHEMA)

    def handle(message: Any) -> None:
        event = parse_event(message.value())
        db.execute("INSERT INTO events (event_id, user_id, type, occurred_at, data) VALUES (?, ?, ?, ?, ?)",
                   (event.event_id, event.user_id, event.type, event.occurred_at.isoformat(),
                    orjson.dumps(event.data).decode()))
        for badge_id, types, target in listening.get(event.type, ()):
            marks = ",".join("?" * len(types))
            (n,) = db.execute(f"SELECT COUNT(DISTINCT event_id) FROM events WHERE user_id = ? AND type IN ({marks})",
                              (event.user_id, *types)).fetchone()
            row = db.execute("SELECT progress FROM progress WHERE user_id = ? AND badge_id = ?",
                             (event.user_id, badge_id)).fetchone()
            if row is None or row[0] != n:
                db.execute("INSERT INTO progress VALUES (?, ?, ?, ?) ON CONFLICT (user_id, badge_id) "
                           "DO UPDATE SET progress = excluded.progress", (event.user_id, badge_id, n, target))
            if n >= target:
                db.execute("INSERT OR IGNORE INTO user_badges VALUES (?, ?, ?)",
                           (event.user_id, badge_id, event.occurred_at.isoformat()))
        db.commit()

    try:
        return read(bootstrap, topic, count, handle)
    finally:
        db.close()


def end_offsets(bootstrap: str, topics: list[str]) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}"})
    try:
        total = 0
        for topic in topics:
            meta = c.list_topics(topic, timeout=10).topics.get(topic)
            for partition in (meta.partitions if meta is not None else {}):
                low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                total += high - low
        return total
    finally:
        c.close()


def changelog_bytes(bootstrap: str, topic: str) -> tuple[int, int, int]:
    """(records, total value bytes, largest value) of a changelog topic, read to its end."""
    records = end_offsets(bootstrap, [topic])
    c = consumer(bootstrap, [topic])
    seen = total = largest = 0
    deadline = time.monotonic() + 120
    try:
        while seen < records and time.monotonic() < deadline:
            for message in c.consume(5000, timeout=1.0):
                if message.error() is None:
                    size = len(message.value() or b"")
                    seen += 1
                    total += size
                    largest = max(largest, size)
        return seen, total, largest
    finally:
        c.close()


@dataclass
class Row:
    stream: str
    events: int
    figures: dict[str, str] = field(default_factory=dict)


class Worker:
    """One ``badgestream worker`` subprocess on the bench's topics."""

    def __init__(self, settings: Settings, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.port = settings.web_port
        self.env = {**os.environ, "PYTHONPATH": str(REPO),
                    "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                    "BADGESTREAM_INPUT_TOPICS": settings.input_topics[0],
                    "BADGESTREAM_AWARDS_TOPIC": settings.awards_topic,
                    "BADGESTREAM_PROGRESS_TOPIC": settings.progress_topic,
                    "BADGESTREAM_NUDGES_TOPIC": settings.nudges_topic,
                    "BADGESTREAM_DLQ_TOPIC": settings.dlq_topic,
                    "BADGESTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions),
                    "BADGESTREAM_APP_ID": settings.app_id, "BADGESTREAM_WEB_PORT": str(self.port),
                    "BADGESTREAM_DATA_DIR": str(workdir / "worker"), **(extra_env or {})}
        self.log_path = workdir / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-l", "warn"], env=self.env,
                                        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def cpu_seconds(self) -> float:
        """User and system CPU time the worker process has used so far (Linux /proc)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def processed(self) -> float:
        return events_processed(self.port)

    def wait_for(self, count: float, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.processed() < count:
            if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                raise SystemExit(f"worker stopped or stuck; see {self.log_path}")
            time.sleep(0.02)

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Latency:
    """Event -> award at a steady offered rate, one sample per award the phase's events decided.

    Measured from the input record's produce time (the bench sets the record's timestamp to the moment
    it hands the event to its producer) to the award record's timestamp (set by the worker's producer
    when it produced the award), and to the moment the bench's own consumer received the award."""

    offered: float  # events/s actually sent
    sent: int
    to_record_ms: list[float]
    to_consumer_ms: list[float]
    worker_rate: float  # events/s the worker(s) handled while the events were being sent
    behind: float  # events sent but not yet handled when the sending ended

    @staticmethod
    def pick(ms: list[float], q: float) -> float:
        return ms[min(len(ms) - 1, int(q * len(ms)))]

    def figure(self, ms: list[float]) -> str:
        if not ms:
            return f"no awards at {self.offered:,.0f}/s"
        return (f"p50 {self.pick(ms, 0.5):,.0f} / p99 {self.pick(ms, 0.99):,.0f} ms at {self.offered:,.0f}/s "
                f"({len(ms)} awards)")

    def summary(self) -> str:
        """The table's row: from the input record to the award record."""
        return self.figure(self.to_record_ms)

    def to_consumer(self) -> str:
        return self.figure(self.to_consumer_ms)

    def worker(self) -> str:
        kept_up = "kept up" if self.behind <= max(self.offered * 0.05, 10) else "overloaded"
        return f"{self.worker_rate:,.0f}/s while sending, {self.behind:,.0f} events behind at its end ({kept_up})"


def latency(bootstrap: str, settings: Settings, events: list[dict[str, Any]], rate: float,
            processed: Callable[[], float], label: str = "") -> Latency:
    """Send ``events`` at ``rate`` per second and time every award they decide (:class:`Latency`).

    ``processed()`` is the worker's (or the group's) count of handled events: the phase waits until
    they are all handled, so the awards of a backlog are measured too, not cut off."""
    sent_at: dict[str, float] = {}  # event_id -> wall-clock produce time (s)
    to_record: list[float] = []
    to_consumer: list[float] = []
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "latest", "enable.auto.commit": False})
    c.subscribe([settings.awards_topic])
    while not c.assignment():
        c.poll(0.2)
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            message = c.poll(0.05)  # poll, not consume(n, timeout): that would add the timeout
            if message is not None and message.error() is None:
                now = time.time()
                event_id = orjson.loads(message.value() or b"{}").get("event_id")
                produced = sent_at.get(event_id)  # an event may decide several awards: one sample each
                if produced is not None:
                    to_consumer.append((now - produced) * 1000)
                    to_record.append(record_time_ms(message.timestamp()) - produced * 1000)

    collector = threading.Thread(target=collect)
    collector.start()
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 0,
                         "enable.idempotence": True})
    # Connected, metadata and producer id in hand before the clock starts: otherwise the first
    # events wait for those, which is the benchmark's start-up, not the worker's latency.
    before = processed()
    producer.produce(settings.input_topics[0], key=b"latency-warm-up", value=orjson.dumps({
        "event_id": f"warm-{uuid.uuid4().hex[:8]}", "type": "user_logged_in", "user_id": "latency-warm-up",
        "occurred_at": "2026-01-01T00:00:00+00:00"}))
    producer.flush(30)
    deadline = time.monotonic() + 10
    while processed() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    before = processed()
    start = time.perf_counter()
    last_report = start
    for n, event in enumerate(events):
        due = start + n / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.001))
        if now - last_report >= 5:
            last_report = now
            print(f"[{label}] latency phase: {n:,} of {len(events):,} sent, {len(to_record):,} awards received, "
                  f"worker {n - (processed() - before):,.0f} events behind", flush=True)
        produced = time.time()
        sent_at[event["event_id"]] = produced
        producer.produce(settings.input_topics[0], key=event["user_id"].encode(), value=orjson.dumps(event),
                         timestamp=int(produced * 1000))
        producer.poll(0)
    producer.flush(30)
    sending = time.perf_counter() - start
    handled = processed() - before
    # Past the last event's awards, however far behind the worker is (its backlog's awards count too).
    deadline = time.monotonic() + 300
    while processed() < before + len(events) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)
    stop.set()
    collector.join()
    c.close()
    return Latency(offered=len(events) / sending, sent=len(events), to_record_ms=sorted(to_record),
                   to_consumer_ms=sorted(to_consumer), worker_rate=handled / sending, behind=len(events) - handled)


def restart_time(worker: Worker, bootstrap: str, n: int) -> float:
    """Seconds from starting a crashed (kill -9) worker again until it has processed one new event.

    A crash, not a clean stop: a dynamic member that stops cleanly leaves the group at once, one
    that dies is only noticed when its session times out; a static member's successor takes over
    its partitions without waiting for that."""
    time.sleep(4)  # past a commit, so the restart does not start by re-reading a backlog
    worker.kill9()
    probe = orjson.dumps({"event_id": f"probe-{n}-{uuid.uuid4().hex[:6]}", "type": "user_logged_in",
                          "user_id": f"probe-{n}", "occurred_at": "2026-01-01T00:00:00+00:00"})
    produce(bootstrap, worker.settings.input_topics[0], [probe], [f"probe-{n}".encode()])
    began = time.perf_counter()
    worker.start()
    # The counter restarts at 0 with the process: one event processed means the partitions are back.
    deadline = time.monotonic() + 180
    while worker.processed() < 1:
        if time.monotonic() > deadline:
            return float("nan")
        time.sleep(0.05)
    return time.perf_counter() - began


def python_start() -> float:
    """Seconds to start a worker's Python and import what it imports, without Kafka (part of every restart)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import streams.worker.app, streams.cli.main"], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - began


DEMO_EVENTS = REPO / "deploy" / "demo" / "events.jsonl"


def bench_settings(bootstrap: str, suffix: str, partitions: int, workdir: Path) -> Settings:
    """A worker's settings on topics of its own (created here), named after ``suffix``."""
    settings = Settings(kafka_bootstrap_servers=bootstrap, input_topics=[f"bench-events-{suffix}"],
                        awards_topic=f"bench-awards-{suffix}", progress_topic=f"bench-progress-{suffix}",
                        nudges_topic=f"bench-nudges-{suffix}", dlq_topic=f"bench-dlq-{suffix}",
                        sink_dlq_topic=f"bench-sink-dlq-{suffix}", topic_partitions=partitions,
                        app_id=f"bench-{suffix}", web_port=free_port(), data_dir=workdir / "worker")
    ensure_topics(settings, required_topics(settings))
    return settings


def demo_records(bootstrap: str, args: argparse.Namespace) -> str:
    """Figure f on the demo stream (``make run``'s events, sent at once): output records per event."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-demo-"))
    suffix = f"demo-{uuid.uuid4().hex[:6]}"
    settings = bench_settings(bootstrap, suffix, args.partitions, workdir)
    values = [line for line in DEMO_EVENTS.read_bytes().splitlines() if line.strip()]
    produce(bootstrap, settings.input_topics[0], values, [orjson.loads(v)["user_id"].encode() for v in values])
    worker = Worker(settings, workdir)
    worker.start()
    try:
        worker.wait_for(len(values))
        time.sleep(3)  # the coalescing window and the last commit
        outputs = end_offsets(bootstrap, [settings.awards_topic, settings.progress_topic])
    finally:
        worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    figure = f"{outputs / len(values):.2f} ({outputs:,} awards and progress for {len(values)} events)"
    print(f"[demo] output records per event {figure}", flush=True)
    return figure


def latency_events(name: str, users: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The latency phase's events: on the fresh stream users never seen before, on the mature one the
    stream's own users (their long histories); event ids of their own either way."""
    fresh = name == "fresh"
    return [dict(e, user_id=("lat-" + e["user_id"]) if fresh else e["user_id"], event_id="lat-" + e["event_id"])
            for e in simulate_events(max(users // 4, 100) if fresh else users, int(args.rate * args.seconds),
                                     seed=11)]


def run_stream(bootstrap: str, name: str, users: int, events: int, args: argparse.Namespace) -> Row:
    row = Row(name, events)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-worker-{name}-"))
    suffix = f"{name}-{uuid.uuid4().hex[:6]}"
    settings = bench_settings(bootstrap, suffix, args.partitions, workdir)
    ensure_topics(settings, [TopicSpec(f"bench-loop-out-{suffix}", args.partitions, {})])
    dicts = list(simulate_events(users, events, seed=7))
    values = [orjson.dumps(e) for e in dicts]
    keys = [e["user_id"].encode() for e in dicts]
    topic = settings.input_topics[0]
    produce(bootstrap, topic, values, keys)
    print(f"[{name}] {events} events of {users} users produced; load {os.getloadavg()[0]:.1f}", flush=True)

    a = b = c = float("nan")
    if not (args.worker_only or args.latency_only):
        a = bare(bootstrap, topic, events)
        b = plain_loop(bootstrap, topic, events, f"bench-loop-out-{suffix}", args.partitions)
        c = seed_design(bootstrap, topic, min(SEED_EVENTS, events), workdir / "seed.db")
        print(f"[{name}] bare {a:,.0f}/s, plain loop {b:,.0f}/s, seed design {c:,.0f}/s", flush=True)

    worker = Worker(settings, workdir)
    worker.start()
    try:
        # The stream is already there: the clock runs from the first event processed to the last.
        worker.wait_for(1)
        began, cpu_began = time.perf_counter(), worker.cpu_seconds()
        first = worker.processed()
        worker.wait_for(events)
        elapsed = time.perf_counter() - began
        w = (events - first) / elapsed
        cpu = (worker.cpu_seconds() - cpu_began) / elapsed
        load = os.getloadavg()[0]
        gc_passes = histogram(worker.port, "badgestream_gc_pause_seconds")
        print(f"[{name}] worker {w:,.0f}/s, {cpu:.0%} of a core, {cpu / w * 1e6:,.0f} us CPU per event "
              f"(load {load:.1f}); GC passes {gc_passes}", flush=True)
        cost = {"worker CPU (share of one core)": f"{cpu:.0%}", "worker CPU us per event": f"{cpu / w * 1e6:,.0f}",
                "worker GC passes from start-up to caught up (count, mean, p99)": gc_passes}
        caught_up = {"worker (catching up on the stream)": f"{w:,.0f}/s", **cost}

        if args.latency_only:
            lat = latency(bootstrap, settings, latency_events(name, users, args), args.rate, worker.processed, name)
            print(f"[{name}] latency {lat.summary()}; to the bench's consumer {lat.to_consumer()}; "
                  f"worker {lat.worker()}", flush=True)
            row.figures = {**caught_up,
                           f"d. event -> award record at {args.rate:,.0f}/s": lat.summary(),
                           "d. event -> award received by the bench": lat.to_consumer(),
                           "d. worker during the latency phase": lat.worker(),
                           **commit_figures(worker.port),
                           "load average during the worker run": f"{load:.1f}"}
            return row

        # (f) before the latency phase adds its own events
        time.sleep(3)  # let the last commit and changelog writes go out
        outputs = end_offsets(bootstrap, [settings.awards_topic, settings.progress_topic, settings.nudges_topic])
        records, total, largest = changelog_bytes(bootstrap, f"{settings.app_id}-user-state-changelog")
        # The resend window's ids live in a table of their own (not in the stored value).
        id_records, id_total, _ = changelog_bytes(bootstrap, f"{settings.app_id}-event-ids-changelog")
        records, total = records + id_records, total + id_total

        if args.worker_only:
            print(f"[{name}] output records/event {outputs / events:.2f}, changelog {total / events:,.0f} B/event "
                  f"({records / events:.2f} records; resend ids {id_total / events:,.0f} B/event), "
                  f"largest value {largest:,} B", flush=True)
            row.figures = {"worker": f"{w:,.0f}/s", **cost,
                           "f. output records per event": f"{outputs / events:.2f}",
                           "f. changelog bytes per event": f"{total / events:,.0f} ({records / events:.2f} records)",
                           "   of which resend ids": f"{id_total / events:,.0f}",
                           "f. largest stored value": f"{largest:,} B"}
            return row
        lat = latency(bootstrap, settings, latency_events(name, users, args), args.rate, worker.processed, name)
        commits = commit_figures(worker.port)
        print(f"[{name}] latency {lat.summary()}; worker {lat.worker()}; "
              + "; ".join(f"{row_name} {figure}" for row_name, figure in commits.items()), flush=True)
        static = restart_time(worker, bootstrap, 1)
        worker.stop()
        worker.env["BADGESTREAM_WORKER_INSTANCE_ID"] = ""  # dynamic membership, as before
        worker.start()
        warm = orjson.dumps({"event_id": f"warm-{uuid.uuid4().hex[:6]}", "type": "user_logged_in",
                             "user_id": "warm", "occurred_at": "2026-01-01T00:00:00+00:00"})
        produce(bootstrap, settings.input_topics[0], [warm], [b"warm"])  # everything else may be committed
        worker.wait_for(1)
        dynamic = restart_time(worker, bootstrap, 2)
        started = python_start()
        print(f"[{name}] restart {static:.1f}s static, {dynamic:.1f}s dynamic membership", flush=True)
    finally:
        worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    row.figures = {
        "a. bare read+parse": f"{a:,.0f}/s",
        "b. plain loop (no Faust)": f"{b:,.0f}/s",
        f"c. seed design (first {min(SEED_EVENTS, events):,})": f"{c:,.0f}/s",
        "worker": f"{w:,.0f}/s",
        **cost,
        "worker / b": f"{w / b:.0%}",
        "worker / c": f"{w / c:.1f}x",
        f"d. latency at {args.rate:,.0f}/s (event -> award record)": lat.summary(),
        "d. worker during the latency phase": lat.worker(),
        **commits,
        "e. restart after kill -9 (static / dynamic membership)": f"{static:.1f} s / {dynamic:.1f} s",
        "   of which starting the process (import, catalog)": f"{started:.1f} s",
        "f. output records per event": f"{outputs / events:.2f}",
        "f. changelog bytes per event": f"{total / events:,.0f} ({records / events:.2f} records)",
        "   of which resend ids": f"{id_total / events:,.0f}",
        "f. largest stored value": f"{largest:,} B",
        "load average during the worker run": f"{load:.1f}",
    }
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh-users", type=int, default=10_000)
    parser.add_argument("--fresh-events", type=int, default=40_000)
    parser.add_argument("--mature-users", type=int, default=100)
    parser.add_argument("--mature-events", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s of the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--partitions", type=int, default=None, help="of every topic (4; 8 with --scale-out)")
    parser.add_argument("--streams", default="fresh,mature", help="which streams, comma-separated")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--worker-only", action="store_true",
                      help="only the worker's throughput and figure f (no alternatives, latency or restart)")
    only.add_argument("--latency-only", action="store_true",
                      help="only the worker catching up on the stream, then event -> award latency at --rate")
    only.add_argument("--scale-out", action="store_true",
                      help="only several workers in one group (--workers), aggregate and per CPU-second")
    parser.add_argument("--workers", default="1,2,3", help="worker counts of --scale-out, comma-separated")
    args = parser.parse_args()
    if args.partitions is None:
        args.partitions = 8 if args.scale_out else 4
    streams = {"fresh": (args.fresh_users, args.fresh_events), "mature": (args.mature_users, args.mature_events)}
    if args.scale_out:
        from bench.worker.scale_out import run_scale_out  # it imports this module

        with configured_or_throwaway_broker("bench-worker-kafka-") as bootstrap:
            lines = run_scale_out(bootstrap, streams, args)
        print()
        print("\n".join(lines))
        return 0
    with configured_or_throwaway_broker("bench-worker-kafka-") as bootstrap:
        if args.latency_only:
            rows = [run_stream(bootstrap, name, *streams[name], args) for name in args.streams.split(",")]
            print_table(rows, streams)
            return 0
        demo = demo_records(bootstrap, args)
        rows = [run_stream(bootstrap, name, *streams[name], args) for name in args.streams.split(",")]
    print()
    print(f"demo stream (deploy/demo/events.jsonl, make run): awards + progress per event {demo}")
    print_table(rows, streams)
    return 0


def print_table(rows: list[Row], streams: dict[str, tuple[int, int]]) -> None:
    names = list(rows[0].figures)
    print()
    heads = [f"{row.stream} ({streams[row.stream][0]:,} users, {row.events:,} events)" for row in rows]
    print("| figure | " + " | ".join(heads) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for figure in names:
        print(f"| {figure} | " + " | ".join(row.figures[figure] for row in rows) + " |")


if __name__ == "__main__":
    sys.exit(main())
