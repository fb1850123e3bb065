"""Hostile input: thousands of bad records of every kind interleaved with a simulated stream.

Every bad record must reach the dead-letter topic with the right code and a reason, every valid
event must be processed (the award set equals ``badgestream evaluate`` over the valid events
alone), and the worker must never restart: same process from start to end, no crash in its log.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.events import MAX_DATA_DEPTH, MAX_EVENT_BYTES
from tests.integration import harness
from tests.integration.harness import StackConfig
from tests.reliability import support

pytestmark = pytest.mark.kafka

STACK_NAME = "hostile"  # topic names of this module's stacks (tests/reliability/conftest.py)


def _event(n: int, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": f"bad-{n}", "type": "quiz_completed", "user_id": f"u-bad-{n % 50}",
                             "occurred_at": "2026-06-01T10:00:00+00:00", "tz": "UTC",
                             "data": {"quiz_id": "q1", "score": 7, "total_questions": 10}}
    event.update(changes)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


# One generator per kind of bad record: (kind, expected dead-letter code, bytes for record number n).
BAD_KINDS: list[tuple[str, str, Callable[[int], bytes]]] = [
    ("not_json", "invalid_json", lambda n: f"this is not json #{n} {{".encode()),
    ("truncated_json", "invalid_json", lambda n: orjson.dumps(_event(n))[:-7]),
    ("invalid_utf8", "invalid_json", lambda n: b'{"event_id": "\xff\xfe' + str(n).encode() + b'"}'),
    ("json_not_object", "invalid_envelope", lambda n: orjson.dumps([n, "quiz_completed"])),
    ("wrong_type_event_id", "invalid_envelope", lambda n: orjson.dumps(_event(n, event_id=n))),
    ("wrong_type_user_id", "invalid_envelope", lambda n: orjson.dumps(_event(n, user_id=["u", n]))),
    ("wrong_type_data", "invalid_envelope", lambda n: orjson.dumps(_event(n, data=f"score={n}"))),
    ("missing_occurred_at", "invalid_envelope", lambda n: orjson.dumps(_event(n, occurred_at=_DROP))),
    ("missing_type", "invalid_envelope", lambda n: orjson.dumps(_event(n, type=_DROP))),
    ("missing_user_id", "invalid_envelope", lambda n: orjson.dumps(_event(n, user_id=_DROP))),
    ("naive_timestamp", "invalid_envelope", lambda n: orjson.dumps(_event(n, occurred_at="2026-06-01T10:00:00"))),
    ("absurd_year", "invalid_envelope", lambda n: orjson.dumps(_event(n, occurred_at="1066-10-14T09:00:00+00:00"))),
    ("unix_timestamp", "invalid_envelope", lambda n: orjson.dumps(_event(n, occurred_at=1_780_000_000 + n))),
    ("garbage_timestamp", "invalid_envelope", lambda n: orjson.dumps(_event(n, occurred_at=f"yesterday {n}"))),
    ("unknown_tz", "invalid_envelope", lambda n: orjson.dumps(_event(n, tz="Mars/Olympus_Mons"))),
    ("path_tz", "invalid_envelope", lambda n: orjson.dumps(_event(n, tz="../../etc/passwd"))),
    ("huge_integer", "invalid_envelope",
     lambda n: orjson.dumps(_event(n, data={"quiz_id": "q", "score": 2**60 + n, "total_questions": 10}))),
    ("integer_beyond_64_bits", "invalid_envelope",
     lambda n: orjson.dumps(_event(n)).replace(b'"score":7', b'"score":1' + b"0" * 30)),
    ("number_beyond_double", "invalid_json",
     lambda n: orjson.dumps(_event(n)).replace(b'"score":7', b'"score":1' + b"0" * 400)),
    ("deep_nesting", "invalid_envelope", lambda n: orjson.dumps(_event(n, data={"deep": _nested(MAX_DATA_DEPTH + 5)}))),
    ("very_deep_nesting", "invalid_envelope",
     lambda n: b'{"event_id":"d' + str(n).encode() + b'","data":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("long_user_id", "invalid_envelope", lambda n: orjson.dumps(_event(n, user_id="u" * 300))),
    ("extra_field", "invalid_envelope", lambda n: orjson.dumps(_event(n, admin=True))),
    ("bad_data_type", "invalid_data",
     lambda n: orjson.dumps(_event(n, data={"quiz_id": "q", "score": "nine", "total_questions": 10}))),
    ("missing_data_field", "invalid_data", lambda n: orjson.dumps(_event(n, data={"quiz_id": "q"}))),
    ("empty_value", "invalid_json", lambda n: b""),
]
OVERSIZED = ("oversized", "too_large",
             lambda n: orjson.dumps(_event(n, data={"blob": "x" * (MAX_EVENT_BYTES + n % 100)})))


def bad_records(count: int, rng: random.Random) -> Iterator[tuple[str, str, bytes]]:
    for n in range(count):
        # Oversized payloads are 64 KiB each: one in a hundred is plenty for the broker and the DLQ.
        kind, code, make = OVERSIZED if n % 100 == 99 else BAD_KINDS[n % len(BAD_KINDS)]
        yield kind, code, make(n)


def run_hostile(stack: StackConfig, valid_events: int, users: int, bad: int, seed: int) -> None:
    rng = random.Random(seed)
    valid_file = stack.data_dir / "valid.jsonl"
    valid = support.write_simulated(valid_file, users=users, events=valid_events, seed=seed)
    expected = support.expected_offline(valid_file)
    # A few users' valid events come keyed by something else than their user_id: the worker must
    # re-key them. Each such user always has the same wrong key, so their order is kept.
    rekeyed_users = {f"u-{u:06d}" for u in range(0, users, 10)}
    bad_list = list(bad_records(bad, rng))
    expected_codes = Counter(code for _, code, _ in bad_list)
    # Interleave: bad records at random positions among the valid ones.
    slots = sorted(rng.sample(range(len(valid) + len(bad_list)), len(bad_list)))
    stream: list[tuple[bytes | None, bytes]] = []
    bad_iter, valid_iter = iter(bad_list), iter(valid)
    slot_set = set(slots)
    rekeyed = 0
    for position in range(len(valid) + len(bad_list)):
        if position in slot_set:
            _, _, raw = next(bad_iter)
            stream.append((rng.choice([None, b"u-000001", b"\xff\x00garbage"]), raw))
        else:
            raw = next(valid_iter)
            user = json.loads(raw)["user_id"]
            if user in rekeyed_users:
                rekeyed += 1
                stream.append((f"wrong-key-for-{user}".encode(), raw))
            else:
                stream.append((user.encode(), raw))

    worker = harness.worker(stack).start()
    sink = support.sink(stack).start()
    began = time.monotonic()
    try:
        producer = Producer({"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random",
                             "linger.ms": 5, "enable.idempotence": True, "message.max.bytes": 2_000_000})
        for n, (key, value) in enumerate(stream, 1):
            producer.produce(stack.input_topic, key=key, value=value)
            if n % 5000 == 0:
                producer.flush(30)
            producer.poll(0)
        # One tombstone (no value at all) as well.
        producer.produce(stack.input_topic, key=b"u-000002", value=None)
        expected_codes["invalid_json"] += 1
        assert producer.flush(60) == 0
        pid = worker.pid
        dead = harness.consume(stack.bootstrap, stack.dlq_topic, expected=sum(expected_codes.values()),
                               timeout=300 + bad / 20, idle=5, watch=worker)
        assert stack.database_url is not None
        support.wait_for_database(stack.database_url, expected, timeout=300, watch=[worker, sink])
        assert worker.alive() and worker.pid == pid and worker.starts == 1
    finally:
        worker.stop()
        sink.stop()
    log = worker.log()
    assert "Restarting dead" not in log and "Crashed" not in log, log[-3000:]
    assert "Traceback" not in log, log[log.index("Traceback") - 200:][:3000]

    records = [json.loads(m.value()) for m in dead]
    got_codes = Counter(r["error_code"] for r in records)
    originals: dict[bytes, str] = {raw: code for _, code, raw in bad_list}
    wrong: list[Any] = []
    for record in records:
        assert record["reason"] and record["source_topic"] == stack.input_topic, record
        if record["value"] is None:
            continue  # the tombstone
        raw = record["value"].encode() if record["value_encoding"] == "utf-8" else base64.b64decode(record["value"])
        if originals.get(raw) != record["error_code"]:
            wrong.append((record["error_code"], originals.get(raw, "not one of ours"), raw[:80]))
    got = support.read_database(stack.database_url)
    record = support.CrashLog("hostile_input", events=len(valid), users=expected.users)
    record.notes.append(f"bad records tried {len(bad_list) + 1} (by code {dict(sorted(expected_codes.items()))}), "
                        f"dead-lettered {len(records)} (by code {dict(sorted(got_codes.items()))}); "
                        f"{rekeyed} valid events keyed by another key; wall time {time.monotonic() - began:.0f}s")
    record.report(awards_expected=len(expected.awards), awards_in_db=got.rows, duplicates=got.duplicates)
    assert not wrong, f"{len(wrong)} dead letters with the wrong code (got, expected, value): {wrong[:5]}"
    assert got_codes == expected_codes
    assert len(records) == len(bad_list) + 1
    support.assert_same_result(got, expected)


def test_bad_records_are_dead_lettered_and_valid_events_processed(stack: StackConfig) -> None:
    run_hostile(stack, valid_events=3_000, users=200, bad=2_000, seed=5)


@pytest.mark.slow
def test_ten_thousand_bad_records_among_twenty_thousand_events(stack: StackConfig) -> None:
    run_hostile(stack, valid_events=20_000, users=1_000, bad=12_000, seed=55)
