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
import logging
import time
from typing import Any

import faust

from evaluators.resends import ResendWindow
from evaluators.runner import plugin_engine
from schemas.catalog import Catalog, load_catalog
from streams.kafka import (
    ensure_topics,
    repartition_topic_name,
    required_topics,
)
from streams.settings import Settings, settings_for
from streams.worker import faust_seam
from streams.worker.crash_points import CrashPoints
from streams.worker.faust_app import new_faust_app
from streams.worker.faust_store import TableTarget
from streams.worker.handler import InputHandler, Topics
from streams.worker.hooks import ConsumerHooks, DirectDelivery
from streams.worker.logs import RepeatFilter
from streams.worker.metrics import CollectorPauses, WorkerMetrics
from streams.worker.output import OutputProducer
from streams.worker.processor import EventProcessor
from streams.worker.state_cache import StateCache
from streams.worker.state_writer import StateWriter
from streams.worker.views import register_views

log = logging.getLogger("badgestream.worker")

STATE_TABLE = "user-state"
RESEND_TABLE = "event-ids"
"""The second table: each user's remembered event ids, in buckets of record time (evaluators/resends.py)."""
WRITE_SLICE = 64
"""Pending values a commit writes before it lets the fetch loop run again (about 3-6 ms of work)."""
WORKER_GC_THRESHOLDS = (50_000, 20, 100)
"""The garbage collector's thresholds while the worker runs (Python's default: 700, 10, 10).

The state cache keeps a few thousand users' values as objects for a second or so, each event
replaces one, and evaluating makes no reference cycles. The values that die count against the
young generation's allocations, so it holds most of the cache by the time it is collected, and the
older generations walk it again. With the default thresholds that was 18% of the worker's CPU on
bench/worker's new-user stream, with full collections of 80-140 ms every second or two (their
pauses showed in the mature stream's p99). With these, the young generation is collected every
50,000 net allocations (9-15 times over a 40,000-event new-user run), the middle one every 20 of
those, and a full collection waits for 100 middle ones (minutes at full speed): cyclic garbage
(asyncio's, an exception's traceback) still goes, later. bench/worker/README.md has the figures."""


