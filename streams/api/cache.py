"""A small time-bounded cache for what the read API still computes over many rows, refreshed without a stampede.

Rankings over arbitrary ``since``/``until`` windows are aggregates over the award table: fine once
every few seconds, too slow for every request at scale (bench/api measures them); the catalog changes
only when a sink deploys a new one. (Rarity and the recurring leaderboards come from the sink's
aggregates and are not cached.) A value is
served for ``ttl`` seconds; after that, the first request to see it stale recomputes it while the
others keep getting the stale value, so a refresh never makes 64 concurrent callers wait. Only a
key never computed before makes callers wait (one computes, the rest wait on its lock).
``ttl=0`` recomputes on every call: the tests use it to see every write at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Entry:
    value: Any
    computed_at: float


class TTLCache:
    """``get(key, compute)``: the cached value of ``compute()`` for ``key``, at most ``ttl`` seconds old
    (or a little older while one caller refreshes it). Keeps at most ``max_entries`` keys, least recently used
    dropped first. Thread-safe: FastAPI runs sync endpoints on a thread pool."""

    def __init__(self, ttl: float, *, max_entries: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if self.ttl <= 0:
            return compute()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        if entry is not None:
            if self._clock() - entry.computed_at < self.ttl:
                return entry.value
            if not key_lock.acquire(blocking=False):
                return entry.value  # someone is refreshing it: the stale value meanwhile
        else:
            key_lock.acquire()
        try:
            with self._lock:
                fresh = self._entries.get(key)
            if fresh is not None and self._clock() - fresh.computed_at < self.ttl:
                return fresh.value  # computed by the caller we waited for
            value = compute()
            with self._lock:
                self._entries[key] = _Entry(value, self._clock())
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    dropped, _ = self._entries.popitem(last=False)
                    self._key_locks.pop(dropped, None)
            return value
        finally:
            key_lock.release()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
