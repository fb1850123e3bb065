"""The Faust application: input topics in, per-user state in a RocksDB table, awards/progress/DLQ out.

Agents act, the engine decides: each message goes through :class:`streams.worker.processor.EventProcessor`
and the agent only stores the new state and produces what the outcome says. User states stay
decoded in memory and are written to the table once per user per commit, before the commit
(streams/worker/state_cache.py); progress is coalesced per (user, badge, tier) before it is
produced (streams/worker/output.py). Delivery is
at-least-once (Faust flushes the producer before it commits input offsets) made safe by idempotency:
deterministic award ids, redelivery recognised by input offset in the stored value, event-id
dedupe for upstream resends, and the per-user outbox that re-publishes a redelivered event's
awards (docs/worker-state.md). One agent instance per partition (no ``concurrency > 1``: faust #606).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import socket
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from faust.streams import _current_event as faust_current_event
from faust.web import Request, Response, View

from evaluators.runner import plugin_engine
from schemas.catalog import Catalog, load_catalog
from schemas.errors import InvalidEventError
from schemas.events import EventEnvelope
from schemas.records import EventSource
from streams.kafka import (
    ensure_topics,
    faust_brokers,
    faust_credentials,
    partition_for,
    repartition_topic_name,
    required_topics,
)
from streams.settings import Settings, settings_for
from streams.worker import consumer as safe_consumer
from streams.worker.metrics import WorkerMetrics
from streams.worker.output import OutputProducer
from streams.worker.processor import EventProcessor, StoredUser, dead_letter
from streams.worker.state_cache import StateCache

log = logging.getLogger("badgestream.worker")

STATE_TABLE = "user-state"
SOURCE_HEADER = "badgestream-source"
"""Header of a re-keyed event: ``[topic, partition, offset]`` of its original input position (JSON)."""


def read_source_header(headers: Any) -> EventSource | None:
    """The original position a re-keyed event carries, or None (absent or unreadable)."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for name, value in items:
        if name == SOURCE_HEADER and value:
            try:
                topic, partition, offset = orjson.loads(value)
                return EventSource(topic=topic, partition=partition, offset=offset)
            except (ValueError, TypeError):
                return None
    return None


def worker_instance_id(settings: Settings) -> str | None:
    """The static group member id: configured, or stable per host, state directory and web address.

    Two workers never share a state directory (RocksDB locks it), so the id is unique among live
    workers and the same after a restart. The web address is part of it because a static member
    gets its previous assignment back as it was, and Faust's assignor refuses one made out to
    another URL. A worker that dies for good keeps its partitions only until its session times
    out, as with dynamic membership."""
    if settings.worker_instance_id is not None:
        return settings.worker_instance_id or None
    where = f"{settings.data_dir.resolve()}|{settings.web_host}:{settings.web_port}"
    return f"{settings.app_id}-{socket.gethostname()}-{hashlib.blake2b(where.encode(), digest_size=4).hexdigest()}"


