"""Users' stored values between commits: decoded in memory, written to the state table once per commit.

Without it every event decoded its user's stored value, encoded the new one and wrote it to
RocksDB and the changelog topic, even when the same user's next event came a millisecond later.
:class:`StateCache` keeps each user's newest value decoded, and writes a user's value to the table
only when

* a commit is being made: once the consumer has picked the offsets to commit, the values pending at
  that moment (:meth:`pending_keys`) are written a slice at a time (:meth:`write_listed`, from
  streams/worker/app.py), with the fetch loop running between slices, before the producers are
  flushed and the offsets committed (streams/worker/faust_seam.py), or
* more than ``limit`` users are waiting, the oldest first (:meth:`put`), so memory and the work left
  for a commit stay bounded, or
* its value has not changed for a while (:meth:`write_idle`, called between events), so a commit
  has only the values that changed just before it to write.

What "written" means is :class:`streams.worker.state_writer.StateWriter`'s: staged for the commit,
whose changelog records are sent before the producer flush and whose RocksDB write batch follows it.
Why no event is lost: the offsets a commit picks cover only events evaluated by then, whose values
were pending (or already written) at that moment; they are committed only after every one of those
values was written and the producer flush made the changelog records (and the outputs) durable. A
value changed again between two slices is written as it is then: ahead of the committed offsets,
which the stored input marks absorb, as for a value written past the limit. If a rebalance drops
the pending values between two slices (:attr:`epoch` changes), nothing is committed. A crash loses
pending values only of events whose offsets were not committed yet; they are read again and
evaluated against the last value written, as after any crash.

A rebalance discards everything (:meth:`suspend` when partitions are revoked, :meth:`resume` when
new ones are assigned): a revoked partition's uncommitted events are read again by whoever gets it,
and must meet the state as it was written, not a newer value from here. Events Faust still hands the
agent in between are evaluated as usual (against pending values, so consistently), but nothing is
written: their acknowledgements do not count and they are read again too.

Each value is written with the last event that changed it: its partition is the table partition
(one table partition per input partition).

The user's remembered event ids (:mod:`evaluators.resends`) are cached and written the same way, to
the worker's second table: only the buckets an event changed, under the same event, just before
the user's value; buckets past the retention are deleted.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from evaluators.resends import Change, SeenIds
from streams.worker.stored import StoredUser

Write = Callable[[bytes, bytes, Any], None]
"""Write ``(key, value, event)`` to the state table, with ``event`` as the current event."""

WriteIds = Callable[[bytes, "bytes | None", Any], None]
"""Write ``(key, value, event)`` to the resend table (value None: delete the key)."""

_BUCKET = struct.Struct(">q")


def ids_key(user_key: bytes, bucket: int) -> bytes:
    """The resend table's key of one bucket of a user's ids (user ids are UTF-8: no other user's key
    can continue with a NUL byte)."""
    return user_key + b"\x00" + _BUCKET.pack(bucket)


@dataclass(slots=True)
class _Pending:
    user: StoredUser
    event: Any
    since: float  # when it was put (the clock's time)
    written: dict[int, None] = field(default_factory=dict)  # resend chunk keys to write, in order
    dropped: dict[int, None] = field(default_factory=dict)  # resend chunk keys to delete


class StateCache:
    def __init__(self, write: Write, limit: int, prune: Callable[[StoredUser], StoredUser] | None = None,
                 write_ids: WriteIds | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self._clock = clock
        self._write_ids = write_ids
        self._prune = prune  # applied to a value when it is written (drops what is committed)
        self.limit = limit
        #: key -> the newest value, the event that made it and its unwritten resend buckets;
        #: insertion order is oldest first. (OrderedDicts: both are queues, and a plain dict finds
        #: its first key by stepping over every slot deleted before it, ~1 us at 2,000 entries.)
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        #: values already written, kept decoded for the next event of the same user
        self._clean: OrderedDict[bytes, StoredUser] = OrderedDict()
        #: remembered ids of the users pending or clean
        self._seen: dict[bytes, SeenIds] = {}
        self._suspended = False
        self.writes = 0  # table writes made
        #: Changes whenever the pending values are dropped (:meth:`drop`, in a rebalance): a commit that
        #: writes in slices sees whether what it set out to write is still there.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, key: bytes, read: Callable[[bytes], bytes | None]) -> StoredUser | None:
        """The user's newest value: pending, cached, or ``read`` from the table and decoded."""
        pending = self._pending.get(key)
        if pending is not None:
            return pending.user
        user = self._clean.get(key)
        if user is not None:
            return user
        raw = read(key)
        if raw is None:
            return None
        user = StoredUser.from_bytes(raw)
        self._remember(key, user)
        return user

    def seen(self, key: bytes, user: StoredUser | None, read: Callable[[bytes], bytes | None]) -> SeenIds:
        """The user's remembered ids: cached, or the chunks ``user`` lists ``read`` from the resend table."""
        seen = self._seen.get(key)
        if seen is None:
            buckets = {}
            for bucket in user.id_buckets if user is not None else ():
                packed = read(ids_key(key, bucket))
                if packed:
                    buckets[bucket] = packed
            seen = SeenIds(buckets)
            if key in self._pending or key in self._clean:
                self._seen[key] = seen
        return seen

    def put(self, key: bytes, user: StoredUser, event: Any, seen: SeenIds | None = None,
            change: Change | None = None) -> None:
        """``user`` (and ``seen``, changed by ``change``) is the new value of ``key``, made by ``event``;
        written at once when ``limit`` is 0."""
        previous = self._pending.pop(key, None)
        self._clean.pop(key, None)
        pending = _Pending(user, event, self._clock())
        if previous is not None:
            pending.written, pending.dropped = previous.written, previous.dropped
        if seen is not None:
            self._seen[key] = seen
        if change is not None:
            for bucket in change.written:
                pending.written[bucket] = None
                pending.dropped.pop(bucket, None)
            for bucket in change.dropped:
                pending.dropped[bucket] = None
                pending.written.pop(bucket, None)
        self._pending[key] = pending
        while len(self._pending) > self.limit and not self._suspended:
            self._flush_one(next(iter(self._pending)))

    def write_all(self) -> int:
        """Write every pending value to the table at once; returns how many. Nothing while a rebalance
        is on. (A commit writes in slices instead: :meth:`pending_keys`, :meth:`write_listed`.)"""
        return self.write_listed(self.pending_keys())

    def pending_keys(self) -> list[bytes]:
        """The keys of the values pending now, oldest change first."""
        return list(self._pending)

    def write_listed(self, keys: Iterable[bytes]) -> int:
        """Write those of ``keys`` whose values are still pending (the others were written since, past
        the limit or idle); returns how many. Nothing while a rebalance is on."""
        if self._suspended:
            return 0
        written = 0
        pending = self._pending
        for key in keys:
            if key in pending:
                self._flush_one(key)
                written += 1
        return written

    def write_idle(self, idle_s: float, most: int) -> int:
        """Write the pending values unchanged for ``idle_s`` seconds, oldest first, at most ``most``;
        returns how many. Between commits, a slice at a time: what a commit writes is then only what
        changed just before it. A value written early and changed again is written again at the
        commit, as past the limit."""
        if self._suspended:
            return 0
        before = self._clock() - idle_s
        written = 0
        pending = self._pending
        while pending and written < most:
            key = next(iter(pending))
            if pending[key].since > before:
                break
            self._flush_one(key)
            written += 1
        return written

    def _flush_one(self, key: bytes) -> None:
        pending = self._pending[key]
        user = pending.user
        if self._prune is not None:
            user = self._prune(user)
        if self._write_ids is not None and (pending.written or pending.dropped):
            buckets = self._seen[key].buckets
            for bucket in pending.written:
                self._write_ids(ids_key(key, bucket), buckets.get(bucket), pending.event)
            for bucket in pending.dropped:
                self._write_ids(ids_key(key, bucket), None, pending.event)
            pending.written, pending.dropped = {}, {}  # written: a retry after a failure below skips them
        self._write(key, user.to_bytes(), pending.event)  # raises: the value stays pending, no commit follows
        del self._pending[key]
        self.writes += 1
        self._remember(key, user)

    def _remember(self, key: bytes, user: StoredUser) -> None:
        clean = self._clean
        clean[key] = user
        if len(clean) > self.limit:
            oldest, _ = clean.popitem(last=False)
            if oldest not in self._pending:
                self._seen.pop(oldest, None)

    def drop(self) -> int:
        """Forget everything (a rebalance began); returns how many pending values were discarded."""
        discarded = len(self._pending)
        self.epoch += 1
        self._pending.clear()
        self._clean.clear()
        self._seen.clear()
        return discarded

    def suspend(self) -> int:
        """A rebalance began: :meth:`drop`, and write nothing until :meth:`resume`."""
        self._suspended = True
        return self.drop()

    def resume(self) -> None:
        """Partitions are assigned: start clean (events since the last commit are read again)."""
        self.drop()
        self._suspended = False
