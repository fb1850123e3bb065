"""The safe consumer: its read policy with literal offsets, the commit arithmetic (never past an
offset that was not acknowledged), its fetch loop over scripted batches, and a guard that fails
when the Faust/aiokafka code it overrides or copies changes upstream.

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

from streams.worker.faust_seam import SafeConsumer
from streams.worker.hooks import ConsumerHooks, DirectDelivery
from streams.worker.read_policy import Action, Decision, ReadPolicy

INPUT = TP("user-events", 0)
CHANGELOG = TP("app-user-state-changelog", 0)


def bare(cls: type[Any], committed: int | None, acked: list[int]) -> Any:
    """A consumer with only the bookkeeping ``_new_offset`` and ``_add_gap`` use."""
    consumer = object.__new__(cls)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._bs_policy = ReadPolicy()
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
    consumer._bs_policy.origin[INPUT] = 2
    assert consumer._new_offset(INPUT) is None
    consumer._bs_policy.origin[INPUT] = 3
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
        self._bs_policy = ReadPolicy()
        self._bs_policy.expected[INPUT] = expected
        self._bs_policy.ready = True
        self._read_offset = defaultdict(lambda: None)
        self._committed_offset = defaultdict(lambda: expected)
        self._gap = defaultdict(IntervalTree)
        self._bs_seek_epoch = 0
        self._commit_every = None
        self._n_acked = 0
        self.done = asyncio.Event()
        self.flow = True
        self.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}),
                                   topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
                                   flow_control=SimpleNamespace(is_active=lambda: self.flow))
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
    assert loop.delivered == [5, 6, 7, 8, 9] and loop.seeks == [] and loop._bs_policy.expected[INPUT] == 10


def test_a_jump_is_read_again_from_the_expected_offset() -> None:
    # The batch fetched before a seek goes on at 12 while 5 is expected (the loss this module fixes).
    loop = Loop([[12, 13], [5, 6, 7, 8, 9, 10, 11, 12, 13]], expected=5).run()
    assert loop.seeks == [5] and loop._bs_policy.rewinds == 1
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
    assert loop.delivered == [5, 6, 7, 8] and loop._bs_policy.expected[INPUT] == 9 and loop.seeks == []


def test_repeated_log_lines_are_held_back_and_counted() -> None:
    import logging

    from streams.worker.logs import RepeatFilter

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
    loop._bs_policy.ready = False
    loop.run()
    assert loop.delivered == [] and loop._bs_policy.expected[INPUT] is None
    assert loop._bs_policy.set_aside == {INPUT}  # the seek that ends recovery seeks it once more


class DirectLoop(Loop):
    """The loop with the input topic on the direct path: handled in the loop, acknowledged after."""

    def __init__(self, *args: Any, fail_at: int | None = None, stop_flow_at: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handled: list[int] = []
        self.acked: list[int] = []
        self.fail_at, self.stop_flow_at = fail_at, stop_flow_at
        self._bs_hooks = ConsumerHooks(direct=DirectDelivery({INPUT.topic}, self.handle))
        self.consumer_stopped_errors = ()
        self.log = SimpleNamespace(exception=lambda *args: None)

    def handle(self, message: Any) -> None:
        assert message.offset not in self.acked  # nothing is acknowledged before it was evaluated
        if message.offset == self.fail_at:
            raise RuntimeError("state store failed")
        self.handled.append(message.offset)
        if message.offset == self.stop_flow_at:
            self.flow = False  # a rebalance begins while the batch is being read

    def ack(self, message: Any) -> bool:
        self.acked.append(message.offset)
        return True


def test_the_direct_path_evaluates_in_order_and_acknowledges_after_each() -> None:
    loop = DirectLoop([[5, 6, 7], [8, 9]], expected=5)
    loop.run()
    assert loop.handled == loop.acked == [5, 6, 7, 8, 9] and loop.delivered == []  # no stream involved
    assert loop._bs_policy.expected[INPUT] == 10


def test_a_failure_on_the_direct_path_acknowledges_nothing_from_the_failed_event_on() -> None:
    loop = DirectLoop([[5, 6, 7, 8]], expected=5, fail_at=7)
    with pytest.raises(RuntimeError, match="state store failed"):
        loop.run()
    assert loop.handled == [5, 6] and loop.acked == [5, 6]  # 7 and after: not acknowledged, read again


def test_the_direct_path_handles_nothing_while_the_flow_is_stopped() -> None:
    loop = DirectLoop([[5, 6, 7]], expected=5, stop_flow_at=5)
    loop.run()
    assert loop.handled == [5] and loop.acked == [5]
    assert loop._bs_policy.expected[INPUT] == 6  # 6 and 7 are expected again after the seek


class CommittingLoop(DirectLoop):
    """A commit every 2 acknowledgements, one that takes until the test lets it finish."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._commit_every = 2
        self.commits_started: list[list[int]] = []
        self.release = asyncio.Event()

    def ack(self, message: Any) -> bool:
        self._n_acked += 1
        return super().ack(message)

    async def commit(self, *args: Any, **kwargs: Any) -> bool:  # type: ignore[override]
        self.commits_started.append(list(self.handled))
        await self.release.wait()
        return True


