"""The commit arithmetic of streams/worker/consumer.py: never past an offset that was not acknowledged.

Faust's own ``_new_offset`` is the reference for what goes wrong (faust #606): with the committed
offset at N and N+1.. acknowledged, it commits past N although N was never processed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree

from streams.worker.consumer import SafeConsumer

INPUT = TP("user-events", 0)
CHANGELOG = TP("app-user-state-changelog", 0)


def bare(cls: type[Any], committed: int | None, acked: list[int]) -> Any:
    """A consumer with only the bookkeeping ``_new_offset`` and ``_add_gap`` use."""
    consumer = object.__new__(cls)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._origin = {}
    consumer.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    for tp in (INPUT, CHANGELOG):
        consumer._committed_offset[tp] = committed
        consumer._acked[tp] = list(acked)
        consumer._acked_index[tp] = set(acked)
    return consumer


def test_faust_commits_past_an_unacknowledged_head_and_we_do_not() -> None:
    # The reproduction of faust #606: 2585 is the next offset to read and was never acknowledged.
    assert bare(FaustConsumer, 2585, [2586, 2587, 2588, 2589])._new_offset(INPUT) == 2590
    assert bare(SafeConsumer, 2585, [2586, 2587, 2588, 2589])._new_offset(INPUT) is None


def test_a_run_from_the_committed_offset_is_committed_up_to_its_first_hole() -> None:
    consumer = bare(SafeConsumer, 2585, [2585, 2586, 2587, 2589])
    assert consumer._new_offset(INPUT) == 2588
    consumer._committed_offset[INPUT] = 2588
    assert consumer._new_offset(INPUT) is None  # 2588 still missing; 2589 waits
    consumer._acked[INPUT].append(2588)
    assert consumer._new_offset(INPUT) == 2590


def test_without_a_committed_offset_the_first_read_offset_is_the_head() -> None:
    consumer = bare(SafeConsumer, None, [3, 4, 5])
    consumer._origin[INPUT] = 2
    assert consumer._new_offset(INPUT) is None
    consumer._origin[INPUT] = 3
    assert consumer._new_offset(INPUT) == 6


def test_a_real_gap_at_the_committed_offset_is_passed_over() -> None:
    # Offsets 10..12 do not exist (transaction markers); the first record is 13.
    consumer = bare(SafeConsumer, 10, [13, 14])
    asyncio.run(consumer._add_gap(INPUT, 10, 12))
    assert consumer._new_offset(INPUT) == 15


def test_changelog_partitions_keep_fausts_arithmetic() -> None:
    assert bare(SafeConsumer, 2585, [2586, 2587])._new_offset(CHANGELOG) == 2588


@pytest.mark.parametrize("committed", [None, 7])
def test_nothing_acknowledged_commits_nothing(committed: int | None) -> None:
    assert bare(SafeConsumer, committed, [])._new_offset(INPUT) is None


# --- the fetch loop: a jump in offsets is read again, never skipped ------------------------------

class Loop(SafeConsumer):
    """SafeConsumer's ``_drain_messages`` over scripted batches, without Faust around it."""

    def __init__(self, batches: list[list[int]], expected: int | None, cut: frozenset[int] = frozenset()) -> None:
        # No super().__init__: only what the loop touches.
        self.batches = batches
        self.cut = set(cut)  # offsets whose (first) delivery the flow stop interrupts
        self.delivered: list[int] = []
        self.seeks: list[int] = []
        self._expected = {INPUT: expected}
        self._rewound_to = {}
        self._origin = {}
        self._read_offset = defaultdict(lambda: None)
        self._committed_offset = defaultdict(lambda: expected)
        self._gap = defaultdict(IntervalTree)
        self._seek_epoch = 0
        self._input_ready = True
        self._set_aside = set()
        self._commit_every = None
        self._n_acked = 0
        self.rewinds = 0
        self.done = asyncio.Event()
        self.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}),
                                   topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self._thread = SimpleNamespace(seek_wait=self._seek_wait)
        self.callback = self._callback
        self.suspend_flow = asyncio.Event()

    # Service plumbing the loop reads
    @property
    def _stopped(self) -> Any:  # type: ignore[override]
        return self.done

    @property
    def should_stop(self) -> bool:  # type: ignore[override]
        return self.done.is_set()

    async def sleep(self, n: float, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)

    async def getmany(self, timeout: float) -> Any:  # type: ignore[override]
        if not self.batches:
            self.done.set()
            return
        for offset in self.batches.pop(0):
            yield INPUT, SimpleNamespace(offset=offset, topic=INPUT.topic, tp=INPUT)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        delivery, stop = coros
        stop.close()  # the flow-stop wait of the real wait_first: never needed here
        offset = delivery.cr_frame.f_locals["message"].offset
        if offset in self.cut:
            self.cut.discard(offset)
            delivery.close()
            return SimpleNamespace(done=[stop])
        await delivery
        return SimpleNamespace(done=[delivery])

    async def _callback(self, message: Any) -> None:
        self.delivered.append(message.offset)

    async def _seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.append(partitions[INPUT])

    def run(self) -> Loop:
        asyncio.run(self._drain_messages(SimpleNamespace(_stopped=self.done)))
        return self


