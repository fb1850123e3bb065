"""``badgestream notify``: award and nudge records in, signed webhooks out, nothing lost, nothing blocked.

1. The consumer reads ``badge-awards`` and ``badge-nudges`` (group ``BADGESTREAM_NOTIFY_GROUP_ID``),
   turns each record into one pending delivery per endpoint that wants it, inserts them into the
   outbox in one transaction, and only then commits the input offsets. A record that is no
   award or nudge is dead-lettered (and committed) instead.
2. Each endpoint has its own dispatcher: at most ``concurrency`` requests in flight, taking the
   rows that are due from the outbox (a taken row is leased: not due again until the request
   could have timed out, so a crash mid-request just retries it later). A slow or dead endpoint
   only fills its own queue; the consumer and the other endpoints never wait for it.
3. After each attempt the row is deleted (delivered), rescheduled (``policy``), or dead-lettered on
   ``BADGESTREAM_NOTIFY_DLQ_TOPIC`` with endpoint, status and reason, and deleted once the broker
   acknowledged the dead letter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from prometheus_client import start_http_server

from schemas.errors import ConfigurationError
from streams.kafka import client_config, ensure_topics, produce, required_topics
from streams.notify.endpoints import Endpoint, load_endpoints
from streams.notify.messages import UnusableRecord, headers, notification
from streams.notify.metrics import NotifyMetrics, endpoint_label
from streams.notify.outbox import Outbox, Pending
from streams.notify.policy import Attempt, RetryPolicy, parse_retry_after
from streams.settings import Settings
from streams.shutdown import STOP_SIGNALS, StopDeadline, stop_handler

log = logging.getLogger("badgestream.notify")

POLL_BATCH = 500
LEASE_MARGIN_S = 5.0


class DeadLetters:
    """The notifier's dead-letter topic; :meth:`send` returns once the broker acknowledged the record."""

    def __init__(self, settings: Settings, pool: ThreadPoolExecutor) -> None:
        self.topic = settings.notify_dlq_topic
        self._pool = pool
        self._producer = Producer(client_config(settings, **{"acks": "all", "enable.idempotence": True}))

    async def send(self, key: str, record: dict[str, Any]) -> None:
        produce(self._producer, self.topic, key.encode(), orjson.dumps(record))
        remaining = await asyncio.get_running_loop().run_in_executor(self._pool, self._producer.flush, 30.0)
        if remaining:
            raise KafkaException(f"dead letter for {key} not acknowledged within 30 s")