async def test_the_fetch_loop_goes_on_while_a_commit_flushes() -> None:
    loop = CommittingLoop([[5, 6, 7, 8, 9, 10]], expected=5)
    await asyncio.wait_for(loop._drain_messages(SimpleNamespace(_stopped=loop.done)), timeout=5)
    # Due after 6, 8 and 10, yet the loop evaluated on while the commit waited for its flush (one
    # awaited in the loop never returns here); and no second one starts while the first runs.
    assert loop.handled == [5, 6, 7, 8, 9, 10] and len(loop.commits_started) == 1
    loop.release.set()
    await asyncio.sleep(0)


class Positions:
    """aiokafka's side of the consumer thread: a fetch position per partition."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.position_of: dict[TP, int] = {}
        self.seeks: list[tuple[TP, int]] = []

    async def position(self, tp: TP) -> int:
        return self.position_of[tp]

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        for tp, offset in partitions.items():
            self.position_of[tp] = offset
            self.seeks.append((tp, offset))

    def hand_out(self, tp: TP, count: int) -> list[int]:
        """``getmany`` returned ``count`` records: the position moves past them."""
        start = self.position_of[tp]
        self.position_of[tp] = start + count
        return list(range(start, start + count))


def changelog_reader(assigned: set[TP]) -> tuple[Any, Positions]:
    consumer = bare(SafeConsumer, None, [])
    thread = Positions(assigned)
    consumer._thread = thread
    consumer.assignment = lambda: set(thread.assigned)
    consumer._bs_changelog_next = {}
    consumer._bs_seek_epoch = 0
    consumer._read_offset = defaultdict(lambda: None)
    consumer._bs_delivered = lambda callback, message: asyncio.sleep(0, result=True)
    return consumer, thread


async def test_changelog_records_dropped_while_the_flow_was_stopped_are_read_again() -> None:
    # Recovery seeks the partition to 0; Faust's getmany hands out 0..74 but drops them because the
    # flow is stopped, then calls perform_seek, which knows only committed offsets (a changelog has
    # none). Recovery would wait for those 75 records forever.
    consumer, thread = changelog_reader({CHANGELOG})
    await consumer.seek_wait({CHANGELOG: 0})
    thread.hand_out(CHANGELOG, 75)
    await consumer._bs_restore_changelogs()
    assert thread.seeks == [(CHANGELOG, 0), (CHANGELOG, 0)] and thread.position_of[CHANGELOG] == 0



async def test_faust_seeking_to_committed_offsets_restores_the_changelog_positions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The seek Faust's getmany makes after dropping a batch (perform_seek) is where the changelog
    # positions are put back.
    async def to_committed(self: Any) -> None:
        self._read_offset.update({CHANGELOG: None})  # what Faust's perform_seek leaves for a changelog

    monkeypatch.setattr(FaustConsumer, "perform_seek", to_committed)
    consumer, thread = changelog_reader({CHANGELOG})
    consumer.app.conf = SimpleNamespace(consumer_auto_offset_reset="earliest")
    consumer._bs_policy.ready = True
    await consumer.seek_wait({CHANGELOG: 211})
    thread.hand_out(CHANGELOG, 40)
    await consumer.perform_seek()
    assert thread.seeks[-1] == (CHANGELOG, 211) and thread.position_of[CHANGELOG] == 211

async def test_delivered_changelog_records_are_not_read_again() -> None:
    consumer, thread = changelog_reader({CHANGELOG})
    await consumer.seek_wait({CHANGELOG: 10})
    for offset in thread.hand_out(CHANGELOG, 5):
        message = SimpleNamespace(offset=offset, topic=CHANGELOG.topic, tp=CHANGELOG)
        assert await consumer._bs_deliver_changelog(CHANGELOG, message, None, lambda topic: False)
    thread.hand_out(CHANGELOG, 3)  # 15..17 handed out, not delivered
    await consumer._bs_restore_changelogs()
    assert thread.seeks[1:] == [(CHANGELOG, 15)]
    await consumer._bs_restore_changelogs()  # nothing handed out since: no seek
    assert thread.seeks[1:] == [(CHANGELOG, 15)]


async def test_a_revoked_changelog_partition_is_forgotten() -> None:
    consumer, thread = changelog_reader({CHANGELOG})
    await consumer.seek_wait({CHANGELOG: 0})
    thread.hand_out(CHANGELOG, 4)
    thread.assigned.clear()
    await consumer._bs_restore_changelogs()
    assert thread.seeks == [(CHANGELOG, 0)] and consumer._bs_changelog_next == {}


# --- the read policy alone: literal offsets in, decisions out -------------------------------------

def policy_at(expected: int | None) -> ReadPolicy[str]:
    policy: ReadPolicy[str] = ReadPolicy()
    policy.expected["p"] = expected
    policy.ready = True
    return policy


def test_policy_accepts_the_expected_offset_and_skips_what_was_delivered() -> None:
    policy = policy_at(5)
    assert policy.decide("p", 5) == Decision(Action.DELIVER)
    policy.delivered("p", 5)
    assert policy.expected["p"] == 6
    assert policy.decide("p", 5) == Decision(Action.SKIP)


def test_policy_reads_a_jump_again_once_then_bridges_it() -> None:
    policy = policy_at(5)
    assert policy.decide("p", 12) == Decision(Action.REWIND, 5)
    policy.rewound("p", 5)
    assert policy.decide("p", 12) == Decision(Action.BRIDGE, 5)  # the same jump from 5: 5..11 do not exist
    policy.delivered("p", 12)
    assert policy.decide("p", 20) == Decision(Action.REWIND, 13)  # a new jump is read again first
    assert policy.rewinds == 1


def test_policy_holds_input_before_the_seek_and_seeks_those_partitions_again() -> None:
    policy: ReadPolicy[str] = ReadPolicy()
    assert policy.decide("p", 0) == Decision(Action.HOLD)
    policy.sought("p", 0, first_read=True)
    assert policy.resume() == {"p": 0}
    assert policy.origin == {"p": 0} and policy.decide("p", 0) == Decision(Action.DELIVER)


def test_policy_a_cut_short_delivery_is_expected_again() -> None:
    policy = policy_at(7)
    policy.cut_short("p", 7)
    assert policy.decide("p", 7) == Decision(Action.DELIVER)


def test_policy_forgets_revoked_partitions_and_holds_until_the_next_seek() -> None:
    policy = policy_at(3)
    policy.revoked(["p"])
    assert "p" not in policy.expected and policy.decide("p", 3) == Decision(Action.HOLD)


def test_policy_first_record_without_a_commit_is_the_origin() -> None:
    policy = policy_at(None)
    assert policy.decide("p", 40) == Decision(Action.DELIVER) and policy.origin == {"p": 40}
    assert policy.commit_head("p", None) == 40 and policy.commit_head("p", 41) == 41


@pytest.mark.parametrize(("acked", "head", "count"), [
    ([2586, 2587], 2585, 0),  # the head 2585 is still on its way (faust #606)
    ([2585, 2586, 2587, 2589], 2585, 3),  # up to the first hole
    ([3, 4, 5], None, 3),
    ([], 7, 0),
])
def test_policy_commits_only_a_run_that_starts_at_the_head(acked: list[int], head: int | None, count: int) -> None:
    assert ReadPolicy.committable(acked, head) == count


def test_policy_counts_acks_of_the_current_generation_while_the_flow_runs() -> None:
    assert ReadPolicy.ack_counts(4, 4, flow_active=True)
    assert not ReadPolicy.ack_counts(3, 4, flow_active=True)
    assert not ReadPolicy.ack_counts(4, 4, flow_active=False)
    assert ReadPolicy.gap_start(5, 9) == 9 and ReadPolicy.gap_start(5, None) == 5


# --- upstream guard ---------------------------------------------------------------------------

# sha256[:16] of the source of every method SafeConsumer overrides, copies or relies on, as
# installed when it was last checked (faust-streaming 0.15.3, aiokafka 0.14.0, pinned exactly).
UPSTREAM_SOURCES = {
    "faust.transport.consumer.Consumer._drain_messages": "44a2500309e83c63",  # copied with our checks
    "faust.transport.consumer.Consumer.perform_seek": "0e8c130ff4b0afd8",
    "faust.transport.consumer.Consumer.seek": "b86a9fe05f956b30",
    "faust.transport.consumer.Consumer.on_partitions_revoked": "d04b7ae72c6fc206",
    "faust.transport.consumer.Consumer.ack": "5fcf41cf45153475",
    "faust.transport.consumer.Consumer._add_gap": "4df2573ded7c1c2c",
    "faust.transport.consumer.Consumer._new_offset": "1d2c7ea89a7ad4f1",
    "mode.services.Service.wait_first": "feade6a31f8a6789",  # how a cut-short delivery is detected
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.seek_wait": "12e8d34e554e9024",
    "faust.tables.recovery.Recovery.on_recovery_completed": "6ef567acf072e46d",  # the recovery race
    "aiokafka.consumer.consumer.AIOKafkaConsumer.seek": "a9430f1f3b9ac419",
    # changelog records getmany drops while the flow is stopped are sought back to; recovery's
    # seeks are recorded by the seek_wait override
    "faust.transport.consumer.Consumer.getmany": "4b168d84882a70d6",
    "faust.transport.drivers.aiokafka.Consumer.seek_wait": "e9db5bbc4ceb2543",
    "faust.tables.recovery.Recovery._seek_offsets": "19598ca63d94d250",
    # the pending user states are written before these pick offsets, flush the producer and commit
    "faust.transport.consumer.Consumer._commit_tps": "a20e230b05ae8b15",
    "faust.transport.consumer.Consumer._commit_offsets": "1a69799041188441",
    "faust.transport.consumer.Consumer.on_partitions_assigned": "29ce96596f05a18c",
    # streams/worker/faust_store.py writes a commit's values as Faust's changelog recovery does (one
    # write batch, the persisted changelog offset in it), where recovery starts, and reads under the
    # current event's partition
    "faust.stores.rocksdb.Store.apply_changelog_batch": "ea3344d369fc4ab5",
    "faust.stores.rocksdb.Store.persisted_offset": "6f2e502fb86043a1",
    "faust.stores.rocksdb.Store._db_for_partition": "cb7e67d5f9efc4bc",
    "faust.stores.rocksdb.Store._get": "7ae8dfd6d7754a59",
    "faust.tables.recovery.Recovery._build_offsets": "27eec86be06cb51f",
    # faust_seam.quiet_worker_class overrides it; chain_flush wraps the producer's flush
    "faust.worker.Worker._setup_spinner_handler": "18cb28ef5b3de212",
    "faust.transport.drivers.aiokafka.Producer.flush": "36d0cb3615f65b01",
}


def _source_hash(dotted: str) -> str:
    import hashlib
    import importlib
    import inspect

    module_name, class_name, method = dotted.rsplit(".", 2)
    func = inspect.unwrap(getattr(getattr(importlib.import_module(module_name), class_name), method))
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


def test_the_upstream_code_the_safe_consumer_depends_on_is_unchanged() -> None:
    changed = [name for name, digest in UPSTREAM_SOURCES.items() if _source_hash(name) != digest]
    assert not changed, (
        f"upstream code that streams/worker/faust_seam.py or faust_store.py overrides, copies or relies on "
        f"has changed: {changed}. "
        "Re-read each against docs/decisions/0001-safe-consumer.md, adapt SafeConsumer (and ReadPolicy), "
        "run tests/reliability (the whole tier) and tests/unit/test_consumer.py, then record the new hashes here."
    )


def committing(before: Any, offsets: dict[TP, int] | None = None) -> Any:
    """A consumer with only what ``_commit_tps`` needs, recording the steps of a commit."""
    consumer = object.__new__(SafeConsumer)
    consumer.steps = []
    consumer._bs_hooks = ConsumerHooks(before_commit=before)
    picked = {INPUT: 8} if offsets is None else offsets

    def filter_committable_offsets(tps: Any) -> dict[TP, int]:
        consumer.steps.append("offsets picked")
        return picked

    async def handle_attached(offsets: Any) -> None:
        consumer.steps.append("attached sent")

    async def commit_offsets(offsets: Any, start_new_transaction: bool) -> bool:
        consumer.steps.append(f"producer flushed, committed {dict(offsets)}")
        return True

    consumer._filter_committable_offsets = filter_committable_offsets
    consumer._handle_attached = handle_attached
    consumer._commit_offsets = commit_offsets
    return consumer


async def test_offsets_are_picked_then_the_states_they_cover_written_then_flushed_and_committed() -> None:
    async def write() -> bool:
        consumer.steps.append("pending states written")
        await asyncio.sleep(0)  # the fetch loop runs between slices
        return True

    consumer = committing(write)
    assert await consumer._commit_tps([INPUT], True) is True
    assert consumer.steps == ["offsets picked", "pending states written", "attached sent",
                              f"producer flushed, committed {{{INPUT!r}: 8}}"]


async def test_a_failed_state_write_commits_nothing() -> None:
    async def fail() -> bool:
        raise OSError("disk full")

    consumer = committing(fail)
    with pytest.raises(OSError, match="disk full"):
        await consumer._commit_tps([INPUT], True)
    assert consumer.steps == ["offsets picked"]


async def test_a_rebalance_during_the_state_writes_commits_nothing() -> None:
    async def dropped() -> bool:
        return False

    consumer = committing(dropped)
    assert await consumer._commit_tps([INPUT], True) is False
    assert consumer.steps == ["offsets picked"]


async def test_states_are_written_even_when_there_is_no_offset_to_commit() -> None:
    async def write() -> bool:
        consumer.steps.append("pending states written")
        return True

    consumer = committing(write, offsets={})
    assert await consumer._commit_tps([INPUT], True) is False
    assert consumer.steps == ["offsets picked", "pending states written"]
