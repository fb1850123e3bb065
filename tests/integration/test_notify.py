"""``badgestream notify`` against a real broker and a real local HTTP receiver with injected faults.

Awards and nudges are made by the engine from literal events (a hidden badge declares a nudge
too), produced as the worker produces them, and delivered to five endpoints at once: a healthy
one, a flaky one (500, then 429 with Retry-After, then a timeout, then 200), one refusing
connections until it comes up after a few seconds, one answering 410 (everything dead-lettered)
and one that asked for backfills. A second test kills a notifier process with SIGKILL mid-run.
Two more show that a failing endpoint delays nobody (default settings, 300 awards/s, a quarter of
the requests failing and one in twenty stalling past the timeout) and that an endpoint that keeps
failing is probed, not flooded, by its circuit breaker, and gets everything once it recovers.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from schemas.records import AwardRecord
from streams.devstack.receiver import Response, WebhookReceiver
from streams.notify.endpoints import Endpoint
from streams.notify.notifier import Notifier
from streams.settings import Settings
from tests.unit.support import engine, event

pytestmark = pytest.mark.kafka

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CATALOG = """\
    badges:
      - id: quiz_master
        name: Quiz Master
        on: [quiz_completed]
        rule: {tiers: {bronze: 2, silver: 4}}
        nudge: {remaining: [1]}
      - id: secret
        on: [quiz_completed]
        hidden: true
        rule: {count: 4}
        nudge: {remaining: [1]}
"""
USERS = 6


def records() -> tuple[list[AwardRecord], list[bytes]]:
    """Awards and nudge records of USERS users doing 4 quizzes each, through the engine."""
    eng = engine(CATALOG)
    awards, nudges = [], []
    for u in range(USERS):
        state = None
        for i in range(4):
            result = eng.evaluate(state, event(user=f"u{u}", event_id=f"u{u}-q{i}"))
            state = result.state
            awards += result.awards
            nudges += [n.model_dump_json().encode() for n in result.nudges]
    return awards, nudges


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Topics:
    def __init__(self, kafka_bootstrap: str, topic_factory: Callable[..., str], group: str, outbox: Path,
                 fast: bool = True, **overrides: Any) -> None:
        """``fast``: timeouts and retry delays shortened to fit a test; otherwise the notifier's defaults."""
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka_bootstrap, "awards_topic": topic_factory("n-awards", partitions=2),
            "nudges_topic": topic_factory("n-nudges"), "notify_dlq_topic": topic_factory("n-dlq"),
            "notify_group_id": group, "notify_outbox": outbox, "session_timeout_s": 6.0}
        if fast:
            values |= {"notify_timeout_s": 0.5, "notify_retry_base_s": 0.2, "notify_retry_max_delay_s": 1.0,
                       "notify_max_age_s": 30.0}
        self.settings = Settings(**{**values, **overrides})
        self.producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def produce(self, topic: str, key: str, value: bytes) -> None:
        self.producer.produce(topic, key=key.encode(), value=value)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def dead_letters(self, expected: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap_servers,
                             "group.id": f"read-{time.time()}", "auto.offset.reset": "earliest"})
        consumer.subscribe([self.settings.notify_dlq_topic])
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found.append(orjson.loads(message.value() or b"{}"))
        consumer.close()
        return found


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def in_process() -> Iterator[Callable[[Notifier], None]]:
    """Run a Notifier on its own event loop in a thread; stopped (cleanly) at the end of the test."""
    running: list[tuple[Notifier, threading.Thread, asyncio.AbstractEventLoop]] = []

    def start(notifier: Notifier) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(notifier.run(),), daemon=True)
        thread.start()
        running.append((notifier, thread, loop))

    yield start
    for notifier, thread, loop in running:
        loop.call_soon_threadsafe(notifier.stop)
        thread.join(15)
        loop.close()


