"""Kafka for every process: client configuration (security included), the produce helper, the topics
badgestream needs and key placement.

Every client, confluent-kafka (librdkafka) and Faust/aiokafka alike, is configured from the same
settings here, so security options reach every client. Input topics keep their records forever by
default (``retention.ms=-1``) so that a replay can rebuild every user's state from the beginning
(docs/operations.md). Award, progress and dead-letter topics are ordinary delete-policy topics:
awards are keyed by user and must not be compacted away.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.errors import ConfigurationError
from streams.settings import Settings

log = logging.getLogger(__name__)

LIBRDKAFKA_LOG = logging.getLogger("badgestream.librdkafka")
"""librdkafka's own log lines (``%4|...`` on stderr otherwise) go through Python logging here."""

DeliveryCallback = Callable[[KafkaError | None, Message], None]


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka configuration shared by every confluent-kafka client of the project."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        "logger": LIBRDKAFKA_LOG,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username is not None:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        config["ssl.certificate.location"] = str(settings.kafka_ssl_certfile)
    if settings.kafka_ssl_keyfile:
        config["ssl.key.location"] = str(settings.kafka_ssl_keyfile)
    config.update(overrides)
    return config


def faust_brokers(settings: Settings) -> list[str]:
    """The bootstrap servers as Faust's ``kafka://`` URLs."""
    return [f"kafka://{server.strip()}" for server in settings.kafka_bootstrap_servers.split(",") if server.strip()]


def faust_credentials(settings: Settings) -> Any:
    """Faust/aiokafka credentials from the same settings :func:`client_config` reads."""
    from faust.auth import SASLCredentials, SSLCredentials

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        context = ssl.create_default_context(cafile=cafile)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                    str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    if protocol == "SSL":
        return SSLCredentials(context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return SASLCredentials(
        username=settings.kafka_sasl_username, password=password,
        mechanism=settings.kafka_sasl_mechanism or "PLAIN", ssl_context=context,
    )


def produce(producer: Producer, topic: str, key: bytes | None, value: bytes | str | None,
            on_delivery: DeliveryCallback | None = None, *, drain: float = 0.05,
            headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
    """Queue one record (into ``partition``, or where the producer's partitioner puts it); while
    librdkafka's local queue is full, serve deliveries for ``drain`` seconds and try again
    (``BufferError`` is back-pressure, not a failure)."""
    extra: dict[str, Any] = {}
    if partition is not None:
        extra["partition"] = partition
    if on_delivery is not None:
        extra["on_delivery"] = on_delivery
    if headers:
        extra["headers"] = headers
    while True:
        try:
            producer.produce(topic, key=key, value=value, **extra)
            return
        except BufferError:
            producer.poll(drain)

def record_time_ms(timestamp: tuple[int, int]) -> int:
    """A confluent-kafka message's record time in ms (its ``timestamp()``); 0 when it has none."""
    kind, when = timestamp
    return int(when) if kind != TIMESTAMP_NOT_AVAILABLE and when >= 0 else 0


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
    admin = AdminClient(client_config(settings))
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