def tune_collector(pauses: CollectorPauses) -> None:
    """Freeze what exists now (it lives as long as the worker: out of the collector's sight, its full
    passes only walk what events create), set :data:`WORKER_GC_THRESHOLDS`, and time every pass
    from now on with ``pauses`` (in place of the timer an earlier app of this process installed)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    gc.callbacks[:] = [c for c in gc.callbacks if not isinstance(c, CollectorPauses)] + [pauses]


def create_app(settings: Settings, catalog: Catalog | None = None, *,
               input_partitions: dict[str, int] | None = None, store: str = "rocksdb://") -> faust.App:
    """Build the worker app. ``input_partitions``: partition count of each input topic (from
    :func:`ensure_topics`); topics whose count differs from ``topic_partitions`` are only re-keyed,
    never evaluated in place, so every user's state lives in exactly one table partition."""
    catalog = catalog if catalog is not None else load_catalog(settings.catalog_path)
    processor = EventProcessor(catalog, plugin_engine(catalog), ResendWindow(settings.resend_window_ms))
    partitions = settings.topic_partitions
    input_partitions = input_partitions or {t: partitions for t in settings.input_topics}

    app = new_faust_app(settings, store)
    metrics = WorkerMetrics(known_types=catalog.event_types())
    # bytes key and value types select Faust's "raw" serializers: the values are our own encoding.
    table = app.Table(STATE_TABLE, partitions=partitions, default=None, key_type=bytes, value_type=bytes)
    ids_table = app.Table(RESEND_TABLE, partitions=partitions, default=None, key_type=bytes, value_type=bytes)

    output = OutputProducer(settings)
    # Table values are written at each commit: one changelog record per changed key through the
    # output producer, then one RocksDB write batch per partition (streams/worker/state_writer.py).
    state_target, ids_target = TableTarget(table), TableTarget(ids_table)
    writer = StateWriter({RESEND_TABLE: ids_target, STATE_TABLE: state_target}, output.send_to)

    def write_state(key: bytes, value: bytes, event: Any) -> None:
        writer.stage(STATE_TABLE, event.message.partition, key, value)  # one table partition per input partition

    def write_ids(key: bytes, value: bytes | None, event: Any) -> None:
        writer.stage(RESEND_TABLE, event.message.partition, key, value)

    read_state = writer.reader(STATE_TABLE, state_target.read)
    read_ids = writer.reader(RESEND_TABLE, ids_target.read)

    def committed(topic: str, partition: int) -> int | None:
        return faust_seam.committed_offset(app, topic, partition)

    states = StateCache(write_state, settings.worker_state_cache, prune=lambda user: user.pruned(committed),
                        write_ids=write_ids)
    written = [0]

    crash = CrashPoints.from_env()  # the reliability tests' kill -9 at each step of a commit

    async def write_pending() -> bool:
        """At every commit, right after Faust picked its offsets: the values pending then staged, a
        slice at a time with the fetch loop running between slices, and their changelog records sent.
        False (commit nothing) if a rebalance dropped pending values meanwhile: the events those
        offsets cover are read again."""
        began = time.perf_counter()
        keys, epoch = states.pending_keys(), states.epoch  # before any await: what the offsets cover
        for start in range(0, len(keys), WRITE_SLICE):
            if start:
                await asyncio.sleep(0)
                if states.epoch != epoch:
                    return False
            sliced = time.perf_counter()
            states.write_listed(keys[start:start + WRITE_SLICE])
            metrics.state_write_slice_seconds.observe(time.perf_counter() - sliced)
        if writer.send():  # those staged now, and between events (past the limit, or idle)
            metrics.state_flush_seconds.observe(time.perf_counter() - began)
            crash.reach("commit.sent")
        metrics.state_writes.inc(states.writes - written[0])  # with those written past the limit
        written[0] = states.writes
        return True

    async def flush_and_apply() -> None:
        """After the outputs and changelog records are acknowledged (before every commit): RocksDB."""
        await output.flush()
        if writer.in_flight:
            crash.reach("commit.flushed")
            writer.apply()
            crash.reach("commit.applied")

    def drop_pending() -> None:
        states.suspend()
        writer.drop_staged()

    aligned = [t for t in settings.input_topics if input_partitions.get(t, partitions) == partitions]
    misaligned = [t for t in settings.input_topics if t not in aligned]
    by_user = app.topic(repartition_topic_name(settings), partitions=partitions, internal=True,
                        key_serializer="raw", value_serializer="raw")
    evaluated = app.topic(*aligned, by_user.get_topic_name(), key_serializer="raw", value_serializer="raw",
                          partitions=partitions)
    output_ready = asyncio.Event()
    handler = InputHandler(processor, states, output, metrics, Topics(
        awards=settings.awards_topic, progress=settings.progress_topic, nudges=settings.nudges_topic,
        dead_letters=settings.dlq_topic, rekey=by_user.get_topic_name()), partitions, read_state, read_ids)
    app.badgestream_states = states  # type: ignore[attr-defined]  # for tests
    app.badgestream_writer = writer  # type: ignore[attr-defined]

    def chain_output() -> None:
        if not output_ready.is_set():  # nothing is produced before commits flush the output producer
            faust_seam.chain_flush(app.producer, flush_and_apply)
            output_ready.set()

    def handle_direct(message: Any) -> None:
        """The direct path: the safe consumer calls this for every input message, in offset order,
        and acknowledges it once this returns."""
        chain_output()
        event = faust_seam.MessageEvent(message)
        with faust_seam.current_event(event):
            handler.handle(message, event)

    direct = DirectDelivery()
    if settings.worker_delivery == "direct":
        direct.topics.update(evaluated.topics)
        direct.handle = handle_direct
    # Faust's own consumer can commit past input events nobody evaluated (streams/worker/faust_seam.py);
    # ours also writes the pending user states before each commit, and evaluates input directly.
    faust_seam.install_consumer(app, ConsumerHooks(
        on_rewind=metrics.input_rewind, before_commit=write_pending, on_revoke=drop_pending,
        on_assign=states.resume, on_commit=metrics.commit_seconds.observe, direct=direct))

    @app.task
    async def chain_output_flush() -> None:
        chain_output()
        tune_collector(metrics.gc_pauses)

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

    if settings.worker_state_idle_s > 0:
        @app.timer(0.05)
        async def write_idle_states() -> None:
            """Pending states unchanged for a while go to the writer between events, a slice at a time."""
            states.write_idle(settings.worker_state_idle_s, most=200)

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

    register_views(app, table, lambda user_id: states.get(user_id.encode("utf-8"), read_state), metrics,
                   lambda user_id, user: states.seen(user_id.encode("utf-8"), user, read_ids))
    return app


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

    worker_class = bounded_stop(faust_seam.quiet_worker_class(), StopDeadline(settings.shutdown_grace_s))
    worker = worker_class(app, loglevel=getattr(args, "loglevel", "info"), redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
