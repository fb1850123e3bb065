"""The worker's state cache: one table write per user per commit, bounded, consistent across rebalances."""

from __future__ import annotations

from typing import Any

import pytest

from evaluators.state import UserState
from streams.worker.state_cache import StateCache
from streams.worker.stored import StoredUser


def user(name: str, offset: int) -> StoredUser:
    return StoredUser(UserState.empty(name), marks={("in", 0, False): offset})


class Table:
    """The state table as the cache sees it: writes with the event each was made under."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.writes: list[tuple[bytes, Any]] = []
        self.reads = 0

    def write(self, key: bytes, value: bytes, event: Any) -> None:
        self.values[key] = value
        self.writes.append((key, event))

    def read(self, key: bytes) -> bytes | None:
        self.reads += 1
        return self.values.get(key)


def test_a_user_is_written_once_per_commit_with_the_event_of_its_last_change() -> None:
    table = Table()
    cache = StateCache(table.write, limit=100)
    for offset in range(5):
        cache.put(b"a", user("a", offset), ("p0", offset))
    cache.put(b"b", user("b", 9), ("p1", 9))
    assert table.writes == [] and len(cache) == 2
    assert cache.get(b"a", table.read) == user("a", 4) and table.reads == 0  # the newest, not read back
    assert cache.write_all() == 2
    assert table.writes == [(b"a", ("p0", 4)), (b"b", ("p1", 9))]  # each under its own event (partition)
    assert StoredUser.from_bytes(table.values[b"a"]) == user("a", 4)
    assert cache.write_all() == 0


def test_past_the_limit_the_oldest_users_are_written_at_once() -> None:
    table = Table()
    cache = StateCache(table.write, limit=2)
    for n in range(4):
        cache.put(f"u{n}".encode(), user(f"u{n}", n), n)
    assert [key for key, _ in table.writes] == [b"u0", b"u1"] and len(cache) == 2


def test_limit_zero_writes_every_change() -> None:
    table = Table()
    cache = StateCache(table.write, limit=0)
    cache.put(b"a", user("a", 1), 1)
    cache.put(b"a", user("a", 2), 2)
    assert table.writes == [(b"a", 1), (b"a", 2)] and len(cache) == 0


def test_a_value_is_read_and_decoded_once_then_served_from_memory() -> None:
    table = Table()
    table.values[b"a"] = user("a", 3).to_bytes()
    cache = StateCache(table.write, limit=10)
    assert cache.get(b"a", table.read) == user("a", 3)
    assert cache.get(b"a", table.read) == user("a", 3) and table.reads == 1
    assert cache.get(b"nobody", table.read) is None


def test_a_failed_write_keeps_the_value_pending() -> None:
    def broken(key: bytes, value: bytes, event: Any) -> None:
        raise OSError("disk full")

    cache = StateCache(broken, limit=10)
    cache.put(b"a", user("a", 1), 1)
    with pytest.raises(OSError):
        cache.write_all()
    assert len(cache) == 1 and cache.get(b"a", lambda key: None) == user("a", 1)


def test_a_rebalance_discards_pending_values_and_writes_nothing_until_assignment() -> None:
    table = Table()
    table.values[b"a"] = user("a", 1).to_bytes()
    cache = StateCache(table.write, limit=1)
    cache.put(b"a", user("a", 2), 2)
    assert cache.suspend() == 1  # revoked: the uncommitted event is read again by the next owner
    cache.put(b"a", user("a", 3), 3)  # still handed to the agent meanwhile: evaluated, not written
    cache.put(b"b", user("b", 1), 1)  # past the limit, yet nothing is written
    assert cache.get(b"a", table.read) == user("a", 3)
    assert cache.write_all() == 0 and table.writes == []
    cache.resume()
    assert len(cache) == 0 and cache.get(b"a", table.read) == user("a", 1)  # as written, read again


def test_values_unchanged_for_a_while_are_written_between_commits_a_slice_at_a_time() -> None:
    table, now = Table(), [100.0]
    cache = StateCache(table.write, limit=100, clock=lambda: now[0])
    cache.put(b"a", user("a", 1), 1)
    cache.put(b"b", user("b", 2), 2)
    now[0] = 100.2
    cache.put(b"c", user("c", 3), 3)
    cache.put(b"a", user("a", 4), 4)  # changed again: no longer idle, now the newest
    now[0] = 100.3
    assert cache.write_idle(0.25, most=10) == 1 and [key for key, _ in table.writes] == [b"b"]
    now[0] = 100.6
    assert cache.write_idle(0.25, most=1) == 1  # at most a slice
    assert cache.write_idle(0.25, most=10) == 1
    assert [key for key, _ in table.writes] == [b"b", b"c", b"a"] and len(cache) == 0
    assert cache.get(b"a", table.read) == user("a", 4) and table.reads == 0  # still decoded in memory
    cache.suspend()
    cache.put(b"d", user("d", 5), 5)
    now[0] = 200.0
    assert cache.write_idle(0.25, most=10) == 0  # nothing while a rebalance is on


def test_a_commit_writes_the_values_pending_when_its_offsets_were_picked_newest_version_first_come() -> None:
    table = Table()
    cache = StateCache(table.write, limit=100)
    for name in ("a", "b", "c"):
        cache.put(name.encode(), user(name, 1), 1)
    keys, epoch = cache.pending_keys(), cache.epoch  # the commit picked its offsets here
    assert cache.write_listed(keys[:1]) == 1  # a first slice; the fetch loop runs on:
    cache.put(b"b", user("b", 2), 2)  # changed again: written as it is now, ahead of the offsets (marks)
    cache.put(b"d", user("d", 2), 2)  # pending only since: not this commit's to write
    assert cache.write_idle(0.0, most=1) == 1  # c written between commits meanwhile: not again
    assert cache.write_listed(keys[1:]) == 1 and cache.epoch == epoch
    assert [key for key, _ in table.writes] == [b"a", b"c", b"b"] and cache.pending_keys() == [b"d"]
    assert StoredUser.from_bytes(table.values[b"b"]) == user("b", 2)


def test_a_rebalance_between_slices_is_seen_and_nothing_more_is_written() -> None:
    table = Table()
    cache = StateCache(table.write, limit=100)
    cache.put(b"a", user("a", 1), 1)
    cache.put(b"b", user("b", 1), 1)
    keys, epoch = cache.pending_keys(), cache.epoch
    cache.write_listed(keys[:1])
    cache.suspend()  # revoked between two slices: b's value is gone, and its event read again
    assert cache.epoch != epoch and cache.write_listed(keys[1:]) == 0
    assert [key for key, _ in table.writes] == [b"a"]