def test_records_in_order_are_delivered_once() -> None:
    loop = Loop([[5, 6, 7], [8, 9]], expected=5).run()
    assert loop.delivered == [5, 6, 7, 8, 9] and loop.seeks == [] and loop._expected[INPUT] == 10


def test_a_jump_is_read_again_from_the_expected_offset() -> None:
    # The batch fetched before a seek goes on at 12 while 5 is expected (the loss this module fixes).
    loop = Loop([[12, 13], [5, 6, 7, 8, 9, 10, 11, 12, 13]], expected=5).run()
    assert loop.seeks == [5] and loop.rewinds == 1
    assert loop.delivered == [5, 6, 7, 8, 9, 10, 11, 12, 13]


def test_the_same_jump_twice_is_a_real_gap() -> None:
    loop = Loop([[12, 13], [12, 13]], expected=5).run()
    assert loop.seeks == [5]
    assert loop.delivered == [12, 13]
    loop._acked = defaultdict(list, {INPUT: [12, 13]})
    loop._acked_index = defaultdict(set, {INPUT: {12, 13}})
    assert loop._new_offset(INPUT) == 14  # 5..11 passed over: they do not exist


def test_records_already_delivered_are_not_delivered_again() -> None:
    loop = Loop([[5, 6], [5, 6, 7]], expected=5).run()
    assert loop.delivered == [5, 6, 7]


def test_a_delivery_cut_short_is_not_a_read() -> None:
    # The flow stopped while 6 was being handed over: 6 must come again, the rest of the batch waits.
    loop = Loop([[5, 6, 7, 8], [6, 7, 8]], expected=5, cut=frozenset({6})).run()
    assert loop.delivered == [5, 6, 7, 8] and loop._expected[INPUT] == 9 and loop.seeks == []


def test_repeated_log_lines_are_held_back_and_counted() -> None:
    import logging

    from streams.worker.app import RepeatFilter

    clock = [100.0]
    flt = RepeatFilter(interval=10.0, clock=lambda: clock[0])

    def record(msg: str, *args: str) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, args, None)

    connect = "Unable connect to node with id %s: %s"
    assert flt.filter(record(connect, "n1", "refused"))
    assert [flt.filter(record(connect, "n1", "refused")) for _ in range(500)] == [False] * 500
    assert flt.filter(record("Unable to update metadata from %s", "n1"))  # another message passes
    clock[0] += 10.5
    again = record(connect, "n1", "refused")
    assert flt.filter(again)
    assert again.getMessage() == ("Unable connect to node with id n1: refused "
                                  "(and 500 more like it since the last one shown)")


def test_nothing_is_handed_over_before_the_seek_that_ends_recovery() -> None:
    # Records fetched while the table recovers: Faust's stream would drop them (or evaluate them
    # against half-restored state). They wait for the seek, which reads them again.
    loop = Loop([[0, 1, 2], [3]], expected=None)
    loop._input_ready = False
    loop.run()
    assert loop.delivered == [] and loop._expected[INPUT] is None
    assert loop._set_aside == {INPUT}  # the seek that ends recovery seeks it once more
