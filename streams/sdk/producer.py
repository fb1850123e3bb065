"""The one line upstream services need: ``BadgeEvents.from_settings().emit("quiz_completed", user_id=..., data=...)``.

Events are validated at the call site (envelope, and the catalog's per-type checks when a catalog
is given) before anything is sent, keyed by user_id with the Java client's partitioner (so they
land where the worker keeps the user's state), and sent with an idempotent producer. ``emit``
returns at once (delivery is reported through the background poller and :meth:`flush`);
``emit_async`` awaits the broker's acknowledgement; ``flush`` runs at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from pydantic import ValidationError

from schemas.catalog import Catalog, load_catalog
from schemas.errors import DeliveryError, InvalidEventError, UsageError
from schemas.events import EventEnvelope, describe_validation_error, parse_event
from streams.kafka import client_config, produce
from streams.settings import Settings

log = logging.getLogger("badgestream.producer")


class BadgeEvents:
    """Producer API for upstream services (the seed's ``events.emit(...)``)."""

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None, topic: str | None = None,
                 **producer_config: Any) -> None:
        self.settings = settings
        self.catalog = catalog
        self.topic = topic or settings.input_topics[0]
        config = client_config(settings, **{
            "enable.idempotence": True,
            "acks": "all",
            # The Java client's partitioner, as Faust uses: a user's events land on the partition
            # that holds the user's state, with no re-partitioning hop.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "client.id": "badgestream-producer",
        })
        config.update(producer_config)
        self._producer = Producer(config)
        self._failures: list[str] = []
        self._closed = False
        self._poller_stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="badgestream-producer-poll", daemon=True)
        self._poller.start()
        atexit.register(self.close)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, with_catalog: bool = False,
                      **kwargs: Any) -> BadgeEvents:
        settings = settings or Settings()
        catalog = load_catalog(settings.catalog_path) if with_catalog else kwargs.pop("catalog", None)
        return cls(settings, catalog=catalog, **kwargs)

    # --- building and validating -----------------------------------------------------------

    def build(self, type: str, *, user_id: str, data: dict[str, Any] | None = None, event_id: str | None = None,
              occurred_at: datetime | str | None = None, tz: str = "UTC") -> EventEnvelope:
        """The validated envelope; raises :class:`InvalidEventError` naming the field."""
        try:
            envelope = EventEnvelope(
                event_id=event_id or f"evt-{uuid.uuid4().hex}",
                type=type,
                user_id=user_id,
                occurred_at=occurred_at or datetime.now(UTC),
                tz=tz,
                data=data or {},
            )
        except ValidationError as exc:
            raise InvalidEventError("invalid_envelope", describe_validation_error(exc)) from None
        # The same checks the worker makes (size, depth, numbers): fail here, not in the DLQ.
        return parse_event(envelope.model_dump_json().encode(), self.catalog)

    # --- sending -----------------------------------------------------------------------------

    def emit(self, type: str, *, user_id: str, data: dict[str, Any] | None = None, event_id: str | None = None,
             occurred_at: datetime | str | None = None, tz: str = "UTC") -> EventEnvelope:
        """Validate and send; returns the envelope sent (with its event_id)."""
        envelope = self.build(type, user_id=user_id, data=data, event_id=event_id, occurred_at=occurred_at, tz=tz)
        self.send(envelope)
        return envelope

    def send(self, envelope: EventEnvelope, callback: Any = None) -> None:
        self._raise_failures()
        value = envelope.model_dump_json().encode()
        key = envelope.user_id.encode()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._failures.append(f"event {envelope.event_id}: {err}")
                log.error("event %s was not delivered: %s", envelope.event_id, err)
            if callback is not None:
                callback(err, msg)

        produce(self._producer, self.topic, key, value, on_delivery, drain=0.1)

    async def emit_async(self, type: str, *, user_id: str, data: dict[str, Any] | None = None,
                         event_id: str | None = None, occurred_at: datetime | str | None = None,
                         tz: str = "UTC") -> EventEnvelope:
        """Validate, send and wait for the broker's acknowledgement without blocking the event loop."""
        envelope = self.build(type, user_id=user_id, data=data, event_id=event_id, occurred_at=occurred_at, tz=tz)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve(err: KafkaError | None, _msg: Message) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(DeliveryError(f"event {envelope.event_id}: {err}"))
            loop.call_soon_threadsafe(settle)

        self.send(envelope, callback=resolve)
        await done
        return envelope

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event is acknowledged; raises :class:`DeliveryError` for any that failed."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} events still undelivered after {timeout:.0f}s")
        self._raise_failures()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._poller_stop.set()
        self._poller.join(timeout=5)
        try:
            self.flush()
        except DeliveryError as exc:
            log.error("%s", exc)
        atexit.unregister(self.close)

    def __enter__(self) -> BadgeEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _poll_loop(self) -> None:
        while not self._poller_stop.is_set():
            self._producer.poll(0.1)

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(f"{len(failures)} events were not delivered: " + "; ".join(failures[:5]))


def emit_command(args: Any) -> int:
    """``badgestream emit TYPE --user ID [--data JSON]`` or ``badgestream emit --file EVENTS.jsonl``."""
    import json
    import sys
    from pathlib import Path

    settings = Settings()
    catalog = load_catalog(settings.catalog_path) if not args.no_catalog_checks else None
    with BadgeEvents(settings, catalog=catalog, topic=args.topic) as events:
        if args.file:
            sent = rejected = 0
            for number, line in enumerate(Path(args.file).read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    envelope = parse_event(line, catalog)
                except InvalidEventError as exc:
                    rejected += 1
                    print(f"line {number}: {exc.code}: {exc.reason}", file=sys.stderr)
                    continue
                events.send(envelope)
                sent += 1
            events.flush()
            print(f"sent {sent} events to {events.topic}" + (f", {rejected} rejected" if rejected else ""),
                  file=sys.stderr)
            return 0 if not rejected else 1
        if not args.type or not args.user:
            raise UsageError("give TYPE and --user, or --file")
        try:
            data = json.loads(args.data) if args.data else {}
        except json.JSONDecodeError as exc:
            raise UsageError(f"--data is not JSON: {exc}") from None
        envelope = events.emit(args.type, user_id=args.user, data=data, event_id=args.event_id,
                               occurred_at=args.occurred_at, tz=args.tz)
        events.flush()
        print(envelope.model_dump_json())
    return 0


def schema_command(args: Any) -> int:
    """``badgestream schema export DIR``: the JSON Schemas upstream teams validate against, in any language."""
    from schemas.export import export_json_schemas

    for path in export_json_schemas(args.directory):
        print(path)
    return 0
