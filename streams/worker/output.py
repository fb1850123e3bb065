"""The worker's producer for awards, progress, dead letters and re-keyed events.

librdkafka (confluent-kafka) sends these instead of Faust's Python producer: per record it costs a
few microseconds instead of the tens that made output the larger half of the worker's time.
At-least-once stays intact because :meth:`OutputProducer.flush` is chained into Faust's producer
flush, which Faust awaits before every offset commit: no input offset is committed before the
records its processing produced are acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.errors import DeliveryError
from streams.kafka import client_config, produce
from streams.settings import Settings

log = logging.getLogger("badgestream.output")


class OutputProducer:
    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(client_config(settings, **{
            "enable.idempotence": True,  # keeps per-partition order through retries
            "acks": "all",
            "linger.ms": 2,
            "partitioner": "murmur2_random",  # the Java client's, as Faust uses for the state table
            "client.id": f"{settings.app_id}-output",
            # Retry through a broker outage of any length (librdkafka's default gives up after 5
            # min); a record the broker refuses for good still fails at once.
            "message.timeout.ms": 0,
        }))
        self._failures: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        produce(self._producer, topic, key, value, self._on_delivery, headers=headers)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush_blocking(self, timeout: float | None = None, report_every: float = 30.0) -> None:
        """Wait until the broker acknowledged every record sent so far.

        Without ``timeout`` this waits out a broker outage however long, saying so every
        ``report_every`` seconds: input offsets are not committed meanwhile, so nothing is lost,
        and the worker goes on by itself when the broker is back. A record that failed raises
        :class:`DeliveryError` (Faust then stops the worker before committing).
        """
        step = report_every if timeout is None else min(report_every, timeout)
        waited = 0.0
        while remaining := self._producer.flush(step):
            waited += step
            if timeout is not None and waited >= timeout:
                raise DeliveryError(f"{remaining} output records not acknowledged after {timeout:.0f}s")
            log.warning("%d output records not acknowledged by the broker after %.0fs; waiting (input offsets "
                        "are not committed meanwhile)", remaining, waited)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(f"{len(failures)} output records failed: " + "; ".join(failures[:5]))

    async def flush(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.flush_blocking)

    def chain_into(self, faust_producer: Any) -> None:
        """Make Faust's producer flush (awaited before each offset commit) flush this producer too."""
        original = faust_producer.flush

        async def flush() -> None:
            await original()
            await self.flush()

        faust_producer.flush = flush
