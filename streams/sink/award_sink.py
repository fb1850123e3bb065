"""The award sink: consumes the award and progress topics and makes them durable rows, exactly once in effect.

Every batch goes through three numbered steps and nothing else:

1. decode — each message becomes an award, a progress record or a dead letter; dead letters are
   produced to the sink DLQ and confirmed, so an undecodable record never blocks its partition
   and is never lost;
2. upsert — all rows of the batch in one database transaction (unique keys make a redelivered
   record a no-op); a database outage blocks here, retrying with capped exponential backoff;
3. commit — the batch's Kafka offsets, synchronously, only after the transaction committed.

A crash anywhere before step 3 redelivers the batch, which step 2 absorbs. Used by
``badgestream sink`` (:mod:`streams.sink.command`), by the tests and by ``bench/sink``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from schemas.catalog import Catalog, load_catalog
from schemas.errors import SinkError, SinkStopped
from schemas.records import DeadLetterRecord, TierLadders, expand_tiers
from streams import db
from streams.kafka import client_config, produce
from streams.settings import Settings
from streams.sink.decode import DecodedBatch, decode, where

if TYPE_CHECKING:

    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: ``initial * factor**attempt``, never more than ``maximum`` seconds."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64))


@dataclass(frozen=True)
class BatchResult:
    messages: int
    awards: int
    progress: int
    dead_letters: int
    written: db.WriteResult
    committed: bool


@dataclass
class SinkStats:
    batches: int = 0
    messages: int = 0
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rows_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.messages / elapsed if elapsed > 0 else 0.0


def _is_transient(exc: BaseException) -> bool:
    """A database error worth waiting out: connection loss, server down, locks, deadlocks."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _on_delivery(failed: list[Any], item: Any) -> Any:
    """A delivery callback that remembers ``item`` when its delivery failed."""

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failed.append(item)

    return on_delivery


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AwardSink:
    """Kafka (awards + progress topics) → SQL database; see the module docstring for the three steps.

    ``AwardSink(settings)`` then ``run(stop_event)`` for a service, ``run(max_batches=...)`` or
    ``run(until_caught_up=True)`` for tests and benchmarks, or ``process_batch(messages)`` directly.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog | Mapping[str, Any] | None = None,
        write_catalog: bool = True,
        engine: Engine | None = None,
        backoff: Backoff | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        log_every_batches: int = 100,
    ) -> None:
        self.settings = settings
        self.engine = engine or db.make_engine(settings.database_url_value)
        self.backoff = backoff or Backoff()
        self.log_every_batches = log_every_batches
        self.stats = SinkStats()
        # A plain mapping (the YAML's data, as tests pass it) is read into the catalog model.
        self._catalog = Catalog.model_validate(catalog) if isinstance(catalog, Mapping) else catalog
        self._write_catalog = write_catalog
        self._ladders: TierLadders | None = None
        self._consumer_overrides = consumer_overrides or {}
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._eof: set[tuple[str, int]] = set()
        self._warned_topics: set[str] = set()
        self._url = settings.database_url_masked

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the database, write the catalog, subscribe. Waits out a database outage like step 2 does."""
        if self._consumer is not None:
            return
        self._retry_database("migrate", lambda: db.upgrade(self.engine))
        if self._write_catalog:
            catalog = self._catalog if self._catalog is not None else self._load_catalog()
            count = self._retry_database("write the catalog", lambda: db.write_catalog(self.engine, catalog))
            log.info("catalog %s: %d badges written to %s", catalog.catalog_version, count, self._url)
        self._ensure_topics()
        self._producer = Producer(client_config(self.settings, **{"acks": "all", "enable.idempotence": True,
                                                                  "linger.ms": 5}))
        config = client_config(self.settings, **{
            "group.id": self.settings.sink_group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # EOF events tell run(until_caught_up=True) that every assigned partition is drained.
            "enable.partition.eof": True,
            # How soon a dead sink's partitions move to another (librdkafka's default: 45 s).
            "session.timeout.ms": int(self.settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(self.settings.heartbeat_interval_s * 1000),
            **self._consumer_overrides,
        })
        self._consumer = Consumer(config)
        self._consumer.subscribe(
            [self.settings.awards_topic, self.settings.progress_topic],
            on_revoke=self._forget_partitions,
            on_lost=self._forget_partitions,
        )
        log.info("sink consuming %s and %s into %s (group %s, batches of up to %d / %d ms)",
                 self.settings.awards_topic, self.settings.progress_topic, self._url, self.settings.sink_group_id,
                 self.settings.sink_batch_size, self.settings.sink_batch_timeout_ms)

    def _ensure_topics(self) -> None:
        """The topics the sink reads and its dead-letter topic exist before it subscribes (brokers
        usually do not auto-create topics, and ours does not)."""
        from streams.kafka import INPUT_TOPIC_CONFIG, OUTPUT_TOPIC_CONFIG, TopicSpec, ensure_topics

        n = self.settings.topic_partitions
        ensure_topics(self.settings, [TopicSpec(self.settings.awards_topic, n, OUTPUT_TOPIC_CONFIG),
                                      TopicSpec(self.settings.progress_topic, n, OUTPUT_TOPIC_CONFIG),
                                      TopicSpec(self.settings.sink_dlq_topic, n, INPUT_TOPIC_CONFIG)])

    def _load_catalog(self) -> Catalog:
        return load_catalog(self.settings.catalog_path)

    def stop(self) -> None:
        """Ask ``run`` to return after the current batch is committed (safe from signal handlers and threads)."""
        self._stop.set()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        self.engine.dispose()

    def __enter__(self) -> AwardSink:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise SinkError("the sink is not started: call start() or run()")
        return self._consumer

    def _forget_partitions(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._eof.discard((tp.topic, tp.partition))

    # --- the loop ----------------------------------------------------------------------------

    def run(
        self,
        stop_event: threading.Event | None = None,
        *,
        max_batches: int | None = None,
        until_caught_up: bool = False,
    ) -> SinkStats:
        """Consume and process batches until stopped, ``max_batches`` were written, or (optionally) caught up.

        ``stop_event`` (or ``stop()``) lets the current batch finish and commit; then the sink returns.
        Caught up means every assigned partition of both topics reported its end after the last
        processed message.
        """
        self.start()
        consumer = self.consumer
        timeout = self.settings.sink_batch_timeout_ms / 1000
        batches_at_start = self.stats.batches
        interval_started, interval_messages = time.monotonic(), 0
        while not (self._stop.is_set() or (stop_event is not None and stop_event.is_set())):
            messages = consumer.consume(num_messages=self.settings.sink_batch_size, timeout=timeout)
            records = [message for message in messages if self._is_record(message)]
            if records:
                try:
                    self.process_batch(records, stop_event=stop_event)
                except SinkStopped:
                    log.warning("stopping with a batch of %d messages not written: it will be redelivered",
                                len(records))
                    break
                interval_messages += len(records)
                if (self.stats.batches - batches_at_start) % self.log_every_batches == 0:
                    now = time.monotonic()
                    log.info("sink: %d batches, %d messages, %.0f rows/s over the last %d batches, %d dead letters",
                             self.stats.batches, self.stats.messages,
                             interval_messages / max(now - interval_started, 1e-9), self.log_every_batches,
                             self.stats.dead_letters)
                    interval_started, interval_messages = now, 0
            if max_batches is not None and self.stats.batches - batches_at_start >= max_batches:
                break
            if until_caught_up and self.caught_up():
                break
        return self.stats

    def _is_record(self, message: Message) -> bool:
        error = message.error()
        topic, partition, _offset = where(message)
        if error is None:
            self._eof.discard((topic, partition))
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            self._eof.add((topic, partition))
        elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            # The worker may create its output topics after the sink starts: wait for them.
            if topic not in self._warned_topics:
                self._warned_topics.add(topic)
                log.warning("topic %s does not exist yet; waiting for it", topic)
        elif error.fatal():
            raise SinkError(f"fatal Kafka consumer error: {error}")
        else:
            log.warning("Kafka consumer error: %s", error)
        return False

    def caught_up(self) -> bool:
        """Every assigned partition has been read to its end and everything read is committed."""
        assignment = self.consumer.assignment()
        return bool(assignment) and all((tp.topic, tp.partition) in self._eof for tp in assignment)

    # --- one batch: the three steps ----------------------------------------------------------

    def process_batch(
        self, messages: Sequence[Message], *, commit: bool = True, stop_event: threading.Event | None = None
    ) -> BatchResult:
        """Steps 1-3 for one batch of consumed messages. ``commit=False`` stops after step 2 (a crash, in tests)."""
        # 1. decode (dead letters produced and confirmed)
        decoded = self.decode(messages)
        self._send_dead_letters(decoded.dead_letters, stop_event)
        # 2. upsert all rows in one transaction
        written = self._retry_database(
            "write the batch",
            lambda: self._write(decoded),
            stop_event=stop_event,
        )
        # 3. commit the Kafka offsets of the batch, only now that the rows are durable
        committed = False
        if commit and decoded.offsets:
            committed = self._commit(decoded.offsets)
        self.stats.batches += 1
        self.stats.messages += len(messages)
        self.stats.dead_letters += len(decoded.dead_letters)
        return BatchResult(len(messages), len(decoded.awards), len(decoded.progress), len(decoded.dead_letters),
                           written, committed)

    def decode(self, messages: Sequence[Message]) -> DecodedBatch:
        """Step 1: records from message values; anything unusable becomes a dead letter with its reason."""
        return decode(messages, self.settings.awards_topic, self.settings.progress_topic)

    def _send_dead_letters(
        self, dead_letters: list[tuple[bytes | None, DeadLetterRecord]], stop_event: threading.Event | None
    ) -> None:
        """Produce and confirm every dead letter (at least once: a retry after a broker error may repeat one)."""
        if not dead_letters:
            return
        producer = self._producer
        if producer is None:
            raise SinkError("the sink is not started: call start() or run()")
        pending = dead_letters
        attempt = 0
        while pending:
            failed: list[tuple[bytes | None, DeadLetterRecord]] = []
            for item in pending:
                key, record = item
                produce(producer, self.settings.sink_dlq_topic, key, record.model_dump_json(),
                        _on_delivery(failed, item))
            # librdkafka retries on its own until message.timeout.ms; only then does a delivery fail.
            while producer.flush(30) > 0:
                log.warning("dead letters still unconfirmed by topic %s; waiting, offsets not committed",
                            self.settings.sink_dlq_topic)
            if not failed:
                return
            pending = failed
            delay = self.backoff.delay(attempt)
            attempt += 1
            log.warning("%d dead letters could not be delivered to topic %s; retrying in %.1fs, offsets not committed",
                        len(pending), self.settings.sink_dlq_topic, delay)
            if self._wait(delay, stop_event):
                raise SinkStopped("stopped while dead letters were undelivered")

    def _write(self, decoded: DecodedBatch) -> db.WriteResult:
        progress = expand_tiers(decoded.progress, self._tier_ladders())
        with self.engine.begin() as conn:
            return db.write_records(conn, decoded.awards, progress)

    def _tier_ladders(self) -> TierLadders:
        """The catalog's tiers: the worker publishes only the lowest tier that moved (expand_tiers)."""
        if self._ladders is None:
            catalog = self._catalog if self._catalog is not None else self._load_catalog()
            self._ladders = catalog.tier_ladders()
        return self._ladders

    def _commit(self, offsets: list[TopicPartition]) -> bool:
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are durable; an uncommitted batch is only redelivered, which step 2 absorbs.
            # Typically a rebalance (or a long database outage past max.poll.interval.ms).
            log.warning("offset commit failed (%s): the batch will be redelivered and written as a no-op", exc)
            return False
        return True

    def _wait(self, seconds: float, stop_event: threading.Event | None) -> bool:
        """Sleep unless asked to stop; True when a stop was requested."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stop.is_set() or (stop_event is not None and stop_event.is_set()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._stop.wait(min(left, 0.1))

    def _retry_database(self, what: str, action: Any, *, stop_event: threading.Event | None = None) -> Any:
        """Run ``action`` until the database accepts it; transient errors wait with backoff, others are fatal."""
        attempt = 0
        while True:
            try:
                result = action()
            except Exception as exc:
                if not _is_transient(exc):
                    if isinstance(exc, DBAPIError):
                        raise SinkError(f"cannot {what} in {self._url}: {_short(exc)}") from exc
                    raise
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("database %s unavailable, cannot %s (attempt %d: %s); retrying in %.1fs, "
                            "offsets not committed", self._url, what, attempt, _short(exc), delay)
                if self._wait(delay, stop_event):
                    raise SinkStopped(f"stopped while the database {self._url} was unavailable") from exc
                continue
            if attempt:
                log.info("database %s is back after %d failed attempts", self._url, attempt)
            return result