class Dispatcher:
    """Deliveries to one endpoint, at most ``concurrency`` at a time, from the outbox."""

    def __init__(self, endpoint: Endpoint, settings: Settings, outbox: Outbox, policy: RetryPolicy,
                 dead_letters: DeadLetters, metrics: NotifyMetrics) -> None:
        self.endpoint = endpoint
        self.url = endpoint.url
        self.label = endpoint_label(endpoint.url)
        self.concurrency = endpoint.concurrency or settings.notify_concurrency
        self.lease = settings.notify_timeout_s + LEASE_MARGIN_S
        self.outbox = outbox
        self.policy = policy
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.closing = False
        self.inflight: set[asyncio.Task[None]] = set()
        self._key = endpoint.key
        self._client = httpx.AsyncClient(
            timeout=settings.notify_timeout_s, follow_redirects=False,
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency))

    async def run(self) -> None:
        # A flag, not only task cancellation, ends this loop: on Python 3.11 ``asyncio.wait_for``
        # can swallow a cancellation that coincides with the wake-up (cpython gh-86296), and this
        # loop is woken after every delivery.
        while not self.closing:
            self.wake.clear()
            now = time.time()
            free = self.concurrency - len(self.inflight)
            if free > 0:
                for row in self.outbox.claim(self.url, now, free, now + self.lease):
                    task = asyncio.create_task(self._deliver(row))
                    self.inflight.add(task)
                    task.add_done_callback(self._finished)
            timeout = 1.0
            if len(self.inflight) < self.concurrency:
                next_due = self.outbox.next_due(self.url)
                if next_due is not None:
                    timeout = min(timeout, max(0.0, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self.wake.set()

    async def close(self) -> None:
        """Stop taking rows, abandon the requests in flight (their rows are due again at once), close the client."""
        self.closing = True
        self.wake.set()
        for task in list(self.inflight):
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        await self._client.aclose()

    async def _deliver(self, row: Pending) -> None:
        try:
            await self._attempt(row)
        except asyncio.CancelledError:
            self.outbox.release(self.url, row.webhook_id)  # stopping: due again at once after a restart
            raise
        except Exception:
            # e.g. the dead-letter topic is unreachable: the row stays, leased, and is tried again.
            log.exception("delivery of %s to %s failed unexpectedly; it will be retried", row.webhook_id, self.label)

    async def _attempt(self, row: Pending) -> None:
        timestamp = int(time.time())
        began = time.perf_counter()
        try:
            response = await self._client.post(self.url, content=row.body,
                                               headers=headers(self._key, row.webhook_id, timestamp, row.body))
            retry_after = (parse_retry_after(response.headers.get("retry-after"))
                           if response.status_code in (429, 503) else None)
            attempt = Attempt(response.status_code, retry_after=retry_after)
        except httpx.TimeoutException as exc:
            attempt = Attempt(None, f"timeout ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            attempt = Attempt(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        self.metrics.attempt_seconds.labels(self.label).observe(time.perf_counter() - began)
        now = time.time()
        attempts = row.attempts + 1
        decision = self.policy.decide(attempt, attempts, now - row.queued_at)
        if decision.action == "delivered":
            self.outbox.done(self.url, row.webhook_id)
            self.metrics.delivery_seconds.labels(self.label).observe(now - row.queued_at)
            self.metrics.deliveries.labels(self.label, "delivered").inc()
        elif decision.action == "retry":
            self.outbox.retry(self.url, row.webhook_id, attempts, now + decision.delay, decision.reason)
            self.metrics.deliveries.labels(self.label, "retried").inc()
            log.info("%s to %s: %s; attempt %d in %.1fs", row.webhook_id, self.label, decision.reason,
                     attempts + 1, decision.delay)
        else:
            await self.dead_letters.send(row.webhook_id, {
                "endpoint": self.url, "webhook_id": row.webhook_id, "type": row.type, "status": attempt.status,
                "reason": decision.reason, "attempts": attempts, "queued_at": row.queued_at, "failed_at": now,
                "body": row.body.decode("utf-8"),
            })
            self.outbox.done(self.url, row.webhook_id)
            self.metrics.deliveries.labels(self.label, "dead_lettered").inc()
            log.warning("%s to %s dead-lettered: %s", row.webhook_id, self.label, decision.reason)


class Notifier:
    """The notify process: the consumer loop of step 1 and one :class:`Dispatcher` per endpoint."""

    def __init__(self, settings: Settings, endpoints: list[Endpoint] | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints if endpoints is not None else load_endpoints(settings)
        if not self.endpoints:
            raise ConfigurationError("no webhook endpoint configured: set BADGESTREAM_WEBHOOK_URLS and "
                                     "BADGESTREAM_WEBHOOK_SECRET, or BADGESTREAM_WEBHOOK_CONFIG")
        self.metrics = NotifyMetrics()
        self.policy = RetryPolicy(settings.notify_retry_base_s, settings.notify_retry_max_delay_s,
                                  settings.notify_max_age_s)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        # In a thread: with the broker gone it waits out its timeout, and a stop signal must be heard meanwhile.
        await loop.run_in_executor(None, functools.partial(
            ensure_topics, settings, [t for t in required_topics(settings)
                                      if t.name in (settings.awards_topic, settings.nudges_topic,
                                                    settings.notify_dlq_topic)]))
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="notify-kafka")
        outbox = Outbox(settings.notify_outbox)
        dead_letters = DeadLetters(settings, pool)
        await self._orphans(outbox, dead_letters)
        dispatchers = [Dispatcher(e, settings, outbox, self.policy, dead_letters, self.metrics)
                       for e in self.endpoints]
        consumer = Consumer(client_config(settings, **{
            "group.id": settings.notify_group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
        }))
        consumer.subscribe([settings.awards_topic, settings.nudges_topic])
        tasks = [asyncio.create_task(d.run(), name=f"dispatch {d.label}") for d in dispatchers]
        tasks.append(asyncio.create_task(self._report_backlog(outbox), name="backlog metrics"))
        log.info("notifying %d endpoint(s) of %s and %s (group %s, outbox %s)", len(dispatchers),
                 settings.awards_topic, settings.nudges_topic, settings.notify_group_id, settings.notify_outbox)
        try:
            while not self._stopping.is_set():
                messages = await loop.run_in_executor(pool, consumer.consume, POLL_BATCH, 0.2)
                if not messages:
                    continue
                await self._queue(messages, outbox, dead_letters)
                offsets: dict[tuple[str, int], int] = {}
                for message in messages:
                    if message.error() is None:
                        offsets[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
                if offsets:
                    commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                    try:
                        await loop.run_in_executor(pool, functools.partial(consumer.commit, offsets=commit,
                                                                           asynchronous=False))
                    except KafkaException as exc:
                        # e.g. the partitions moved to another notifier meanwhile: it reads them
                        # again, and our rows are delivered anyway (at least once, same webhook-id).
                        log.warning("offset commit failed (%s); those records will be read again", exc)
                for dispatcher in dispatchers:
                    dispatcher.wake.set()
        finally:
            for dispatcher in dispatchers:
                await dispatcher.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.run_in_executor(pool, consumer.close)
            outbox.close()
            pool.shutdown(wait=False)

    async def _queue(self, messages: list[Message], outbox: Outbox, dead_letters: DeadLetters) -> None:
        """Step 1: the outbox rows of one consumed batch, in one transaction; unusable records dead-lettered."""
        rows: list[tuple[str, str, str, bytes]] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer: %s", error)
                continue
            topic = message.topic() or ""
            try:
                note = notification(topic == self.settings.nudges_topic, message.value())
            except UnusableRecord as exc:
                self.metrics.input_records.labels("dead_lettered").inc()
                value = message.value()
                await dead_letters.send(f"{topic}:{message.partition()}:{message.offset()}", {
                    "endpoint": None, "status": None, "reason": str(exc), "source_topic": topic,
                    "partition": message.partition(), "offset": message.offset(),
                    "value": value.decode("utf-8", "replace") if value is not None else None,
                })
                continue
            wanted = [e for e in self.endpoints if e.wants(note.type, note.backfill)]
            self.metrics.input_records.labels("queued" if wanted else "not_wanted").inc()
            rows.extend((e.url, note.webhook_id, note.type, note.body) for e in wanted)
        if rows:
            outbox.add(rows, time.time())

    async def _orphans(self, outbox: Outbox, dead_letters: DeadLetters) -> None:
        """Rows left for endpoints no longer configured go to the dead-letter topic, not into oblivion."""
        configured = {e.url for e in self.endpoints}
        for url in outbox.endpoints():
            if url in configured:
                continue
            rows = outbox.claim(url, float("inf"), 1_000_000, time.time())
            for row in rows:
                await dead_letters.send(row.webhook_id, {
                    "endpoint": url, "webhook_id": row.webhook_id, "type": row.type, "status": None,
                    "reason": "endpoint no longer configured", "attempts": row.attempts,
                    "queued_at": row.queued_at, "failed_at": time.time(), "body": row.body.decode("utf-8"),
                })
                outbox.done(url, row.webhook_id)
            log.warning("%d pending deliveries to %s, no longer configured, dead-lettered", len(rows),
                        endpoint_label(url))

    async def _report_backlog(self, outbox: Outbox) -> None:
        urls = [e.url for e in self.endpoints]
        while True:
            self.metrics.backlog(urls, outbox.backlog(), time.time())
            await asyncio.sleep(1.0)


def notify_command(args: argparse.Namespace) -> int:
    """``badgestream notify``: run until SIGTERM/SIGINT/SIGHUP, then stop within ``shutdown_grace_s``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings()
    notifier = Notifier(settings)
    if settings.notify_metrics_port:
        start_http_server(settings.notify_metrics_port, addr=settings.web_host, registry=notifier.metrics.registry)

    # With the broker gone, closing the consumer or flushing a dead letter can wait without end:
    # the deadline bounds the stop, and the offsets not committed are read again (at least once).
    handle = stop_handler(notifier.stop, StopDeadline(settings.shutdown_grace_s))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, handle, sig)
        await notifier.run()

    asyncio.run(main())
    return 0
