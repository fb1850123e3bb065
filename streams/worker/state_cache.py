"""Users' stored values between commits: decoded in memory, written to the state table once per commit.

Without it every event decoded its user's stored value, encoded the new one and wrote it to
RocksDB and the changelog topic, even when the same user's next event came a millisecond later.
:class:`StateCache` keeps each user's newest value decoded, and writes a user's value to the table
only when

* a commit is about to be made (:meth:`write_all`, called by the consumer before it flushes the
  producers and commits input offsets: streams/worker/consumer.py), or
* more than ``limit`` users are waiting, the oldest first (:meth:`put`), so memory and the work left
  for a commit stay bounded.

Why no event is lost: an input offset is committed only after ``write_all`` wrote every pending
value and the producer flush made the changelog records (and the outputs) durable. A crash loses
pending values only of events whose offsets were not committed yet; they are read again and
evaluated against the last value written, as after any crash.

A rebalance discards everything (:meth:`suspend` when partitions are revoked, :meth:`resume` when
new ones are assigned): a revoked partition's uncommitted events are read again by whoever gets it,
and must meet the state as it was written, not a newer value from here. Events Faust still hands the
agent in between are evaluated as usual (against pending values, so consistently), but nothing is
written: their acknowledgements do not count and they are read again too.

Each value is written under the context of the last event that changed it: Faust's RocksDB store
and changelog take the partition from the current event (one table partition per input partition).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.worker.processor import StoredUser

Write = Callable[[bytes, bytes, Any], None]
"""Write ``(key, value, event)`` to the table, with ``event`` as the current event."""


class StateCache:
    def __init__(self, write: Write, limit: int, prune: Callable[[StoredUser], StoredUser] | None = None) -> None:
        self._write = write
        self._prune = prune  # applied to a value when it is written (drops what is committed)
        self.limit = limit
        #: key -> (newest value, the event that made it); insertion order is oldest first
        self._pending: dict[bytes, tuple[StoredUser, Any]] = {}
        #: values already written, kept decoded for the next event of the same user
        self._clean: dict[bytes, StoredUser] = {}
        self._suspended = False
        self.writes = 0  # table writes made
        self.absorbed = 0  # values replaced before they were written: table writes saved

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, key: bytes, read: Callable[[bytes], bytes | None]) -> StoredUser | None:
        """The user's newest value: pending, cached, or ``read`` from the table and decoded."""
        pending = self._pending.get(key)
        if pending is not None:
            return pending[0]
        user = self._clean.get(key)
        if user is not None:
            return user
        raw = read(key)
        if raw is None:
            return None
        user = StoredUser.from_bytes(raw)
        self._remember(key, user)
        return user

    def put(self, key: bytes, user: StoredUser, event: Any) -> None:
        """``user`` is the new value of ``key``, made by ``event``; written at once when ``limit`` is 0."""
        if self._pending.pop(key, None) is not None:
            self.absorbed += 1
        self._clean.pop(key, None)
        self._pending[key] = (user, event)
        while len(self._pending) > self.limit and not self._suspended:
            oldest = next(iter(self._pending))
            self._flush_one(oldest)

    def write_all(self) -> int:
        """Write every pending value to the table; returns how many. Nothing while a rebalance is on."""
        if self._suspended:
            return 0
        written = 0
        while self._pending:
            self._flush_one(next(iter(self._pending)))
            written += 1
        return written

    def _flush_one(self, key: bytes) -> None:
        user, event = self._pending[key]
        if self._prune is not None:
            user = self._prune(user)
        self._write(key, user.to_bytes(), event)  # raises: the value stays pending, no commit follows
        del self._pending[key]
        self.writes += 1
        self._remember(key, user)

    def _remember(self, key: bytes, user: StoredUser) -> None:
        clean = self._clean
        clean[key] = user
        if len(clean) > self.limit:
            del clean[next(iter(clean))]

    def drop(self) -> int:
        """Forget everything (a rebalance began); returns how many pending values were discarded."""
        discarded = len(self._pending)
        self._pending.clear()
        self._clean.clear()
        return discarded

    def suspend(self) -> int:
        """A rebalance began: :meth:`drop`, and write nothing until :meth:`resume`."""
        self._suspended = True
        return self.drop()

    def resume(self) -> None:
        """Partitions are assigned: start clean (events since the last commit are read again)."""
        self.drop()
        self._suspended = False