def test_every_notification_reaches_every_endpoint_through_faults(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path,
    in_process: Callable[[Notifier], None],
) -> None:
    awards, nudges = records()
    backfills = [a.model_copy(update={"award_id": f"bf-{a.award_id}", "backfill": True}) for a in awards[:3]]
    revoked = awards[0].model_copy(update={"kind": "revocation"})
    # /flaky fails three times for every id and /late refuses every connection at first: a circuit
    # breaker would (rightly) hold them back and probe; that is the subject of its own test below,
    # this one is about what each kind of answer leads to.
    topics = Topics(kafka_bootstrap, topic_factory, unique_name("notify"), tmp_path / "outbox.sqlite",
                    notify_breaker_failures=1_000_000)

    def respond(path: str, webhook_id: str, seen: int) -> Response:
        if path == "/gone":
            return Response(410)
        if path == "/flaky":
            return [Response(500), Response(429, {"retry-after": "1"}), Response(503, delay=1.0),
                    Response(200)][min(seen, 4) - 1]
        return Response(200)

    late_port = free_port()
    endpoints = [
        Endpoint(url=f"http://127.0.0.1:{{port}}/{path}", secret=SECRET)
        for path in ("healthy", "flaky", "gone")
    ]
    with WebhookReceiver(SECRET, respond=respond) as receiver:
        endpoints = [e.model_copy(update={"url": e.url.replace("{port}", str(receiver.port))}) for e in endpoints]
        endpoints += [
            Endpoint(url=f"http://127.0.0.1:{late_port}/late", secret=SECRET),
            Endpoint(url=receiver.url("/backfill"), secret=SECRET, types=("badge.awarded",), backfill=True),
        ]
        for record in [*awards, *backfills, revoked]:
            topics.produce(topics.settings.awards_topic, record.user_id, record.model_dump_json().encode())
        for value in nudges:
            topics.produce(topics.settings.nudges_topic, orjson.loads(value)["user_id"], value)
        topics.produce(topics.settings.awards_topic, "x", b"not an award")
        topics.flush()
        started = time.monotonic()
        notifier = Notifier(topics.settings, endpoints)
        in_process(notifier)

        expected = {a.award_id for a in awards} | {f"{awards[0].award_id}.revoked"} | {
            orjson.loads(n)["nudge_id"] for n in nudges}
        # Complete while /late still refuses connections, /gone answers 410 and /flaky is mid-retries:
        # a dead or slow endpoint does not hold the others back.
        wait_for(lambda: {r.webhook_id for r in receiver.delivered("/healthy")} == expected, 30, "the healthy one")
        healthy_done = time.monotonic() - started
        time.sleep(2.5)
        with WebhookReceiver(SECRET, port=late_port) as late:  # the refusing endpoint comes up
            wait_for(lambda: {r.webhook_id for r in late.delivered()} == expected, 20, "the late one")
            wait_for(lambda: {r.webhook_id for r in receiver.delivered("/flaky")} == expected, 20, "the flaky one")
            late_received = late.delivered()
        dead = topics.dead_letters(len(expected) + 1)

    # What each endpoint received: everything it should, valid, once per webhook-id, nothing else.
    for path, got in (("/healthy", receiver.delivered("/healthy")), ("/flaky", receiver.delivered("/flaky")),
                      ("/late", late_received)):
        assert all(r.valid for r in got), path
        assert Counter(r.webhook_id for r in got).most_common(1)[0][1] == 1, f"{path}: duplicates"
        assert {r.type for r in got} == {"badge.awarded", "badge.revoked", "badge.nudge"}
    nudged = [r.data for r in receiver.delivered("/healthy") if r.type == "badge.nudge"]
    assert len(nudged) == USERS * 2 and {n["badge_id"] for n in nudged} == {"quiz_master"}  # never the hidden badge
    revocation = next(r for r in receiver.delivered("/healthy") if r.type == "badge.revoked")
    assert revocation.webhook_id == f"{awards[0].award_id}.revoked" and revocation.data["kind"] == "revocation"
    backfill_ids = {r.webhook_id for r in receiver.delivered("/backfill")}
    assert backfill_ids == {a.award_id for a in awards} | {b.award_id for b in backfills}
    assert not {b.award_id for b in backfills} & {r.webhook_id for r in receiver.delivered("/healthy")}
    # The flaky endpoint saw each id four times (500, 429, timeout, 200), always under the same webhook-id.
    flaky_attempts = Counter(n for (path, _), n in receiver.attempts.items() if path == "/flaky")
    assert flaky_attempts == {4: len(expected)}
    # The permanently failing endpoint: every notification dead-lettered with endpoint, status and reason.
    gone = [d for d in dead if d["endpoint"] and d["endpoint"].endswith("/gone")]
    assert {d["webhook_id"] for d in gone} == expected
    assert {d["status"] for d in gone} == {410} and all("not retried" in d["reason"] for d in gone)
    def sample(name: str, path: str, **labels: str) -> float | None:
        label = f"http://127.0.0.1:{receiver.port if path != '/late' else late_port}{path}"
        return notifier.metrics.registry.get_sample_value(name, {"endpoint": label, **labels})

    assert sample("badgestream_notify_deliveries_total", "/healthy", outcome="delivered") == len(expected)
    assert sample("badgestream_notify_deliveries_total", "/flaky", outcome="retried") == 3 * len(expected)
    assert sample("badgestream_notify_deliveries_total", "/gone", outcome="dead_lettered") == len(expected)
    assert (sample("badgestream_notify_delivery_seconds_count", "/late") or 0) == len(expected)
    unusable = [d for d in dead if d["endpoint"] is None]
    assert len(unusable) == 1 and "not an award record" in unusable[0]["reason"]
    print(f"\nfault run: {len(expected)} notifications x 5 endpoints; flaky attempts {sum(flaky_attempts.elements())}"
          f", dead letters {len(dead)}, healthy done in {healthy_done:.1f}s")


