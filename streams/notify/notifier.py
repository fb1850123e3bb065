"""``badgestream notify``: award and nudge records in, signed webhooks out, nothing lost, nothing blocked.

1. The consumer reads ``badge-awards`` and ``badge-nudges`` (group ``BADGESTREAM_NOTIFY_GROUP_ID``),
   turns each record into one pending delivery per endpoint that wants it, inserts them into the
   outbox in one transaction, and only then commits the input offsets. A record that is no
   award or nudge is dead-lettered (and committed) instead.
2. Each endpoint has its own :class:`~streams.notify.dispatcher.Dispatcher`: at most ``concurrency``
   requests in flight over its own keep-alive connection pool, behind its own circuit breaker,
   taking the rows that are due from the outbox (a taken row is leased: not due again until the
   request could have timed out, so a crash mid-request just retries it later). A slow or dead
   endpoint only fills its own queue; the consumer and the other endpoints never wait for it.
3. After each attempt the row is deleted (delivered), rescheduled (``policy``), or dead-lettered on
   ``BADGESTREAM_NOTIFY_DLQ_TOPIC`` with endpoint, status and reason, and deleted once the broker
   acknowledged the dead letter; the outcomes of a round are written in one transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import start_http_server

from schemas.errors import ConfigurationError
from streams.kafka import client_config, ensure_topics, required_topics
from streams.notify.dead_letters import DeadLetters
from streams.notify.dispatcher import Dispatcher, Settler
from streams.notify.endpoints import Endpoint, load_endpoints
from streams.notify.messages import UnusableRecord, notification
from streams.notify.metrics import NotifyMetrics, endpoint_label
from streams.notify.outbox import Outbox, OutboxStore, Outcomes
from streams.notify.policy import RetryPolicy
from streams.settings import Settings
from streams.shutdown import STOP_SIGNALS, StopDeadline, stop_handler

log = logging.getLogger("badgestream.notify")

POLL_BATCH = 500
POLL_WAIT_S = 0.1  # how long one consume call waits for a batch: the most it adds to a record's latency


def open_outbox(settings: Settings) -> OutboxStore:
    """In the award database when that is PostgreSQL (several notifiers may share it), else a SQLite file."""
    if settings.database_url_value.startswith("postgresql"):
        from streams.notify.outbox_postgres import PostgresOutbox

        return PostgresOutbox(settings.database_url_value)
    return Outbox(settings.notify_outbox)


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
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-consumer")
        outbox = open_outbox(settings)
        settler = Settler(outbox)
        dead_letters = DeadLetters(settings)
        await self._orphans(outbox, dead_letters)
        dispatchers = {e.url: Dispatcher(e, settings, settler, self.policy, dead_letters, self.metrics)
                       for e in self.endpoints}
        consumer = Consumer(client_config(settings, **{
            "group.id": settings.notify_group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
        }))
        consumer.subscribe([settings.awards_topic, settings.nudges_topic])
        tasks = [asyncio.create_task(d.run(), name=f"dispatch {d.label}") for d in dispatchers.values()]
        tasks.append(asyncio.create_task(settler.run(), name="outbox outcomes"))
        tasks.append(asyncio.create_task(self._report_backlog(outbox), name="backlog metrics"))
        log.info("notifying %d endpoint(s) of %s and %s (group %s, outbox %s)", len(dispatchers),
                 settings.awards_topic, settings.nudges_topic, settings.notify_group_id,
                 "the award database (shared)" if not isinstance(outbox, Outbox) else settings.notify_outbox)
        try:
            while not self._stopping.is_set():
                for task in tasks:
                    if task.done():
                        task.result()  # a dispatcher or the outcome writer failed: stop, loudly
                messages = await loop.run_in_executor(pool, consumer.consume, POLL_BATCH, POLL_WAIT_S)
                if not messages:
                    continue
                queued = await self._queue(messages, outbox, dead_letters)
                offsets: dict[tuple[str, int], int] = {}
                for message in messages:
                    if message.error() is None:
                        offsets[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
                for url in queued:
                    dispatchers[url].added()
                if offsets:
                    commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                    try:
                        await loop.run_in_executor(pool, functools.partial(consumer.commit, offsets=commit,
                                                                           asynchronous=False))
                    except KafkaException as exc:
                        # e.g. the partitions moved to another notifier meanwhile: it reads them
                        # again, and our rows are delivered anyway (at least once, same webhook-id).
                        log.warning("offset commit failed (%s); those records will be read again", exc)
        finally:
            for dispatcher in dispatchers.values():
                await dispatcher.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            settler.flush()
            await loop.run_in_executor(pool, consumer.close)
            outbox.close()
            dead_letters.close()
            pool.shutdown(wait=False)

    async def _queue(self, messages: list[Message], outbox: OutboxStore, dead_letters: DeadLetters) -> set[str]:
        """Step 1: the outbox rows of one consumed batch, in one transaction; unusable records dead-lettered.

        Returns the endpoints that got rows.
        """
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
        return {row[0] for row in rows}

    async def _orphans(self, outbox: OutboxStore, dead_letters: DeadLetters) -> None:
        """Rows left for endpoints no longer configured go to the dead-letter topic, not into oblivion."""
        configured = {e.url for e in self.endpoints}
        for url in outbox.endpoints():
            if url in configured:
                continue
            rows = outbox.claim(url, float("inf"), 1_000_000, time.time())
            outcomes = Outcomes()
            for row in rows:
                await dead_letters.send(row.webhook_id, {
                    "endpoint": url, "webhook_id": row.webhook_id, "type": row.type, "status": None,
                    "reason": "endpoint no longer configured", "attempts": row.attempts,
                    "queued_at": row.queued_at, "failed_at": time.time(), "body": row.body.decode("utf-8"),
                })
                outcomes.done.append((url, row.webhook_id))
            outbox.settle(outcomes)
            log.warning("%d pending deliveries to %s, no longer configured, dead-lettered", len(rows),
                        endpoint_label(url))

    async def _report_backlog(self, outbox: OutboxStore) -> None:
        urls = [e.url for e in self.endpoints]
        while True:
            self.metrics.backlog(urls, outbox.backlog(), time.time())
            await asyncio.sleep(1.0)


def notify_command(args: argparse.Namespace) -> int:
    """``badgestream notify``: run until SIGTERM/SIGINT/SIGHUP, then stop within ``shutdown_grace_s``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
