"""The upstream SDK and the ``emit``/``simulate``/``schema`` commands against the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.catalog import load_catalog
from schemas.errors import InvalidEventError
from streams.devstack.simulate import simulate_events
from streams.kafka import partition_for
from streams.sdk.producer import BadgeEvents
from streams.settings import Settings
from tests.integration import harness

pytestmark = pytest.mark.kafka


def read_all(bootstrap: str, topic: str, expected: int) -> list[object]:
    return harness.consume(bootstrap, topic, expected=expected, timeout=60, idle=1)


@pytest.fixture
def topic(topic_factory: Callable[..., str]) -> str:
    return topic_factory("sdk-events", partitions=4)


@pytest.fixture
def events(kafka_bootstrap: str, topic: str) -> BadgeEvents:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, input_topics=[topic])
    return BadgeEvents(settings, catalog=load_catalog(harness.DEMO_CATALOG))


def test_emit_fills_ids_and_time_keys_by_user_and_lands_where_the_worker_expects(
    events: BadgeEvents, kafka_bootstrap: str, topic: str
) -> None:
    sent = [events.emit("quiz_completed", user_id=f"u-{i}", data={"quiz_id": "q1", "score": 9, "total_questions": 10})
            for i in range(20)]
    events.flush()
    events.close()
    assert len({e.event_id for e in sent}) == 20
    assert all(e.occurred_at.tzinfo is not None for e in sent)
    messages = read_all(kafka_bootstrap, topic, 20)
    assert len(messages) == 20
    for message in messages:
        body = json.loads(message.value())  # type: ignore[attr-defined]
        assert message.key() == body["user_id"].encode()  # type: ignore[attr-defined]
        # The Java client's murmur2 placement: the worker processes it in place, no re-keying hop.
        assert message.partition() == partition_for(message.key(), 4)  # type: ignore[attr-defined]


def test_invalid_events_raise_at_the_call_site_and_nothing_is_sent(
    events: BadgeEvents, kafka_bootstrap: str, topic: str
) -> None:
    with pytest.raises(InvalidEventError) as missing:
        events.emit("quiz_completed", user_id="u-1", data={"quiz_id": "q1"})
    assert missing.value.code == "invalid_data" and "score" in missing.value.reason
    with pytest.raises(InvalidEventError) as zone:
        events.emit("user_logged_in", user_id="u-1", tz="Mars/Olympus")
    assert zone.value.code == "invalid_envelope" and "tz" in zone.value.reason
    with pytest.raises(InvalidEventError) as naive:
        events.emit("user_logged_in", user_id="u-1", occurred_at=datetime(2026, 1, 1))
    assert "time zone" in naive.value.reason
    with pytest.raises(InvalidEventError) as big:
        events.emit("user_logged_in", user_id="u-1", data={"blob": "x" * 70_000})
    assert big.value.code == "too_large"
    events.emit("user_logged_in", user_id="u-ok")
    events.close()
    messages = read_all(kafka_bootstrap, topic, 1)
    assert [json.loads(m.value())["user_id"] for m in messages] == ["u-ok"]  # type: ignore[attr-defined]


def test_async_use_awaits_the_ack(events: BadgeEvents, kafka_bootstrap: str,
                                                                  topic: str) -> None:
    async def run() -> str:
        envelope = await events.emit_async("user_logged_in", user_id="u-async",
                                           occurred_at=datetime(2026, 11, 1, tzinfo=UTC))
        return envelope.event_id

    event_id = asyncio.run(run())
    events.close()
    messages = read_all(kafka_bootstrap, topic, 1)
    assert json.loads(messages[0].value())["event_id"] == event_id  # type: ignore[attr-defined]


def test_producer_settings_turn_on_idempotence(kafka_bootstrap: str) -> None:
    captured: dict[str, object] = {}

    class Recording(BadgeEvents):
        def __init__(self, settings: Settings) -> None:
            import streams.sdk.producer as module

            real = module.Producer

            def fake(config: dict[str, object]) -> object:
                captured.update(config)
                return real(config)

            module.Producer = fake  # type: ignore[misc,assignment]
            try:
                super().__init__(settings)
            finally:
                module.Producer = real  # type: ignore[misc]

    producer = Recording(Settings(kafka_bootstrap_servers=kafka_bootstrap))
    producer.close()
    assert captured["enable.idempotence"] is True
    assert captured["acks"] == "all"
    assert captured["partitioner"] == "murmur2_random"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(harness.REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=harness.REPO, capture_output=True,
                          text=True, env=full_env)


def test_emit_command_one_event_and_a_file(kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    env = {"BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "BADGESTREAM_INPUT_TOPICS": topic}
    one = run_cli("emit", "quiz_completed", "--user", "u-cli", "--data",
                  '{"quiz_id": "q1", "score": 9, "total_questions": 10}', env=env)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["user_id"] == "u-cli"
    bad = run_cli("emit", "quiz_completed", "--user", "u-cli", "--data", '{"quiz_id": 1}', env=env)
    assert bad.returncode == 2 and "invalid_data" in bad.stderr

    lines = [json.dumps({"event_id": f"f-{i}", "type": "user_logged_in", "user_id": f"u-{i}",
                         "occurred_at": "2026-11-01T08:00:00+00:00"}) for i in range(5)]
    lines.insert(2, "not json")
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("\n".join(lines) + "\n")
    many = run_cli("emit", "--file", str(events_file), env=env)
    assert many.returncode == 1  # one line rejected, said so, the others sent
    assert "line 3: invalid_json" in many.stderr and "sent 5 events" in many.stderr
    messages = read_all(kafka_bootstrap, topic, 6)
    assert len(messages) == 6


def test_simulate_is_reproducible_by_seed(tmp_path: Path) -> None:
    first = list(simulate_events(50, 2000, seed=3))
    assert first == list(simulate_events(50, 2000, seed=3))
    assert first != list(simulate_events(50, 2000, seed=4))
    assert len(first) == 2000
    ids = [e["event_id"] for e in first]
    assert len(set(ids)) < len(ids), "a realistic stream repeats some events (upstream retries)"
    assert {e["type"] for e in first} == {"user_logged_in", "quiz_completed", "referral_signup"}
    assert len({e["tz"] for e in first}) > 3
    by_user: dict[str, list[datetime]] = {}
    for event in first:
        by_user.setdefault(event["user_id"], []).append(datetime.fromisoformat(event["occurred_at"]))
    assert any(times != sorted(times) for times in by_user.values()), "some events must arrive out of order"
    out = tmp_path / "sim.jsonl"
    result = run_cli("simulate", "--users", "50", "--events", "2000", "--seed", "3", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == first
    assert "2000/2000" in result.stderr  # the progress bar reached the end


def test_schema_export_writes_every_wire_model(tmp_path: Path) -> None:
    result = run_cli("schema", "export", str(tmp_path))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.glob("*.schema.json"))
    assert names == ["award-record.schema.json", "catalog.schema.json", "dead-letter-record.schema.json",
                     "event-envelope.schema.json", "nudge-record.schema.json", "progress-record.schema.json"]
    envelope = json.loads((tmp_path / "event-envelope.schema.json").read_text())
    assert set(envelope["required"]) >= {"event_id", "type", "user_id", "occurred_at"}
