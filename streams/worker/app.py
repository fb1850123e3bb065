"""The Faust application: wiring only. Input topics in, per-user state in RocksDB tables, outputs out.

What happens to one message is :class:`streams.worker.handler.InputHandler`'s (decode -> re-key or
evaluate -> state cache -> outputs -> metrics); Faust's internals are reached only through
:mod:`streams.worker.faust_seam`. User states stay decoded in memory and are written to the table
once per user per commit, before the commit (streams/worker/state_cache.py); progress is coalesced
per (user, badge, tier) (streams/worker/output.py). Delivery is at-least-once made exact by
idempotency: deterministic award ids, redelivery recognised by the stored input marks, resends by
record time, and the per-user outbox (docs/worker-state.md). No ``concurrency > 1`` (faust #606).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import faust

from evaluators.resends import ResendWindow
from evaluators.runner import plugin_engine
from schemas.catalog import Catalog, load_catalog
from streams.kafka import (
    ensure_topics,
    faust_brokers,
    faust_credentials,
    repartition_topic_name,
    required_topics,
)
from streams.settings import Settings, settings_for
from streams.worker import faust_seam
from streams.worker.handler import InputHandler, Topics
from streams.worker.hooks import ConsumerHooks, DirectDelivery
from streams.worker.metrics import WorkerMetrics
from streams.worker.output import OutputProducer
from streams.worker.processor import EventProcessor
from streams.worker.state_cache import StateCache
from streams.worker.views import register_views

log = logging.getLogger("badgestream.worker")

STATE_TABLE = "user-state"
RESEND_TABLE = "event-ids"
"""The second table: each user's remembered event ids, in buckets of record time (evaluators/resends.py)."""


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
    processor = EventProcessor(catalog, plugin_engine(catalog), ResendWindow(settings.resend_window_ms))
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
    # bytes key and value types select Faust's "raw" serializers: the values are our own encoding.
    table = app.Table(STATE_TABLE, partitions=partitions, default=None, key_type=bytes, value_type=bytes)
    ids_table = app.Table(RESEND_TABLE, partitions=partitions, default=None, key_type=bytes, value_type=bytes)

    def write_state(key: bytes, value: bytes, event: Any) -> None:
        with faust_seam.current_event(event):  # the store and changelog take the partition from it
            table[key] = value

    def write_ids(key: bytes, value: bytes | None, event: Any) -> None:
        with faust_seam.current_event(event):
            if value is not None:
                ids_table[key] = value
            elif key in ids_table:
                del ids_table[key]

    def committed(topic: str, partition: int) -> int | None:
        return faust_seam.committed_offset(app, topic, partition)

    states = StateCache(write_state, settings.worker_state_cache, prune=lambda user: user.pruned(committed),
                        write_ids=write_ids)
    written = [0]

    def write_pending() -> None:
        began = time.perf_counter()
        if states.write_all():
            metrics.state_flush_seconds.observe(time.perf_counter() - began)
        metrics.state_writes.inc(states.writes - written[0])  # with those written past the limit
        written[0] = states.writes

    aligned = [t for t in settings.input_topics if input_partitions.get(t, partitions) == partitions]
    misaligned = [t for t in settings.input_topics if t not in aligned]
    by_user = app.topic(repartition_topic_name(settings), partitions=partitions, internal=True,
                        key_serializer="raw", value_serializer="raw")
    evaluated = app.topic(*aligned, by_user.get_topic_name(), key_serializer="raw", value_serializer="raw",
                          partitions=partitions)
    output = OutputProducer(settings)
    output_ready = asyncio.Event()
    handler = InputHandler(processor, states, output, metrics, Topics(
        awards=settings.awards_topic, progress=settings.progress_topic, nudges=settings.nudges_topic,
        dead_letters=settings.dlq_topic, rekey=by_user.get_topic_name()), partitions, table.get, ids_table.get)
    app.badgestream_states = states  # type: ignore[attr-defined]  # for tests

    def chain_output() -> None:
        if not output_ready.is_set():  # nothing is produced before commits flush the output producer
            faust_seam.chain_flush(app.producer, output.flush)
            output_ready.set()

    def handle_direct(message: Any) -> None:
        """The direct path: the safe consumer calls this for every input message, in offset order,
        and acknowledges it once this returns."""
        chain_output()
        event = faust_seam.event_of(message)
        with faust_seam.current_event(event):
            handler.handle(message, event)

    direct = DirectDelivery()
    if settings.worker_delivery == "direct":
        direct.topics.update(evaluated.topics)
        direct.handle = handle_direct
    # Faust's own consumer can commit past input events nobody evaluated (streams/worker/faust_seam.py);
    # ours also writes the pending user states before each commit, and evaluates input directly.
    faust_seam.install_consumer(app, ConsumerHooks(
        on_rewind=metrics.input_rewind, before_commit=write_pending, on_revoke=states.suspend,
        on_assign=states.resume, on_commit=metrics.commit_seconds.observe, direct=direct))

    @app.task
    async def chain_output_flush() -> None:
        chain_output()
        # What exists once the app is up lives as long as the worker: out of the collector's sight,
        # its full passes only walk what events create.
        gc.collect()
        gc.freeze()

    @app.agent(evaluated, name="evaluate")
    async def evaluate(stream: faust.StreamT[bytes]) -> None:
        """Faust's own delivery (``worker_delivery=stream``, and Faust's test context); with the
        direct path the safe consumer hands these topics to :func:`handle_direct` instead."""
        await output_ready.wait()
        async for event in stream.events():
            handler.handle(event.message, event)

    if misaligned:
        rekeyed = app.topic(*misaligned, key_serializer="raw", value_serializer="raw")

        @app.agent(rekeyed, name="rekey")
        async def rekey(stream: faust.StreamT[bytes]) -> None:
            """Input topics whose partitioning differs from the state table: only re-key by user_id."""
            await output_ready.wait()
            async for event in stream.events():
                envelope = handler.decode(event.message)
                if envelope is not None:
                    handler.forward(event.message, envelope.user_id.encode("utf-8"))

    @app.timer(max(0.05, settings.worker_progress_coalesce_s / 2))
    async def release_progress() -> None:
        """Held progress goes out within about ``worker_progress_coalesce_s`` even when input stops."""
        if output_ready.is_set():
            output.release_due()

    @app.timer(5.0)
    async def report_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            done = committed(tp.topic, tp.partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                continue
            if highwater is not None:
                metrics.lag(tp.topic, tp.partition, max(0, highwater - (done or 0)))

    register_views(app, table, lambda user_id: states.get(user_id.encode("utf-8"), table.get), metrics,
                   lambda user_id, user: states.seen(user_id.encode("utf-8"), user, ids_table.get))
    return app


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
