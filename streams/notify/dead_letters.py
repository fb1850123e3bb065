"""The notifier's dead-letter topic: deliveries that will never succeed, with endpoint, status and reason."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer

from streams.kafka import client_config, produce
from streams.settings import Settings


class DeadLetters:
    """:meth:`send` returns once the broker acknowledged the record.

    The acknowledgements are awaited on a thread of their own, so a burst of dead letters never
    keeps the consumer from reading (which would delay first attempts to every endpoint).
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.notify_dlq_topic
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-dlq")
        self._producer = Producer(client_config(settings, **{"acks": "all", "enable.idempotence": True}))

    async def send(self, key: str, record: dict[str, Any]) -> None:
        produce(self._producer, self.topic, key.encode(), orjson.dumps(record))
        remaining = await asyncio.get_running_loop().run_in_executor(self._pool, self._producer.flush, 30.0)
        if remaining:
            raise KafkaException(f"dead letter for {key} not acknowledged within 30 s")

    def close(self) -> None:
        self._pool.shutdown(wait=False)
