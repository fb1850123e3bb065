"""The worker's producer for awards, progress, dead letters and re-keyed events.

librdkafka (confluent-kafka) sends these instead of Faust's Python producer: per record it costs a
few microseconds instead of the tens that made output the larger half of the worker's time.
At-least-once stays intact because :meth:`OutputProducer.flush` is chained into Faust's producer
flush (``faust_seam.chain_flush``), which Faust awaits before every offset commit: no input offset
is committed before the records its processing produced are acknowledged by the broker.

Progress is coalesced: a progress record is held for up to ``worker_progress_coalesce_s`` and
replaced by a newer one of the same (user, badge, tier), by the sink's own rule
(:func:`schemas.records.supersedes`), so the sink's rows end the same while most records are never
sent. What is held is the entry of the user's latest-progress map (streams/worker/stored.py): the
record's bytes are built only when it is sent. Held records are produced before every flush, hence
before any commit of the events that made them; a crash loses only records of uncommitted events,
and those events are read again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.errors import DeliveryError
from schemas.records import supersedes
from streams.kafka import client_config, produce
from streams.settings import Settings
from streams.worker.stored import ProgressChange, ProgressKey, progress_bytes

log = logging.getLogger("badgestream.output")


HeldKey = tuple[str, "bytes | None"]
"""(topic, user key) of a user's held progress."""


class OutputProducer:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
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
        self._coalesce_s = settings.worker_progress_coalesce_s
        self._clock = clock
        #: per user, their user_id and the latest-progress entry held per (badge, tier)
        self._held: dict[HeldKey, tuple[str, dict[ProgressKey, list[Any]]]] = {}
        self._held_since: float | None = None
        #: progress records replaced by a newer one before they were sent
        self.coalesced = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        produce(self._producer, topic, key, value, self._on_delivery, headers=headers)

    def send_to(self, topic: str, partition: int, key: bytes, value: bytes | None,
                on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
        """One record into ``partition`` (a table's changelog record: streams/worker/state_writer.py);
        ``on_delivery`` is told its outcome, and a failure is the caller's to raise."""
        produce(self._producer, topic, key, value, on_delivery, partition=partition)

    def send_progress(self, topic: str, key: bytes | None, change: ProgressChange) -> None:
        """Hold each changed progress record of a user, or keep the held one of the same (badge, tier)
        if that is newer."""
        if self._coalesce_s <= 0:
            for _, value in change.records():
                self.send(topic, key, value)
            return
        slot = (topic, key)
        held = self._held.get(slot)
        if held is None:
            self._held[slot] = held = (change.user_id, {})
            if self._held_since is None:
                self._held_since = self._clock()
        entries, latest = held[1], change.latest
        for badge in change.keys:
            entry = latest[badge]
            current = entries.get(badge)
            if current is not None:
                self.coalesced += 1
                if not supersedes(entry[2], current[2]):
                    continue
            entries[badge] = entry

    @property
    def held(self) -> int:
        """Progress records held, not yet produced."""
        return sum(len(entries) for _, entries in self._held.values())

    def release(self) -> int:
        """Produce every held progress record now; returns how many."""
        held, self._held, self._held_since = self._held, {}, None
        sent = 0
        for (topic, key), (user_id, entries) in held.items():
            for badge, entry in entries.items():
                self.send(topic, key, progress_bytes(user_id, badge, entry))
                sent += 1
        return sent

    def release_due(self) -> int:
        """:meth:`release` if the oldest held record has waited ``worker_progress_coalesce_s``."""
        since = self._held_since
        if since is not None and self._clock() - since >= self._coalesce_s:
            return self.release()
        return 0

    def poll(self) -> None:
        self.release_due()
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
        self.release()  # held progress goes out before any commit of the events that made it
        await asyncio.get_running_loop().run_in_executor(None, self.flush_blocking)