def create_app(settings: Settings, catalog: Catalog | None = None, *,
               input_partitions: dict[str, int] | None = None, store: str = "rocksdb://") -> faust.App:
    """Build the worker app. ``input_partitions``: partition count of each input topic (from
    :func:`ensure_topics`); topics whose count differs from ``topic_partitions`` are only re-keyed,
    never evaluated in place, so every user's state lives in exactly one table partition."""
    catalog = catalog if catalog is not None else load_catalog(settings.catalog_path)
    processor = EventProcessor(catalog, plugin_engine(catalog))
    partitions = settings.topic_partitions
    input_partitions = input_partitions or {t: partitions for t in settings.input_topics}

    app = faust.App(
        settings.app_id,
        broker=faust_brokers(settings),
        broker_credentials=faust_credentials(settings),
        store=store,  # memory:// only in tests (tests/functional/test_worker_agent.py)
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_allow_declare=True,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Batch the state changelog Faust produces: without linger each record went out in a
        # produce request of its own. (Awards and progress go through streams/worker/output.py.)
        producer_linger=0.005,
        producer_max_batch_size=262_144,
        table_standby_replicas=0,
        broker_commit_livelock_soft_timeout=600.0,
        stream_wait_empty=True,
        # Faust's 60 s default keeps a crashed worker's partitions idle for a minute.
        broker_session_timeout=settings.session_timeout_s,
        # Static membership: a restarted worker rejoins under the same id and the coordinator hands
        # its partitions straight back, instead of waiting out the session of its former self.
        consumer_group_instance_id=worker_instance_id(settings),
        broker_heartbeat_interval=settings.heartbeat_interval_s,
    )
    metrics = WorkerMetrics(known_types=catalog.event_types())
    # bytes key and value types select Faust's "raw" serializers: the state is our own encoding.
    table = app.Table(STATE_TABLE, partitions=partitions, default=None, key_type=bytes, value_type=bytes)

    def write_state(key: bytes, value: bytes, event: Any) -> None:
        # Faust's RocksDB store and changelog take the partition from the current event.
        token = faust_current_event.set(weakref.ref(event))
        try:
            table[key] = value
        finally:
            faust_current_event.reset(token)

    def committed_offset(topic: str, partition: int) -> int | None:
        # Faust has no public accessor. Used to drop what is committed from stored values, and for
        # the lag metric. (A TP is a named tuple: a plain tuple finds the same entry.)
        committed: int | None = getattr(app.consumer, "_committed_offset", {}).get((topic, partition))
        return committed

    states = StateCache(write_state, settings.worker_state_cache, prune=lambda user: user.pruned(committed_offset))
    direct = safe_consumer.DirectDelivery()
    app.badgestream_states = states  # type: ignore[attr-defined]  # for tests and the state view
    counted_writes = [0]

    def write_pending() -> None:
        began = time.perf_counter()
        if states.write_all():
            metrics.state_flush_seconds.observe(time.perf_counter() - began)
        metrics.state_writes.inc(states.writes - counted_writes[0])  # with those written past the limit
        counted_writes[0] = states.writes

    # Faust's own consumer can commit past input events nobody evaluated (streams/worker/consumer.py);
    # ours also writes the pending user states before each commit, and evaluates input directly.
    safe_consumer.install(app, on_rewind=lambda tp: metrics.input_rewind(tp.topic, tp.partition),
                          before_commit=write_pending, on_revoke=states.suspend, on_assign=states.resume,
                          direct=direct, on_commit=metrics.commit_seconds.observe)

    aligned = [t for t in settings.input_topics if input_partitions.get(t, partitions) == partitions]
    misaligned = [t for t in settings.input_topics if t not in aligned]
    by_user = app.topic(repartition_topic_name(settings), partitions=partitions, internal=True,
                        key_serializer="raw", value_serializer="raw")
    evaluated = app.topic(*aligned, by_user.get_topic_name(), key_serializer="raw", value_serializer="raw",
                          partitions=partitions)
    output = OutputProducer(settings)
    output_ready = asyncio.Event()
    awards_topic, progress_topic, dlq_topic = settings.awards_topic, settings.progress_topic, settings.dlq_topic
    repartition_name = by_user.get_topic_name()

    def reject(message: Any, error: InvalidEventError) -> None:
        metrics.dead_letter(error.code)
        output.send(dlq_topic, message.key, dead_letter(
            message.key, message.value, message.topic, message.partition, message.offset, error,
            failed_at=datetime.now(UTC)))

    def first_read(message: Any) -> EventSource:
        """Where ``message``'s event was first read: for a re-keyed event, the position it carries."""
        if message.topic == repartition_name:
            carried = read_source_header(message.headers)
            if carried is not None:
                return carried
        # Built without validation: a position Kafka gave us is well-typed (once per event: it showed in profiles).
        return EventSource.model_construct(topic=message.topic, partition=message.partition, offset=message.offset)

    def source_header(message: Any) -> list[tuple[str, bytes]]:
        source = first_read(message)
        return [(SOURCE_HEADER, orjson.dumps([source.topic, source.partition, source.offset]))]

    def decode(message: Any) -> EventEnvelope | None:
        try:
            return processor.decode(message.value)
        except InvalidEventError as exc:
            reject(message, exc)
        except Exception as exc:  # a parser bug must not lose the message either
            log.exception("unexpected failure decoding %s[%s]@%s", message.topic, message.partition, message.offset)
            reject(message, InvalidEventError("unexpected_error", f"{type(exc).__name__}: {exc}"))
        return None

    @app.task
    async def chain_output_flush() -> None:
        chain_output()
        # What exists once the app is up lives as long as the worker: out of the collector's sight,
        # its full passes only walk what events create.
        gc.collect()
        gc.freeze()

    def chain_output() -> None:
        if not output_ready.is_set():
            output.chain_into(app.producer)
            output_ready.set()

    def handle(message: Any, event: Any) -> None:
        """Everything the worker does for one input message; ``event`` is current (Faust's context)."""
        began = time.perf_counter()
        envelope = decode(message)
        if envelope is None:
            metrics.observe("_invalid", "dead_letter", time.perf_counter() - began)
            return
        user_key = envelope.user_id.encode("utf-8")
        if message.topic != repartition_name and (
            message.key != user_key or partition_for(user_key, partitions) != message.partition
        ):
            # Keyed by something else, or placed by another partitioner: re-key so that this
            # user's events all meet the one table partition holding their state.
            output.send(repartition_name, user_key, message.value, headers=source_header(message))
            metrics.observe(envelope.type, "forwarded", time.perf_counter() - began)
            return
        # The awards' evidence: a re-keyed event's original position; by default, where it was read.
        carried = read_source_header(message.headers) if message.topic == repartition_name else None
        try:
            # Committed entries are pruned when the value is written (StateCache), not per event.
            outcome = processor.evaluate_user(envelope, states.get(user_key, table.get),
                                              (message.topic, message.partition, message.offset), source=carried)
        except Exception as exc:  # an engine or state bug: keep the event (DLQ) and go on
            log.exception("evaluating event %s of %s failed", envelope.event_id, envelope.user_id)
            reject(message, InvalidEventError("processing_error", f"{type(exc).__name__}: {exc}"))
            metrics.observe(envelope.type, "dead_letter", time.perf_counter() - began)
            return
        if outcome.new_user is not None:
            states.put(user_key, outcome.new_user, event)
        for value in outcome.awards:
            output.send(awards_topic, user_key, value)
        for value, (badge_id, tier, updated_at) in zip(outcome.progress, outcome.progress_keys, strict=True):
            output.send_progress(progress_topic, user_key, value, badge_id, tier, updated_at)
        for value in outcome.nudges:
            output.send(settings.nudges_topic, user_key, value)
        output.poll()
        if outcome.evaluation is not None:
            for failure in outcome.evaluation.errors:
                metrics.evaluator_error(failure.badge_id, failure.kind)
                log.warning("badge %s on event %s: %s: %s", failure.badge_id, envelope.event_id,
                            failure.kind, failure.message)
        for record in outcome.award_records:
            metrics.award(record.badge_id)
            log.info("award %s%s to %s (event %s)", record.badge_id, f"/{record.tier}" if record.tier else "",
                     record.user_id, record.event_id)
        metrics.observe(envelope.type, outcome.status, time.perf_counter() - began)

    def handle_direct(message: Any) -> None:
        """The direct path (``worker_delivery=direct``): the safe consumer calls this for every input
        message, in offset order, and acknowledges it once this returns."""
        chain_output()  # nothing is produced before commits flush the output producer
        current = _Current(message)
        token = faust_current_event.set(weakref.ref(current))  # type: ignore[arg-type]
        try:
            handle(message, current)
        finally:
            faust_current_event.reset(token)

    if settings.worker_delivery == "direct":
        direct.topics.update(evaluated.topics)
        direct.handle = handle_direct

    @app.agent(evaluated, name="evaluate")
    async def evaluate(stream: faust.StreamT[bytes]) -> None:
        """Faust's own delivery (``worker_delivery=stream``, and Faust's test context); with the
        direct path the safe consumer hands these topics to :func:`handle_direct` instead."""
        await output_ready.wait()  # nothing is produced before commits flush the output producer
        async for event in stream.events():
            handle(event.message, event)

    if misaligned:
        rekeyed = app.topic(*misaligned, key_serializer="raw", value_serializer="raw")

        @app.agent(rekeyed, name="rekey")
        async def rekey(stream: faust.StreamT[bytes]) -> None:
            """Input topics whose partitioning differs from the state table: only re-key by user_id."""
            await output_ready.wait()
            async for event in stream.events():
                envelope = decode(event.message)
                if envelope is not None:
                    output.send(repartition_name, envelope.user_id.encode("utf-8"), event.message.value,
                                headers=source_header(event.message))

    @app.timer(max(0.05, settings.worker_progress_coalesce_s / 2))
    async def release_progress() -> None:
        """Held progress goes out within about ``worker_progress_coalesce_s`` even when input stops."""
        if output_ready.is_set():
            output.release_due()

    @app.timer(5.0)
    async def report_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            committed = committed_offset(tp.topic, tp.partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                continue
            if highwater is not None:
                metrics.lag(tp.topic, tp.partition, max(0, highwater - (committed or 0)))

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            body, content_type = metrics.exposition()
            return self.bytes(body, content_type=content_type)

    @app.page("/users/{user_id}/state")
    class UserStateView(View):
        @app.table_route(table=table, match_info="user_id")  # type: ignore[arg-type]
        async def get(self, request: Request, user_id: str) -> Response:
            user: StoredUser | None = states.get(user_id.encode("utf-8"), table.get)
            if user is None:
                return self.json({"user_id": user_id, "state": None}, status=404)
            state = user.state
            return self.json({"user_id": user_id, "catalog_fingerprint": state.catalog_fp,
                              "badges": {bid: badge.to_json() for bid, badge in sorted(state.badges.items())},
                              "outbox_events": [entry.event_id for entry in user.outbox],
                              "positions": user.positions})

    return app


class _Current:
    """What Faust's context needs of the current event on the direct path: its message (the table
    and its changelog take the partition, and check the topic, from it)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Any) -> None:
        self.message = message


class RepeatFilter(logging.Filter):
    """Lets the same message through at most once per ``interval`` seconds, then says how many
    repeats it held back.

    While the broker is down, aiokafka's producer retries metadata without backoff and logs each
    failed connect: thousands of ERROR lines a second (aio-libs/aiokafka#1155)."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it since the last one shown)"
        return True


def _quiet_worker_class() -> Any:
    from faust.worker import Worker

    class ServiceWorker(Worker):
        """Faust's worker without the terminal spinner: to spin on every log record, the spinner
        sets the root logger to DEBUG at levels >= WARN, which makes aiokafka build a debug record for
        every message it sends and costs a large share of the worker's time."""

        def _setup_spinner_handler(self, _logger: Any, _level: int) -> None:
            self.spinner = None

    return ServiceWorker


def worker_command(args: Any) -> int:
    """``badgestream worker``: validate the catalog, create topics, run the Faust worker until stopped."""
    settings = settings_for(args)
    if settings.worker_event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")  # before anything creates the loop (Faust, and aiokafka's consumer thread)
    catalog = load_catalog(settings.catalog_path)  # refuses start-up on a bad catalog, naming the line
    log.info("catalog %s: %d badges", catalog.catalog_version, len(catalog.badges))
    counts = ensure_topics(settings, required_topics(settings))
    app = create_app(settings, catalog, input_partitions={t: counts[t] for t in settings.input_topics})
    logging.getLogger("aiokafka").addFilter(RepeatFilter())  # aiokafka/client.py logs as "aiokafka"
    # Stopping with the broker gone would wait for it without end: past the grace period the worker
    # exits as at a crash, and what it had not committed is redelivered.
    from streams.shutdown import StopDeadline
    from streams.worker.shutdown import bounded_stop

    worker_class = bounded_stop(_quiet_worker_class(), StopDeadline(settings.shutdown_grace_s))
    worker = worker_class(app, loglevel=getattr(args, "loglevel", "info"), redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