def test_retries_stop_at_max_age_and_go_to_the_dead_letter_topic(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path,
    in_process: Callable[[Notifier], None],
) -> None:
    awards, _ = records()
    topics = Topics(kafka_bootstrap, topic_factory, unique_name("notify"), tmp_path / "outbox.sqlite",
                    notify_max_age_s=1.5)
    with WebhookReceiver(SECRET, respond=lambda *_: Response(500)) as receiver:
        topics.produce(topics.settings.awards_topic, awards[0].user_id, awards[0].model_dump_json().encode())
        topics.flush()
        in_process(Notifier(topics.settings, [Endpoint(url=receiver.url(), secret=SECRET)]))
        dead = topics.dead_letters(1)
    assert len(dead) == 1 and dead[0]["webhook_id"] == awards[0].award_id and dead[0]["status"] == 500
    assert "gave up after" in dead[0]["reason"] and dead[0]["attempts"] == receiver.attempts[("/hook",
                                                                                              awards[0].award_id)]


def test_a_notifier_killed_mid_run_loses_nothing(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    count = 300
    topics = Topics(kafka_bootstrap, topic_factory, unique_name("notify"), tmp_path / "outbox.sqlite")
    awards, _ = records()
    template = awards[0]
    ids = [f"kill-{i:04d}" for i in range(count)]
    for webhook_id in ids:
        topics.produce(topics.settings.awards_topic, webhook_id,
                       template.model_copy(update={"award_id": webhook_id, "user_id": webhook_id})
                       .model_dump_json().encode())
    topics.flush()
    receiver = WebhookReceiver(SECRET, respond=lambda *_: Response(200, delay=0.02)).start()
    s = topics.settings
    metrics_port = free_port()
    env = {**os.environ, "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "BADGESTREAM_AWARDS_TOPIC":
           s.awards_topic, "BADGESTREAM_NUDGES_TOPIC": s.nudges_topic, "BADGESTREAM_NOTIFY_DLQ_TOPIC":
           s.notify_dlq_topic, "BADGESTREAM_NOTIFY_GROUP_ID": s.notify_group_id, "BADGESTREAM_NOTIFY_OUTBOX":
           str(s.notify_outbox), "BADGESTREAM_WEBHOOK_URLS": receiver.url(), "BADGESTREAM_WEBHOOK_SECRET": SECRET,
           "BADGESTREAM_NOTIFY_METRICS_PORT": str(metrics_port), "BADGESTREAM_NOTIFY_CONCURRENCY": "2",
           "BADGESTREAM_NOTIFY_TIMEOUT_S": "1", "BADGESTREAM_SESSION_TIMEOUT_S": "6"}
    command = [sys.executable, "-m", "streams.cli", "notify"]
    log = (tmp_path / "notify.log").open("wb")
    first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(receiver.delivered()) >= count // 3, 30, "a third of the deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before_kill = len(receiver.delivered())
        second = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: {r.webhook_id for r in receiver.delivered()} == set(ids), 40, "every delivery")

            def scrape() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
                    return answer.read().decode()

            # Rows the killed notifier had in flight stay leased until their lease runs out, then go
            # out again; the backlog gauge is refreshed once a second. Both settle to nothing pending.
            drained = f'badgestream_notify_pending{{endpoint="{receiver.url()}"}} 0.0'
            wait_for(lambda: drained in scrape(), 40, "the pending gauge to reach 0")
            metrics = scrape()
            assert "badgestream_notify_oldest_pending_seconds" in metrics
            assert re.search(r'badgestream_notify_deliveries_total\{endpoint="[^"]+",outcome="delivered"\} \d', metrics)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
    finally:
        if first.poll() is None:
            first.kill()
        receiver.stop()
    got = receiver.delivered()
    duplicates = len(got) - len({r.webhook_id for r in got})
    assert all(r.valid for r in got)
    assert duplicates <= 2 * 2, "more re-deliveries than requests that were in flight at the kill"
    print(f"\nkill -9 run: {count} awards, {before_kill} delivered before the kill, {len(got)} received in all, "
          f"{duplicates} duplicates by webhook-id")


