"""The worker's input handler: one message in, decoded, then re-keyed or evaluated, state and outputs out.

decode -> re-key (forward to the re-key topic) or evaluate (:class:`EventProcessor`) -> state cache
-> outputs -> metrics. No Faust here: a message is anything with Kafka's fields (Faust's messages
have them; :class:`InputMessage` is the plain one bench/worker builds from confluent-kafka's), and
the current event a state write happens under is handed through as it came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from schemas.errors import InvalidEventError
from schemas.events import EventEnvelope
from streams.kafka import partition_for
from streams.worker.metrics import WorkerMetrics
from streams.worker.processor import EventProcessor, Outcome, dead_letter
from streams.worker.state_cache import StateCache
from streams.worker.stored import Origin, ProgressChange

log = logging.getLogger("badgestream.worker")

PARTITIONS_REMEMBERED = 1 << 16
"""Users whose table partition the handler remembers (murmur2 in Python costs microseconds per event)."""

SOURCE_HEADER = "badgestream-source"
"""Header of a re-keyed event: ``[topic, partition, offset, record time ms]`` of its original input
record (JSON; the time is absent in headers written before it was carried)."""


class Message(Protocol):
    """What the handler reads of an input message (Faust's ``Message`` has these fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any
    timestamp: float | None  # seconds, as Faust gives it


@dataclass(frozen=True, slots=True)
class InputMessage:
    """A plain :class:`Message` (bench/worker's loop builds these from confluent-kafka's)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any = None
    timestamp: float | None = None


class Output(Protocol):
    """Where the handler sends records (streams/worker/output.py's producer)."""

    def send(self, topic: str, key: bytes | None, value: bytes,
             headers: list[tuple[str, bytes]] | None = None) -> None: ...

    def send_progress(self, topic: str, key: bytes | None, change: ProgressChange) -> None: ...

    def poll(self) -> None: ...


def read_source_header(headers: Any) -> tuple[Origin, int | None] | None:
    """The original position (and record time) a re-keyed event carries, or None (absent or unreadable)."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for name, value in items:
        if name == SOURCE_HEADER and value:
            try:
                topic, partition, offset, *when = orjson.loads(value)
                return Origin(str(topic), int(partition), int(offset), rekeyed=True), (int(when[0]) if when else None)
            except (ValueError, TypeError, IndexError):
                return None
    return None


def record_ms(message: Message) -> int:
    """A message's record time in ms (Faust gives seconds); 0 when it has none."""
    timestamp = message.timestamp
    return round(timestamp * 1000) if timestamp else 0


@dataclass(frozen=True)
class Topics:
    """The topics the handler writes to, and the re-key topic it also reads."""

    awards: str
    progress: str
    nudges: str
    dead_letters: str
    rekey: str


class InputHandler:
    """Everything the worker does for one input message (the app's fetch loop or agent calls it).

    ``read_state``/``read_ids``: the state table's and the resend table's reads (for a user not in
    the cache); ``partitions``: the table's partition count, which decides what is re-keyed."""

    def __init__(self, processor: EventProcessor, states: StateCache, output: Output, metrics: WorkerMetrics,
                 topics: Topics, partitions: int, read_state: Callable[[bytes], bytes | None],
                 read_ids: Callable[[bytes], bytes | None]) -> None:
        self.processor = processor
        self.states = states
        self.output = output
        self.metrics = metrics
        self.topics = topics
        self.partitions = partitions
        self._read_state = read_state
        self._read_ids = read_ids
        self._partition_of: dict[bytes, int] = {}

    def handle(self, message: Message, event: Any) -> None:
        """Decode ``message``; re-key it, or evaluate it and store and publish what it did. ``event``
        is what the user's state write happens under (Faust's current event)."""
        began = time.perf_counter()
        envelope = self.decode(message)
        if envelope is None:
            self.metrics.observe("_invalid", "dead_letter", time.perf_counter() - began)
            return
        user_key = envelope.user_id.encode("utf-8")
        if message.topic != self.topics.rekey and (
            message.key != user_key or self.partition_of(user_key) != message.partition
        ):
            # Keyed by something else, or placed by another partitioner: re-key so that this
            # user's events all meet the one table partition holding their state.
            self.forward(message, user_key)
            self.metrics.observe(envelope.type, "forwarded", time.perf_counter() - began)
            return
        try:
            outcome = self.evaluate(message, envelope, user_key, event)
        except Exception as exc:  # an engine or state bug: keep the event (DLQ) and go on
            log.exception("evaluating event %s of %s failed", envelope.event_id, envelope.user_id)
            self.reject(message, InvalidEventError("processing_error", f"{type(exc).__name__}: {exc}"))
            self.metrics.observe(envelope.type, "dead_letter", time.perf_counter() - began)
            return
        self.publish(user_key, envelope, outcome)
        self.metrics.observe(envelope.type, outcome.status, time.perf_counter() - began)

    def partition_of(self, user_key: bytes) -> int:
        """The state table's partition of this user."""
        partition = self._partition_of.get(user_key)
        if partition is None:
            if len(self._partition_of) >= PARTITIONS_REMEMBERED:
                self._partition_of.clear()
            partition = self._partition_of[user_key] = partition_for(user_key, self.partitions)
        return partition

    def decode(self, message: Message) -> EventEnvelope | None:
        """The event, or None when it was dead-lettered."""
        try:
            return self.processor.decode(message.value)
        except InvalidEventError as exc:
            self.reject(message, exc)
        except Exception as exc:  # a parser bug must not lose the message either
            log.exception("unexpected failure decoding %s[%s]@%s", message.topic, message.partition, message.offset)
            self.reject(message, InvalidEventError("unexpected_error", f"{type(exc).__name__}: {exc}"))
        return None

    def forward(self, message: Message, user_key: bytes) -> None:
        """To the re-key topic, keyed by user_id, carrying where it was first read and its record time
        then. One producer, in the order read: each input partition's order is kept."""
        header = orjson.dumps([message.topic, message.partition, message.offset, record_ms(message)])
        self.output.send(self.topics.rekey, user_key, message.value or b"", headers=[(SOURCE_HEADER, header)])

    def evaluate(self, message: Message, envelope: EventEnvelope, user_key: bytes, event: Any) -> Outcome:
        """Evaluate against the user's state and remembered ids; keep what changed in the state cache."""
        # Where the event was first read, by which path, and its record time then: a re-keyed copy
        # carries them (Origin: redelivery marks, resend tags, the awards' evidence).
        position = (message.topic, message.partition, message.offset)
        carried = read_source_header(message.headers) if message.topic == self.topics.rekey else None
        origin, at_ms = carried if carried is not None else (Origin(*position), None)
        states = self.states
        # Committed entries are pruned when the value is written (StateCache), not per event.
        user = states.get(user_key, self._read_state)
        outcome = self.processor.evaluate_user(
            envelope, user, position, origin=origin, record_ms=at_ms if at_ms is not None else record_ms(message),
            seen=states.seen(user_key, user, self._read_ids))
        if outcome.new_user is not None:
            states.put(user_key, outcome.new_user, event, outcome.seen, outcome.ids_change)
        elif outcome.seen is not None and user is not None:  # a redelivery whose ids were lost: remember them
            states.put(user_key, user, event, outcome.seen, outcome.ids_change)
        return outcome

    def publish(self, user_key: bytes, envelope: EventEnvelope, outcome: Outcome) -> None:
        """The outcome's records, and what the metrics and the log say about it."""
        output, topics = self.output, self.topics
        for value in outcome.awards:
            output.send(topics.awards, user_key, value)
        if outcome.progress is not None:
            output.send_progress(topics.progress, user_key, outcome.progress)
        for value in outcome.nudges:
            output.send(topics.nudges, user_key, value)
        output.poll()
        if outcome.evaluation is not None:
            for failure in outcome.evaluation.errors:
                self.metrics.evaluator_error(failure.badge_id, failure.kind)
                log.warning("badge %s on event %s: %s: %s", failure.badge_id, envelope.event_id,
                            failure.kind, failure.message)
        for record in outcome.granted:
            self.metrics.award(record.badge_id)
            log.info("award %s%s to %s (event %s)", record.badge_id, f"/{record.tier}" if record.tier else "",
                     record.user_id, record.event_id)

    def reject(self, message: Message, error: InvalidEventError) -> None:
        self.metrics.dead_letter(error.code)
        self.output.send(self.topics.dead_letters, message.key, dead_letter(
            message.key, message.value, message.topic, message.partition, message.offset, error,
            failed_at=datetime.now(UTC)))
