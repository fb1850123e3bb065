"""Smoke tests that prove the parts are real: broker round trips, Faust+RocksDB, both databases."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer

from deploy.kafka.broker import free_port

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def test_confluent_kafka_round_trip(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("smoke-ck")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"u-1", value=b'{"hello": "kafka"}')
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        message = None
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None
        assert (message.key(), message.value()) == (b"u-1", b'{"hello": "kafka"}')
    finally:
        consumer.close()


def test_aiokafka_round_trip(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = topic_factory("smoke-aio")

    async def run() -> tuple[bytes | None, bytes | None]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"payload", key=b"u-2")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}",
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), timeout=30)
            await consumer.commit()
            return message.key, message.value
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == (b"u-2", b"payload")


def _wait_for_line(path: Path, line: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        if proc.poll() is not None:
            raise AssertionError(f"faust worker exited early with {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"{line!r} never appeared in {path}: {path.read_text() if path.exists() else ''}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_faust_worker_keeps_rocksdb_state_across_restart(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topic = topic_factory("smoke-faust")
    out = tmp_path / "counts.txt"
    env = {
        **os.environ,
        "SMOKE_APP_ID": unique_name("smoke-app"),
        "SMOKE_BROKER": kafka_bootstrap,
        "SMOKE_TOPIC": topic,
        "SMOKE_DATADIR": str(tmp_path / "faust-data"),
        "SMOKE_OUT": str(out),
        "PYTHONPATH": str(REPO),
    }
    # Faust's worker command serves its web views whatever the app says, on 0.0.0.0:6066 unless
    # told otherwise: a dev stack's worker holds that port.
    cmd = [sys.executable, "-m", "faust", "-A", "tests.integration.smoke_app", "worker", "-l", "warn",
           "--web-bind", "127.0.0.1", "--web-host", "127.0.0.1", "--web-port", str(free_port())]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    with (tmp_path / "w1.log").open("wb") as log:
        first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        producer.produce(topic, key=b"user-a", value=b"1")
        producer.flush(10)
        _wait_for_line(out, "user-a 1", first)
    finally:
        _stop(first)
    rocks_files = list((tmp_path / "faust-data").rglob("*.sst")) + list((tmp_path / "faust-data").rglob("CURRENT"))
    assert rocks_files, "the table was not written to RocksDB on disk"

    with (tmp_path / "w2.log").open("wb") as log:
        second = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        producer.produce(topic, key=b"user-a", value=b"2")
        producer.flush(10)
        _wait_for_line(out, "user-a 2", second)
    finally:
        _stop(second)
    assert out.read_text().splitlines() == ["user-a 1", "user-a 2"]


def test_database_reachable_through_sqlalchemy(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE smoke (id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(sa.text("INSERT INTO smoke (id, name) VALUES (1, 'badge')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT name FROM smoke WHERE id = 1")).scalar_one() == "badge"
    finally:
        engine.dispose()
