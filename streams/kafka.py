"""The topics badgestream needs, created with the configured partition count, and key placement.

Input topics keep their records forever by default (``retention.ms=-1``) so that a replay can
rebuild every user's state from the beginning; see README "Replay". Award, progress and
dead-letter topics are ordinary delete-policy topics: awards are keyed by user and must not be
compacted away.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka.partitioner import murmur2
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.errors import ConfigurationError
from streams.settings import Settings

log = logging.getLogger(__name__)

INPUT_TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1"}
OUTPUT_TOPIC_CONFIG = {"retention.ms": str(30 * 24 * 3600 * 1000)}


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client (and Faust/aiokafka) pick for ``key``: murmur2, positive, modulo."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def repartition_topic_name(settings: Settings) -> str:
    """Internal topic through which the worker re-keys events by user_id."""
    return f"{settings.app_id}-events-by-user"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def required_topics(settings: Settings) -> list[TopicSpec]:
    n = settings.topic_partitions
    specs = [TopicSpec(t, n, INPUT_TOPIC_CONFIG) for t in settings.input_topics]
    specs += [
        TopicSpec(settings.awards_topic, n, OUTPUT_TOPIC_CONFIG),
        TopicSpec(settings.progress_topic, n, OUTPUT_TOPIC_CONFIG),
        TopicSpec(settings.nudges_topic, n, OUTPUT_TOPIC_CONFIG),
        TopicSpec(settings.notify_dlq_topic, n, INPUT_TOPIC_CONFIG),
        TopicSpec(settings.dlq_topic, n, INPUT_TOPIC_CONFIG),
        TopicSpec(settings.sink_dlq_topic, n, INPUT_TOPIC_CONFIG),
        TopicSpec(repartition_topic_name(settings), n, OUTPUT_TOPIC_CONFIG),
    ]
    return specs


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 30.0) -> dict[str, int]:
    """Create missing topics; return every topic's partition count. Existing topics are left as they are."""
    specs = specs if specs is not None else required_topics(settings)
    admin = AdminClient(settings.confluent_config())
    existing = admin.list_topics(timeout=timeout).topics
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=settings.topic_replication_factor,
                      config=s.config) for s in missing],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                log.info("created topic %s", name)
            except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
                if "already exists" not in str(exc).lower():
                    raise ConfigurationError(f"cannot create topic {name}: {exc}") from exc
        # Created topics can take a moment to appear in metadata: wait for them.
        deadline = time.monotonic() + timeout
        while True:
            existing = admin.list_topics(timeout=timeout).topics
            pending = [s.name for s in specs
                       if s.name not in existing or existing[s.name].error is not None
                       or not existing[s.name].partitions]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    counts = {}
    for spec in specs:
        meta = existing.get(spec.name)
        if meta is None or meta.error is not None:
            raise ConfigurationError(f"topic {spec.name} is not available: {getattr(meta, 'error', 'missing')}")
        counts[spec.name] = len(meta.partitions)
    return counts
