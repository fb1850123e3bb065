"""The seam to Faust: every override of a Faust method and every private Faust name lives here (and,
for the table stores, in :mod:`streams.worker.faust_store`).

The rest of the worker uses its typed interface: :func:`install_consumer` (with the hooks of
:mod:`streams.worker.hooks`), :func:`committed_offset`, :func:`current_event` with a
:class:`MessageEvent`, :func:`chain_flush` and :func:`quiet_worker_class`. Faust, aiokafka and mode
are pinned exactly; tests/unit/test_consumer.py hashes the upstream code all of it relies on.

The main piece is a Faust consumer that never commits an input offset past an event nobody
evaluated. faust-streaming 0.15.3 can skip input records around a restart or rebalance and commit
past them (the chain and its fix: docs/decisions/0001-safe-consumer.md). :class:`SafeConsumer`
keeps Faust's design; what to do with each record and which offset may be committed is decided by
the pure :class:`streams.worker.read_policy.ReadPolicy`, and this subclass only translates Faust's
calls. Its own attributes start with ``_bs_`` so they are not mistaken for Faust's. Every
safeguard can only make the worker read an event again, which the stored input marks and the
outbox absorb.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.exceptions import ProducerSendError
from faust.streams import _current_event
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams.worker.hooks import ConsumerHooks
from streams.worker.read_policy import Action, ReadPolicy

log = logging.getLogger("badgestream.consumer")


class SafeConsumer(AIOKafkaConsumer):
    """The aiokafka consumer of Faust, with :class:`ReadPolicy` deciding what it reads and commits."""

    #: Set by :func:`install_consumer` before the app creates its consumer.
    _bs_hooks = ConsumerHooks()
    #: The commit started by the fetch loop, while it runs.
    _bs_commit_task: asyncio.Future[None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bs_policy: ReadPolicy[TP] = ReadPolicy()
        #: Changes at the start and at the end of every seek: a delivery that overlapped a seek
        #: does not move the position (the seek set it).
        self._bs_seek_epoch = 0
        #: Per assigned changelog partition, the next offset to hand to the tables: where recovery
        #: sought it, then one past the last record delivered (:meth:`_bs_restore_changelogs`).
        self._bs_changelog_next: dict[TP, int] = {}

    # --- positions ------------------------------------------------------------------------

    async def perform_seek(self) -> None:
        policy = self._bs_policy
        policy.seeking()
        self._bs_seek_epoch += 1
        try:
            await super().perform_seek()
            sought = dict(self._read_offset)  # seek_wait below drops entries sought to offset 0
            starts = await self._bs_seek_uncommitted()
            for tp, offset in sought.items():
                if self._is_changelog_tp(tp):
                    continue
                if offset is not None:
                    policy.sought(tp, offset)
                elif (start := starts.get(tp)) is not None:
                    policy.sought(tp, start, first_read=True)
            log.info("input partitions sought to: %s", ", ".join(
                f"{tp.topic}[{tp.partition}]={offset}{'' if tp not in starts else ' (no commit yet)'}"
                for tp, offset in sorted(policy.expected.items())) or "none")
            again = policy.resume()
            if again:
                await self._thread.seek_wait(again)
            await self._bs_restore_changelogs()
        finally:
            self._bs_seek_epoch += 1

    async def _bs_restore_changelogs(self) -> None:
        """Seek every changelog partition whose records were handed out but never delivered back to
        the first of them.

        Faust's ``getmany`` drops a whole fetched batch when the flow is stopped and then calls
        :meth:`perform_seek`, which seeks only to committed offsets. Changelog partitions have none,
        so the dropped changelog records were lost to recovery: it waited for them forever ("No
        event received for active tp ... since recovery start"), and the worker processed nothing
        more (seen when a worker took over a killed worker's partitions while its flow was being
        resumed)."""
        assigned = self.assignment()
        for tp, wanted in list(self._bs_changelog_next.items()):
            if tp not in assigned:
                del self._bs_changelog_next[tp]
                continue
            try:
                position = await self._thread.position(tp)
            except IllegalStateError:  # revoked meanwhile: the next recovery seeks it
                continue
            if position is not None and position > wanted:
                log.warning("changelog %s[%s]: records %s..%s were fetched but not delivered; reading them again",
                            tp.topic, tp.partition, wanted, position - 1)
                await self._thread.seek_wait({tp: wanted})

    async def _bs_seek_uncommitted(self) -> dict[TP, int]:
        """Seek the input partitions without a committed offset to where reading starts.

        Faust does not seek them at all, so they stay wherever the fetcher took them, possibly past
        records it handed over before the seek and that were then dropped. Start from the earliest
        offset (``consumer_auto_offset_reset``), as a consumer new to the partition does."""
        unsought = [tp for tp, offset in self._read_offset.items()
                    if offset is None and not self._is_changelog_tp(tp)]
        if not unsought:
            return {}
        if self.app.conf.consumer_auto_offset_reset == "latest":
            found = await self.highwaters(*unsought)
        else:
            found = await self.earliest_offsets(*unsought)
        starts = {TP(tp.topic, tp.partition): int(offset) for tp, offset in found.items() if offset is not None}
        await self._thread.seek_wait(starts)
        return starts

    async def seek(self, partition: TP, offset: int) -> None:
        self._bs_seek_epoch += 1
        try:
            await super().seek(partition, offset)
            if self._is_changelog_tp(partition):
                self._bs_changelog_next[partition] = max(offset, 0)
            else:
                self._bs_policy.sought(partition, offset)
        finally:
            self._bs_seek_epoch += 1

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        # Recovery seeks the changelog partitions it reads with this.
        await super().seek_wait(partitions)
        for tp, offset in partitions.items():
            if self._is_changelog_tp(tp):
                self._bs_changelog_next[tp] = max(offset, 0)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._bs_policy.revoked(revoked)
        for tp in revoked:
            self._bs_changelog_next.pop(tp, None)
        if self._bs_hooks.on_revoke is not None:
            self._bs_hooks.on_revoke()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        if self._bs_hooks.on_assign is not None:
            self._bs_hooks.on_assign()
        await super().on_partitions_assigned(assigned, generation_id)

    async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
        # Faust's _commit_tps, with ``before_commit`` between picking the offsets and the producer
        # flush that precedes the commit. The offsets are picked first, synchronously: they cover
        # only events evaluated by now, whose values are pending now. ``before_commit`` writes those
        # (table values, hence changelog records into the producer before its flush), in slices with
        # the fetch loop running between them; False if a rebalance dropped pending values meanwhile,
        # and then nothing is committed (those events are read again). If it raises, nothing is.
        began = time.perf_counter()
        hooks = self._bs_hooks
        commit_offsets = self._filter_committable_offsets(tps)
        if hooks.before_commit is not None and not await hooks.before_commit():
            return False
        result = False
        if commit_offsets:
            try:
                # send all messages attached to the new offset
                await self._handle_attached(commit_offsets)
            except ProducerSendError as exc:
                await self.crash(exc)
            else:
                result = await self._commit_offsets(commit_offsets, start_new_transaction=start_new_transaction)
        if hooks.on_commit is not None:
            hooks.on_commit(time.perf_counter() - began)
        return result

    async def _bs_rewind(self, tp: TP, offset: int, seen: int) -> None:
        log.warning("input %s[%s]: got offset %s while %s was expected; reading again from %s "
                    "instead of skipping %s record(s)", tp.topic, tp.partition, seen, offset, offset, seen - offset)
        self._bs_policy.rewound(tp, offset)
        await self._thread.seek_wait({tp: offset})
        self._read_offset[tp] = offset
        if self._bs_hooks.on_rewind is not None:
            self._bs_hooks.on_rewind(tp.topic, tp.partition)

    # --- the fetch loop ---------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised live
        """Faust 0.15.3's loop, with the checks of this module where it advanced read offsets."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        acks_enabled_for = self.app.topics.acks_enabled_for
        is_changelog = self._is_changelog_tp
        policy = self._bs_policy
        read_offset = self._read_offset
        direct = self._bs_hooks.direct
        direct_topics = direct.topics if direct is not None and direct.handle is not None else set()
        flow_active = self.app.flow_control.is_active
        yield_every, since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                abandoned: set[TP] = set()  # partitions whose rest of this batch is discarded
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield > yield_every:
                        await asyncio.sleep(0)
                        since_yield = 0
                    if tp in abandoned:
                        continue
                    offset = message.offset
                    if is_changelog(tp):
                        if not await self._bs_deliver_changelog(tp, message, callback, acks_enabled_for):
                            abandoned.add(tp)
                        continue
                    decision = policy.decide(tp, offset)
                    if decision.action is Action.HOLD:
                        abandoned.add(tp)  # read again after the seek that comes next
                        continue
                    if decision.action is Action.SKIP:
                        continue
                    want = decision.expected
                    if decision.action is Action.REWIND and want is not None:
                        await self._bs_rewind(tp, want, offset)
                        abandoned.add(tp)
                        continue
                    if decision.action is Action.BRIDGE and want is not None:
                        # The same jump from the offset we sought back to: records really are
                        # missing there (transaction markers, compaction). Faust's gap bookkeeping
                        # lets the commit pass over them.
                        log.info("input %s[%s]: offsets %s..%s do not exist; going on from %s",
                                 tp.topic, tp.partition, want, offset - 1, offset)
                        if acks_enabled_for(message.topic):
                            await self._add_gap(tp, want, offset - 1)
                    if self._bs_n_acked_due():
                        self._bs_commit_soon()
                    if tp.topic in direct_topics:
                        if self.suspend_flow.is_set() or not flow_active():
                            policy.cut_short(tp, offset)  # a rebalance: read again after its seek
                            abandoned.add(tp)
                            continue
                        direct.handle(message)  # type: ignore[union-attr,misc]
                        self.ack(message)
                        policy.delivered(tp, offset)
                        read_offset[tp] = offset
                        continue
                    epoch = self._bs_seek_epoch
                    delivered = await self._bs_delivered(callback, message)
                    if self._bs_seek_epoch != epoch:
                        # A seek ran meanwhile and set the position; the stream may skip this
                        # message (Faust drops what arrives before the flow resumes), and the next
                        # record shows whether we must read again.
                        continue
                    if not delivered:
                        # (A seek follows; if not, the next record is a jump and we come back.)
                        policy.cut_short(tp, offset)
                        abandoned.add(tp)
                        continue
                    policy.delivered(tp, offset)
                    read_offset[tp] = offset
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    def _bs_commit_soon(self) -> None:
        """Commit in the background: Faust's loop awaited the commit here, so fetching (and, on the
        direct path, evaluating) stopped for as long as the producers took to flush. What a commit
        covers is fixed synchronously at its start, after the pending states are written
        (``_commit_tps``), so events evaluated meanwhile are simply left for the next one."""
        task = self._bs_commit_task
        if task is None or task.done():
            self._bs_commit_task = asyncio.ensure_future(self._bs_commit_or_crash())

    async def _bs_commit_or_crash(self) -> None:
        try:
            await self.commit()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. an output record the broker refused: stop before committing more
            log.exception("commit failed: %r", exc)
            await self.crash(exc)

    def _bs_n_acked_due(self) -> bool:
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            return True
        return False

    async def _bs_delivered(self, callback: Any, message: Message) -> bool:
        """Hand ``message`` to the conductor; False if the flow stopped first."""
        delivery = callback(message)
        result = await self.wait_first(delivery, self.suspend_flow.wait())
        return delivery in result.done

    async def _bs_deliver_changelog(self, tp: TP, message: Message, callback: Any,
                                 acks_enabled_for: Callable[[str], bool]) -> bool:
        """Changelog records (table recovery) keep Faust's own handling of read offsets."""
        offset = message.offset
        r_offset = self._read_offset.get(tp)
        if r_offset is not None and offset < r_offset:
            return True
        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
            await self._add_gap(tp, r_offset + 1, offset)
        if not await self._bs_delivered(callback, message):
            return False
        self._read_offset[tp] = offset
        self._bs_changelog_next[tp] = offset + 1
        return True

    # --- acknowledgements and commits -------------------------------------------------------

    def ack(self, message: Message) -> bool:
        if message.acked or self._is_changelog_tp(message.tp):
            return super().ack(message)
        if not ReadPolicy.ack_counts(message.generation_id, self.app.consumer_generation_id,
                                     self.app.flow_control.is_active()):
            # Skipped by Faust in a rebalance (or finished while the flow was stopped): it will be
            # read again after the seek, so it must not count towards a commit.
            with ack_lock:
                message.acked = True
                self._unacked_messages.discard(message)
                notify(self._waiting_for_ack)
            return False
        return super().ack(message)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if self._is_changelog_tp(tp):
            await super()._add_gap(tp, offset_from, offset_to)
            return
        offset_from = ReadPolicy.gap_start(offset_from, self._committed_offset[tp])
        if offset_from <= offset_to:
            gaps = self._gap[tp]
            gaps.addi(offset_from, offset_to + 1)
            gaps.merge_overlaps()

    def _new_offset(self, tp: TP) -> int | None:
        if self._is_changelog_tp(tp):
            return super()._new_offset(tp)
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]
        if gaps:
            top = max(acked)
            index = self._acked_index[tp]
            for entry in sorted(gaps.overlap(0, top + 1), key=lambda interval: interval.begin):
                missing = [offset for offset in range(entry.begin, entry.end) if offset not in index]
                acked.extend(missing)
                index.update(missing)
            gaps.chop(0, top + 1)
        acked.sort()
        count = self._bs_policy.committable(acked, self._bs_policy.commit_head(tp, self._committed_offset[tp]))
        if not count:
            return None
        batch = acked[:count]
        acked[:count] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1

    def committed(self, tp: tuple[str, int]) -> int | None:
        """The committed offset (the next one to read) of an input partition, or None if unknown."""
        return self._committed_offset.get(TP(*tp))


