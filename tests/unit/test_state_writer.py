"""The worker's table writes at a commit: changelog records first, RocksDB (with the changelog
offset) only once they are acknowledged, reads in front of both, rebalances and failures."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.errors import DeliveryError
from streams.worker.state_writer import Changes, StateWriter
from tests.unit.support import DeliveredMessage


class Target:
    """A table: its RocksDB (values and the persisted changelog offset per partition)."""

    def __init__(self, changelog_topic: str) -> None:
        self.changelog_topic = changelog_topic
        self.values: dict[bytes, bytes] = {}
        self.offsets: dict[int, int] = {}
        self.batches: list[tuple[int, Changes, int]] = []

    def apply(self, partition: int, changes: Changes, offset: int) -> None:
        self.batches.append((partition, dict(changes), offset))
        for key, value in changes.items():
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value
        self.offsets[partition] = offset


class Broker:
    """The producer and the changelog topics: records are acknowledged when :meth:`ack` says so."""

    def __init__(self) -> None:
        self.log: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {}
        self.unacked: list[tuple[Any, DeliveredMessage]] = []

    def send(self, topic: str, partition: int, key: bytes, value: bytes | None, delivered: Any) -> None:
        records = self.log.setdefault((topic, partition), [])
        records.append((key, value))
        self.unacked.append((delivered, DeliveredMessage(topic, partition, len(records) - 1)))

    def ack(self, error: str | None = None) -> None:
        unacked, self.unacked = self.unacked, []
        for delivered, message in unacked:
            delivered(error, message)


def writer() -> tuple[StateWriter, Target, Target, Broker]:
    ids, state, broker = Target("ids-changelog"), Target("state-changelog"), Broker()
    return StateWriter({"ids": ids, "state": state}, broker.send), ids, state, broker


def test_a_commit_sends_one_record_per_changed_key_then_writes_one_batch_per_partition() -> None:
    w, ids, state, broker = writer()
    w.stage("state", 0, b"a", b"a1")
    w.stage("state", 0, b"a", b"a2")  # the newest value of a key only
    w.stage("state", 1, b"b", b"b1")
    w.stage("ids", 0, b"a\x00x", b"i1")
    assert w.send() == 3
    # the resend ids before the values that list them
    assert list(broker.log) == [("ids-changelog", 0), ("state-changelog", 0), ("state-changelog", 1)]
    assert broker.log[("state-changelog", 0)] == [(b"a", b"a2")]
    assert w.apply() == 0 and state.values == {}  # nothing in RocksDB before the broker has it
    broker.ack()
    assert w.apply() == 1
    assert state.batches == [(0, {b"a": b"a2"}, 0), (1, {b"b": b"b1"}, 0)]
    assert ids.batches == [(0, {b"a\x00x": b"i1"}, 0)]
    assert w.send() == 0 and w.apply() == 0


def test_the_persisted_offset_is_the_last_record_of_the_batch_in_each_partition() -> None:
    w, _ids, state, broker = writer()
    for n in range(3):
        w.stage("state", 2, f"k{n}".encode(), b"v")
        w.send()
        broker.ack()
        w.apply()
    assert state.offsets == {2: 2} and [offset for _, _, offset in state.batches] == [0, 1, 2]


def test_reads_see_staged_and_sent_values_before_the_table() -> None:
    w, _ids, state, broker = writer()
    state.values[b"a"] = b"old"
    state.values[b"gone"] = b"old"
    read = w.reader("state", state.values.get)
    w.stage("state", 0, b"a", b"new")
    w.stage("state", 0, b"gone", None)
    assert read(b"a") == b"new" and read(b"gone") is None and read(b"other") is None
    w.send()
    assert read(b"a") == b"new" and read(b"gone") is None  # sent, not applied: still in front
    w.stage("state", 0, b"a", b"newer")  # the next commit's value, staged before this one is applied
    broker.ack()
    w.apply()
    assert state.values[b"a"] == b"new" and read(b"a") == b"newer"  # not hidden by the older batch
    assert read(b"gone") is None and b"gone" not in state.values


def test_batches_are_applied_in_the_order_sent_and_only_when_complete() -> None:
    w, _ids, state, broker = writer()
    w.stage("state", 0, b"a", b"1")
    w.send()
    first = broker.unacked
    broker.unacked = []
    w.stage("state", 0, b"a", b"2")
    w.send()
    broker.ack()  # the second batch is acknowledged, the first not yet
    assert w.apply() == 0 and state.values == {}
    broker.unacked = first
    broker.ack()
    assert w.apply() == 2 and state.values == {b"a": b"2"} and state.offsets == {0: 1}


def test_a_failed_record_raises_and_its_batch_is_never_written() -> None:
    w, _ids, state, broker = writer()
    w.stage("state", 0, b"a", b"1")
    w.send()
    broker.ack("broker refused it")
    with pytest.raises(DeliveryError, match=r"changelog records failed.*broker refused it"):
        w.apply()
    assert state.values == {} and w.in_flight == 1
    with pytest.raises(DeliveryError):  # still: no later batch is written past it
        w.apply()


def test_a_rebalance_drops_staged_values_but_applies_sent_ones() -> None:
    w, _ids, state, broker = writer()
    read = w.reader("state", state.values.get)
    w.stage("state", 0, b"a", b"sent")
    w.send()
    w.stage("state", 0, b"a", b"staged")
    w.stage("state", 0, b"b", b"staged")
    assert w.drop_staged() == 2
    assert read(b"a") == b"sent" and read(b"b") is None  # the sent value is still what a read sees
    assert w.send() == 0
    broker.ack()
    assert w.apply() == 1 and state.values == {b"a": b"sent"} and read(b"a") == b"sent"


def test_crash_points_are_named_or_refused() -> None:
    from streams.worker.crash_points import CrashPoints

    assert CrashPoints(None).point is None
    points = CrashPoints("commit.flushed:3")
    assert (points.point, points.at) == ("commit.flushed", 3)
    points.reach("commit.sent")  # another point: not counted
    points.reach("commit.flushed")
    assert points.reached == 1
    with pytest.raises(ValueError, match=r"BADGESTREAM_CRASH_AT='commit\.later:1'"):
        CrashPoints("commit.later:1")
    with pytest.raises(ValueError, match="n >= 1"):
        CrashPoints("commit.sent:0")


class _Partitioned:
    """A RocksDB store as TableTarget uses it: one database per partition, and the key index."""

    offset_key = b"__faust\x00offset__"

    def __init__(self) -> None:
        self.dbs: dict[int, dict[bytes, bytes]] = {0: {}, 1: {b"u-1": b"state of u-1"}}
        self._key_index: dict[bytes, int] = {}

    def _db_for_partition(self, partition: int) -> dict[bytes, bytes]:
        return self.dbs[partition]


class _Table:
    def __init__(self, store: Any) -> None:
        from types import SimpleNamespace

        self.data = store
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: "app-user-state-changelog")
        self.gets: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:  # Faust's own read, outside an event
        self.gets.append(key)
        for db in self.data.dbs.values():
            if key in db:
                return db[key]
        return None


def test_a_read_under_an_event_goes_to_its_partitions_database_and_outside_one_to_faust() -> None:
    from types import SimpleNamespace

    from streams.worker.faust_seam import MessageEvent, current_event
    from streams.worker.faust_store import TableTarget

    store = _Partitioned()
    table = _Table(store)
    target = TableTarget(table)
    with current_event(MessageEvent(SimpleNamespace(partition=1))):
        assert target.read(b"u-1") == b"state of u-1" and store._key_index == {b"u-1": 1}
        assert target.read(b"u-2") is None
    with current_event(MessageEvent(SimpleNamespace(partition=0))):
        assert target.read(b"u-1") is None  # another partition's key: not this event's table partition
    assert table.gets == []
    assert target.read(b"u-1") == b"state of u-1" and table.gets == [b"u-1"]
