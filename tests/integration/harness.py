"""Helpers for tests that run badgestream processes against the real broker.

A worker or sink runs as a real subprocess (``python -m streams.cli worker``) with its own
settings in the environment, so tests can SIGTERM it, ``kill -9`` it and restart it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.kafka import LIBRDKAFKA_LOG

REPO = Path(__file__).resolve().parents[2]
DEMO_CATALOG = REPO / "deploy" / "demo" / "catalog.yaml"
DEMO_EVENTS = REPO / "deploy" / "demo" / "events.jsonl"


def free_port() -> int:
    from deploy.kafka.broker import free_port as _free_port

    return _free_port()


@dataclass
class StackConfig:
    """Topic names and settings of one isolated badgestream deployment inside the shared broker."""

    bootstrap: str
    suffix: str
    data_dir: Path
    partitions: int = 2
    catalog: Path = DEMO_CATALOG
    database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def input_topic(self) -> str:
        return f"user-events-{self.suffix}"

    @property
    def awards_topic(self) -> str:
        return f"badge-awards-{self.suffix}"

    @property
    def progress_topic(self) -> str:
        return f"badge-progress-{self.suffix}"

    @property
    def dlq_topic(self) -> str:
        return f"badge-events-dlq-{self.suffix}"

    @property
    def sink_dlq_topic(self) -> str:
        return f"badge-sink-dlq-{self.suffix}"

    @property
    def app_id(self) -> str:
        return f"badgestream-{self.suffix}"

    def settings(self) -> Any:
        from streams.settings import Settings

        return Settings(kafka_bootstrap_servers=self.bootstrap, input_topics=[self.input_topic],
                        awards_topic=self.awards_topic, progress_topic=self.progress_topic,
                        dlq_topic=self.dlq_topic, sink_dlq_topic=self.sink_dlq_topic,
                        topic_partitions=self.partitions, app_id=self.app_id, catalog_path=self.catalog,
                        sink_group_id=f"sink-{self.suffix}",
                        **({"database_url": self.database_url} if self.database_url else {}))

    def create_topics(self) -> StackConfig:
        """Create every topic up front, as an operator would, so no producer races the worker."""
        from streams.kafka import ensure_topics

        ensure_topics(self.settings())
        return self

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "BADGESTREAM_INPUT_TOPICS": self.input_topic,
            "BADGESTREAM_AWARDS_TOPIC": self.awards_topic,
            "BADGESTREAM_PROGRESS_TOPIC": self.progress_topic,
            "BADGESTREAM_DLQ_TOPIC": self.dlq_topic,
            "BADGESTREAM_SINK_DLQ_TOPIC": self.sink_dlq_topic,
            "BADGESTREAM_TOPIC_PARTITIONS": str(self.partitions),
            "BADGESTREAM_APP_ID": self.app_id,
            "BADGESTREAM_SINK_GROUP_ID": f"sink-{self.suffix}",
            "BADGESTREAM_CATALOG_PATH": str(self.catalog),
            "BADGESTREAM_DATA_DIR": str(self.data_dir / "worker"),
            "BADGESTREAM_WEB_PORT": str(free_port()),
            **({"BADGESTREAM_DATABASE_URL": self.database_url} if self.database_url else {}),
            **self.extra_env,
            **overrides,
        }
        return env


class Process:
    """A badgestream sub-command as a subprocess, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, module: str = "streams.cli") -> None:
        self.module = module
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Process:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(self.args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], env=self.env, cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process ended by itself within ``timeout`` seconds."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker(stack: StackConfig, name: str = "worker", **env: str) -> Process:
    return Process(["worker", "-l", "info"], stack.env(**env), stack.data_dir / f"{name}.log")


def producer(bootstrap: str, partitioner: str = "murmur2_random") -> Producer:
    # murmur2_random: the Java client's partitioner, which Faust's producer uses too.
    return Producer({"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG, "partitioner": partitioner,
                     "linger.ms": 5,
                     "enable.idempotence": True})


def produce_lines(bootstrap: str, topic: str, lines: Iterable[bytes], key_of: Any = None) -> int:
    """Produce raw lines, keyed by the event's user_id when it parses (else by ``key_of(line)`` or none)."""
    p = producer(bootstrap)
    count = 0
    for line in lines:
        key: bytes | None
        if key_of is not None:
            key = key_of(line)
        else:
            try:
                key = str(json.loads(line)["user_id"]).encode()
            except Exception:
                key = None
        p.produce(topic, key=key, value=line)
        count += 1
        if count % 10000 == 0:
            p.flush(30)
        p.poll(0)
    assert p.flush(60) == 0
    return count


def read_events(path: Path = DEMO_EVENTS) -> list[bytes]:
    return [line.encode() for line in path.read_text().splitlines() if line.strip()]


def consume(bootstrap: str, topic: str, *, expected: int | None = None, timeout: float = 120,
            idle: float = 5.0, watch: Process | None = None) -> list[Any]:
    """Read a topic from the beginning until ``expected`` messages arrived (then ``idle`` seconds more
    to catch extras), or, without ``expected``, until ``idle`` seconds pass with nothing new.
    With ``watch``, fail at once when that process dies instead of waiting out the timeout."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG,
                         "group.id": f"reader-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if watch is not None and not watch.alive():
                raise AssertionError(f"{watch.args[0]} died:\n{watch.log()[-4000:]}")
            batch = consumer.consume(1000, timeout=0.5)
            fresh = [m for m in batch if m.error() is None]
            if fresh:
                messages.extend(fresh)
                last_new = time.monotonic()
            if expected is not None and len(messages) >= expected and time.monotonic() - last_new >= idle:
                break
            if expected is None and messages and time.monotonic() - last_new >= idle:
                break
    finally:
        consumer.close()
    return messages


def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG, "group.id": "offsets-probe"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def award_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """Everything that identifies an award and must be reproduced exactly."""
    return (record["award_id"], record["user_id"], record["badge_id"], record.get("tier"),
            record.get("occurrence", 1), record["awarded_at"], record["event_id"])


def awards_from(messages: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for message in messages:
        yield json.loads(message.value())


def offline_awards(events_file: Path, catalog: Path = DEMO_CATALOG) -> list[dict[str, Any]]:
    """``badgestream evaluate`` over the file, as the reference result."""
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "evaluate", "--catalog", str(catalog), str(events_file)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def processes_mentioning(text: str) -> list[int]:
    """Pids of the live processes whose command line or environment contains ``text`` (this one
    excluded): what is left of a run whose state directory is ``text``."""
    from deploy.kafka.broker import _pid_alive

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if text.encode() in seen and _pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