def install_consumer(app: Any, hooks: ConsumerHooks) -> None:
    """Make ``app`` create a :class:`SafeConsumer` with ``hooks`` (call before it creates its consumer)."""
    app.transport.Consumer = type("BadgestreamConsumer", (SafeConsumer,), {"_bs_hooks": hooks})


def hooks_of(app: Any) -> ConsumerHooks:
    """The hooks :func:`install_consumer` installed in ``app`` (tests drive the direct path with them)."""
    return app.transport.Consumer._bs_hooks  # type: ignore[no-any-return]


def committed_offset(app: Any, topic: str, partition: int) -> int | None:
    """The committed offset of (topic, partition) by ``app``'s consumer, or None if unknown."""
    consumer = app.consumer
    return consumer.committed((topic, partition)) if isinstance(consumer, SafeConsumer) else None


class current_event:  # lower case: used as a function, ``with current_event(event):``
    """``event`` as Faust's current event: tables take the partition (and check the topic) from it.

    A class, not a generator-based context manager: entered once per event on the direct path,
    where this costs 0.46 us instead of 1.28."""

    __slots__ = ("_event", "_ref", "_token")

    def __init__(self, event: Any) -> None:
        self._event = event  # Faust's context holds it weakly: alive while entered
        self._ref = weakref.ref(event)

    def __enter__(self) -> None:
        self._token = _current_event.set(self._ref)

    def __exit__(self, *exc: object) -> None:
        _current_event.reset(self._token)


class MessageEvent:
    """An event for :func:`current_event` on the direct path, where Faust builds none: Faust's
    context needs only its message."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Any) -> None:
        self.message = message


def chain_flush(faust_producer: Any, flush: Callable[[], Awaitable[None]]) -> None:
    """Make Faust's producer flush (awaited before each offset commit) await ``flush`` too."""
    original = faust_producer.flush

    async def flushed() -> None:
        await original()
        await flush()

    faust_producer.flush = flushed


def quiet_worker_class() -> Any:
    """Faust's worker class without the terminal spinner: to spin on every log record, the spinner
    sets the root logger to DEBUG at levels >= WARN, which makes aiokafka build a debug record for
    every message it sends and costs a large share of the worker's time."""
    from faust.worker import Worker

    class ServiceWorker(Worker):

        def _setup_spinner_handler(self, _logger: Any, _level: int) -> None:
            self.spinner = None

    return ServiceWorker