def paced(count: int, rate: float, send: Callable[[int], None]) -> None:
    """Call ``send(i)`` for i in range(count) at ``rate`` per second (a steady producer, not a wait for anything)."""
    began = time.monotonic()
    for i in range(count):
        ahead = began + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        send(i)


def test_a_faulty_endpoint_delays_no_first_attempt_at_300_awards_per_s(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path,
    in_process: Callable[[Notifier], None],
) -> None:
    """Default settings. /faulty: 25% of requests answer 500, 5% stall past the request timeout (seeded per
    attempt); /healthy answers at once. Every award's first attempt reaches both within 2 s (p99)."""
    rate, count = 300.0, 1800
    topics = Topics(kafka_bootstrap, topic_factory, unique_name("notify"), tmp_path / "outbox.sqlite", fast=False)
    timeout = topics.settings.notify_timeout_s
    first: dict[tuple[str, str], float] = {}
    stalled = 0

    def respond(path: str, webhook_id: str, seen: int) -> Response:
        nonlocal stalled
        first.setdefault((path, webhook_id), time.monotonic())
        draw = random.Random(f"{webhook_id}:{seen}").random() if path == "/faulty" else 1.0
        if draw < 0.05:
            stalled += 1
            return Response(200, delay=timeout + 2.0)
        return Response(500) if draw < 0.30 else Response(200)

    template = records()[0][0]

    def award(webhook_id: str) -> bytes:
        return template.model_copy(update={"award_id": webhook_id, "user_id": webhook_id}).model_dump_json().encode()

    produced: dict[str, float] = {}

    def send(i: int) -> None:
        webhook_id = f"f-{i:05d}"
        produced[webhook_id] = time.monotonic()
        topics.producer.produce(topics.settings.awards_topic, key=webhook_id.encode(), value=award(webhook_id))
        topics.producer.poll(0)

    with WebhookReceiver(SECRET, respond=respond) as receiver:
        notifier = Notifier(topics.settings, [Endpoint(url=receiver.url("/faulty"), secret=SECRET),
                                              Endpoint(url=receiver.url("/healthy"), secret=SECRET)])
        in_process(notifier)
        topics.produce(topics.settings.awards_topic, "warm", award("warm"))
        topics.flush()
        wait_for(lambda: ("/healthy", "warm") in first, 60, "the notifier to start")
        paced(count, rate, send)
        topics.flush()
        wait_for(lambda: all((path, w) in first for w in produced for path in ("/faulty", "/healthy")), 20,
                 "a first attempt of every award at both endpoints")
        opened = notifier.metrics.registry.get_sample_value("badgestream_notify_circuit_opened_total",
                                                            {"endpoint": receiver.url("/faulty")})
        retried = sum(seen > 1 for (path, _), seen in receiver.attempts.items() if path == "/faulty")

    assert stalled >= count * 0.03 and retried >= count * 0.2, "the faults were injected"
    for path in ("/faulty", "/healthy"):
        waited = sorted(first[(path, w)] - at for w, at in produced.items())
        p50, p99 = waited[len(waited) // 2], waited[int(len(waited) * 0.99)]
        print(f"\n{path}: award -> first attempt p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
              f"({stalled} stalls, {retried} ids retried)")
        assert p99 < 2.0, f"{path}: p99 {p99:.2f}s from award to first attempt"
    assert not opened, "a quarter of requests failing is not an endpoint that keeps failing"


def test_an_endpoint_that_keeps_failing_is_probed_not_flooded_and_gets_everything_back(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path,
    in_process: Callable[[Notifier], None],
) -> None:
    awards, _ = records()
    topics = Topics(kafka_bootstrap, topic_factory, unique_name("notify"), tmp_path / "outbox.sqlite",
                    notify_breaker_failures=5, notify_breaker_window_s=0.5, notify_breaker_cooldown_s=0.5)
    down = True
    attempts_while_down = 0

    def respond(path: str, webhook_id: str, seen: int) -> Response:
        nonlocal attempts_while_down
        if down:
            attempts_while_down += 1
            return Response(503)
        return Response(200)

    with WebhookReceiver(SECRET, respond=respond) as receiver:
        notifier = Notifier(topics.settings, [Endpoint(url=receiver.url(), secret=SECRET)])
        label = {"endpoint": receiver.url()}

        def opened(at_least: int) -> Callable[[], bool]:
            return lambda: (notifier.metrics.registry.get_sample_value(
                "badgestream_notify_circuit_opened_total", label) or 0) >= at_least

        def state() -> float | None:
            return notifier.metrics.registry.get_sample_value("badgestream_notify_circuit_state", label)

        first_half, second_half = awards[:len(awards) // 2], awards[len(awards) // 2:]
        for record in first_half:
            topics.produce(topics.settings.awards_topic, record.user_id, record.model_dump_json().encode())
        topics.flush()
        in_process(notifier)
        wait_for(opened(1), 20, "the circuit to open")
        for record in second_half:  # these wait in the outbox while it is open
            topics.produce(topics.settings.awards_topic, record.user_id, record.model_dump_json().encode())
        topics.flush()
        wait_for(opened(2), 20, "a first failed probe")
        before = attempts_while_down
        wait_for(opened(4), 20, "two more failed probes (1 s, then 2 s of cooldown)")
        probing = attempts_while_down - before
        assert state() in (1.0, 2.0)  # half-open (a probe in flight) or open
        down = False
        wait_for(lambda: {r.webhook_id for r in receiver.delivered()} == {a.award_id for a in awards}, 20,
                 "every award after the endpoint recovered")
        wait_for(lambda: state() == 0.0, 5, "the circuit to close")

    # Without the breaker, 18 pending awards retried at most 1 s apart would have made dozens of
    # requests in those 3 s; with it: one per probe (a third may have gone by the time we looked).
    assert 2 <= probing <= 3, probing
    assert Counter(r.webhook_id for r in receiver.delivered()).most_common(1)[0][1] == 1
