"""A Faust consumer that never commits an input offset past an event nobody evaluated.

faust-streaming 0.15.3 can lose input events around a restart or rebalance. We reproduced it with
``kill -9`` (tests/reliability/test_worker_crash.py), and the worker log showed the whole chain:

1. After table recovery, Faust resumes the input partitions *before* it seeks them to their
   committed offsets (``Recovery.on_recovery_completed``). The aiokafka fetcher runs in its own
   thread and can hand over a batch that was read before the seek.
2. Faust's fetch loop (``Consumer._drain_messages``) keeps delivering that batch after the seek,
   and a message whose delivery is cut short by a flow stop is dropped but still counted as read.
3. The next message then sits further on than the read offset that the seek reset. Faust treats
   the difference as a "gap" (meant for compacted or transactional topics) and marks the whole
   range as acknowledged, without processing it.
4. ``_new_offset`` also commits over one unacknowledged message at the head (faust #606). The
   next commit therefore moves past the skipped events, and nothing reads them again.

The loss runs to hundreds of events per crash. Faust's issue tracker has the parts of it: #596
(the recovery race), #606/#707 (the head off-by-one), #216/#217 (the same race in the path
without tables).

:class:`SafeConsumer` keeps Faust's design and closes each step:

- **No silent jumps.** For every input partition it tracks the next offset it expects. A record
  further on means records were skipped; the consumer then seeks the partition back to the
  expected offset and discards the rest of the batch for it. Only if the same jump comes again
  from that position is it a real gap, such as transaction markers, and only then is it bridged.
- **A delivery cut short is not a read.** If the flow stops before a message reaches its
  stream, the consumer does not advance its read position past it.
- **Nothing before the seek.** Input records reach the streams only after the seek that ends
  table recovery. Records fetched before it were dropped by Faust's stream (and acknowledged), or
  evaluated against state that was still being restored. Partitions without a committed offset,
  which Faust does not seek at all, are sought to where reading starts (the earliest offset).
- **The head must be acknowledged.** It commits only a run of acknowledged offsets that starts
  exactly at the committed offset.
- **No acknowledgement from a stale generation.** An acknowledgement made while the flow is
  stopped, or for a message of an earlier generation, is not counted. Faust acks the messages it
  skips in a rebalance as if they were processed. These messages are read again after the seek
  anyway.

Every one of these can only make the worker read an event again. Re-reading is what the design
absorbs: event-id dedupe, the outbox and deterministic award ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify

log = logging.getLogger("badgestream.consumer")


class SafeConsumer(AIOKafkaConsumer):
    """The aiokafka consumer of Faust with the safeguards described in this module."""

    #: Called with the topic partition whenever a jump was refused and the partition re-read.
    on_rewind: Callable[[TP], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Input partitions: the offset of the next record we accept. Missing or None: not known
        #: yet (no committed offset), the first record sets it.
        self._expected: dict[TP, int | None] = {}
        #: Input partitions we sought back to an offset, and that offset: a second jump from it
        #: is a real gap.
        self._rewound_to: dict[TP, int] = {}
        #: Input partitions without a committed offset: the first offset read since assignment,
        #: where the first commit must start.
        self._origin: dict[TP, int] = {}
        #: Changes at the start and at the end of every seek: a delivery that overlapped a seek
        #: does not move the position (the seek set it).
        self._seek_epoch = 0
        #: Input records are handed over only between a seek and the next rebalance. Before the
        #: seek that ends table recovery, Faust's stream drops what it gets (and acks it) or, worse,
        #: evaluates it against state still being restored.
        self._input_ready = False
        #: Input partitions whose records arrived before the seek and were set aside.
        self._set_aside: set[TP] = set()
        self.rewinds = 0

    # --- positions ------------------------------------------------------------------------

    async def perform_seek(self) -> None:
        self._input_ready = False
        self._seek_epoch += 1
        try:
            await super().perform_seek()
            sought = dict(self._read_offset)  # seek_wait below drops entries sought to offset 0
            starts = await self._seek_uncommitted()
            for tp, offset in sought.items():
                if self._is_changelog_tp(tp):
                    continue
                if offset is None:
                    offset = starts.get(tp)
                    if offset is None:
                        continue
                    self._origin[tp] = offset
                self._expected[tp] = offset
                self._rewound_to.pop(tp, None)
            log.info("input partitions sought to: %s", ", ".join(
                f"{tp.topic}[{tp.partition}]={offset}{'' if tp not in starts else ' (no commit yet)'}"
                for tp, offset in sorted(self._expected.items())) or "none")
            self._input_ready = True
            # What the fetcher handed over between the seeks above and now was set aside, and the
            # fetcher has moved past it: seek those partitions once more to what we expect.
            again = {tp: offset for tp in self._set_aside if (offset := self._expected.get(tp)) is not None}
            self._set_aside.clear()
            if again:
                await self._thread.seek_wait(again)
        finally:
            self._seek_epoch += 1

    async def _seek_uncommitted(self) -> dict[TP, int]:
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
        self._seek_epoch += 1
        try:
            await super().seek(partition, offset)
            if not self._is_changelog_tp(partition):
                self._expected[partition] = offset
                self._rewound_to.pop(partition, None)
        finally:
            self._seek_epoch += 1

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._input_ready = False  # a rebalance: nothing is read until the seek that follows it
        for tp in revoked:
            self._expected.pop(tp, None)
            self._rewound_to.pop(tp, None)
            self._origin.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _rewind(self, tp: TP, offset: int, seen: int) -> None:
        self.rewinds += 1
        log.warning("input %s[%s]: got offset %s while %s was expected; reading again from %s "
                    "instead of skipping %s record(s)", tp.topic, tp.partition, seen, offset, offset, seen - offset)
        self._rewound_to[tp] = offset
        await self._thread.seek_wait({tp: offset})
        self._read_offset[tp] = offset
        self._expected[tp] = offset
        if self.on_rewind is not None:
            self.on_rewind(tp)

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
        expected = self._expected
        read_offset = self._read_offset
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
                        if not await self._deliver_changelog(tp, message, callback, acks_enabled_for):
                            abandoned.add(tp)
                        continue
                    if not self._input_ready:
                        abandoned.add(tp)  # read again after the seek that comes next
                        self._set_aside.add(tp)
                        continue
                    want = expected.get(tp)
                    if want is not None and offset < want:
                        continue  # delivered before (a re-read after a seek): already on its way
                    if want is not None and offset > want:
                        if self._rewound_to.get(tp) != want:
                            await self._rewind(tp, want, offset)
                            abandoned.add(tp)
                            continue
                        # The same jump from the offset we sought back to: records really are
                        # missing there (transaction markers, compaction). Faust's gap bookkeeping
                        # lets the commit pass over them.
                        log.info("input %s[%s]: offsets %s..%s do not exist; going on from %s",
                                 tp.topic, tp.partition, want, offset - 1, offset)
                        if acks_enabled_for(message.topic):
                            await self._add_gap(tp, want, offset - 1)
                    if self._n_acked_due():
                        await self.commit()
                    if want is None:
                        self._origin.setdefault(tp, offset)
                    epoch = self._seek_epoch
                    delivered = await self._delivered(callback, message)
                    if self._seek_epoch != epoch:
                        # A seek ran meanwhile and set the position; the stream may skip this
                        # message (Faust drops what arrives before the flow resumes), and the next
                        # record shows whether we must read again.
                        continue
                    if not delivered:
                        # The flow stopped before the message reached its stream: it was not read.
                        # (A seek follows; if not, the next record is a jump and we come back.)
                        expected[tp] = offset
                        abandoned.add(tp)
                        continue
                    self._rewound_to.pop(tp, None)
                    expected[tp] = offset + 1
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

    def _n_acked_due(self) -> bool:
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            return True
        return False

    async def _delivered(self, callback: Any, message: Message) -> bool:
        """Hand ``message`` to the conductor; False if the flow stopped first."""
        delivery = callback(message)
        result = await self.wait_first(delivery, self.suspend_flow.wait())
        return delivery in result.done

    async def _deliver_changelog(self, tp: TP, message: Message, callback: Any,
                                 acks_enabled_for: Callable[[str], bool]) -> bool:
        """Changelog records (table recovery) keep Faust's own handling of read offsets."""
        offset = message.offset
        r_offset = self._read_offset.get(tp)
        if r_offset is not None and offset < r_offset:
            return True
        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
            await self._add_gap(tp, r_offset + 1, offset)
        if not await self._delivered(callback, message):
            return False
        self._read_offset[tp] = offset
        return True

    # --- acknowledgements and commits -------------------------------------------------------

    def ack(self, message: Message) -> bool:
        if message.acked or self._is_changelog_tp(message.tp):
            return super().ack(message)
        if (message.generation_id != self.app.consumer_generation_id
                or not self.app.flow_control.is_active()):
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
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)  # committed: the next offset to read
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
        committed = self._committed_offset[tp]
        head = committed if committed is not None else self._origin.get(tp)
        if head is not None and acked[0] > head:
            return None  # the record at the head is still on its way
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1


def install(app: Any, on_rewind: Callable[[TP], None] | None = None) -> None:
    """Make ``app`` create a :class:`SafeConsumer` (call before the app creates its consumer)."""

    class BadgestreamConsumer(SafeConsumer):
        pass

    if on_rewind is not None:
        BadgestreamConsumer.on_rewind = staticmethod(on_rewind)
    app.transport.Consumer = BadgestreamConsumer
