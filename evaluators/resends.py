"""Upstream resends: the same event id in a new message changes nothing within a window of record time.

A Kafka redelivery (the same message read again) is recognised by where it was read, however old
(the worker's stored value keeps the last offset applied per input partition). This module is for
the other kind of duplicate: an upstream service producing the same event again, as a new message.
Such a copy changes nothing when the user already had an event with that id whose *record time*
(the Kafka record timestamp, so a replay decides as the live run did) lies within ``window_ms`` of
the copy's, in either direction. An older resend is counted again.

The ids are kept apart from the engine state, so a user's stored value does not grow with traffic:
one user's ids are grouped into buckets of ``window_ms / 4`` of record time, and a bucket into
chunks of at most :data:`CHUNK_IDS` ids, each chunk a packed byte string (:data:`ENTRY` per id)
under its own key (``bucket * CHUNKS + n``). Only the newest chunk of the bucket an event falls in
changes with it, so a worker writes one small value (at most about 1.3 KB) per active user per
commit however busy the user, and buckets older than the retention (twice the window before the
user's newest bucket, so timestamps that drift between partitions by up to a window still meet
their twin) are dropped whole.

Each entry also carries a *tag* of the input position the id was read at. An entry with the very
same tag is the same message, not a resend: a redelivered message whose id was stored before a
crash, while the state it changed was not, must be evaluated again, not dropped.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from hashlib import blake2b
from typing import NamedTuple

DEFAULT_WINDOW_MS = 24 * 3600 * 1000
"""The default resend window: 24 hours of record time."""

ENTRY = struct.Struct(">8sqI")
"""One remembered id: 8-byte BLAKE2b digest of the event id, record time (ms), position tag."""

CHUNK_IDS = 64
"""Ids per chunk: a chunk is written again at every commit until it is full."""

CHUNKS = 1024
"""Chunk keys per bucket (``bucket * CHUNKS + n``); past the last, that chunk keeps growing."""

DIGEST_BYTES = 8
"""Event ids are remembered as 64-bit digests: ~1e-16 chance per event that a new id looks seen."""


def event_digest(event_id: str) -> bytes:
    """The 8-byte digest under which an event id is remembered."""
    return blake2b(event_id.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


def position_tag(topic: str, partition: int, offset: int) -> int:
    """A 32-bit tag of an input position (where a message was first read)."""
    return zlib.crc32(f"{topic}\x00{partition}\x00{offset}".encode())


class ResendWindow:
    """How long a resend is recognised, in record time, and how ids are bucketed for it."""

    __slots__ = ("bucket_ms", "kept_buckets", "window_ms")

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS) -> None:
        if window_ms < 0:
            raise ValueError(f"the resend window must be >= 0 ms, got {window_ms}")
        self.window_ms = window_ms
        self.bucket_ms = max(1, window_ms // 4)
        self.kept_buckets = 2 * window_ms // self.bucket_ms + 1  # buckets kept before the newest

    def bucket(self, at_ms: int) -> int:
        return at_ms // self.bucket_ms

    def nearby(self, at_ms: int) -> tuple[int, int]:
        """The first and last bucket that can hold an id within the window of ``at_ms``."""
        return (at_ms - self.window_ms) // self.bucket_ms, (at_ms + self.window_ms) // self.bucket_ms

    def kept_from(self, newest_bucket: int) -> int:
        """The oldest bucket kept when ``newest_bucket`` is the user's newest: two windows back."""
        return newest_bucket - self.kept_buckets

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResendWindow) and other.window_ms == self.window_ms

    def __hash__(self) -> int:
        return hash(self.window_ms)

    def __repr__(self) -> str:
        return f"ResendWindow(window_ms={self.window_ms})"


def bucket_of(key: int) -> int:
    """The bucket a chunk key belongs to."""
    return key // CHUNKS


class SeenIds:
    """One user's remembered event ids: chunk key (``bucket * CHUNKS + n``) -> packed :data:`ENTRY` records.

    Immutable: :meth:`with_id` returns a new value sharing the untouched buckets.

    Most events are not resends, and scanning every chunk for a digest costs about 8 ns per id held
    (17 us per event for a user with 2,000 ids in the window). So the digests held are also kept as a
    set, built on the first :meth:`resent` and handed on by :meth:`with_id` to the value it returns
    (which then owns it, one digest more; the value it came from builds its own again if it is asked).
    A digest not in the set was not seen; one in it is looked up in the chunks as before."""

    __slots__ = ("_digests", "buckets")

    def __init__(self, buckets: Mapping[int, bytes] | None = None) -> None:
        self.buckets: Mapping[int, bytes] = buckets if buckets is not None else {}
        self._digests: set[bytes] | None = None  # exactly the digests in ``buckets``, once built

    def _held(self) -> set[bytes]:
        digests = self._digests
        if digests is None:
            size = ENTRY.size
            digests = self._digests = {packed[at : at + DIGEST_BYTES] for packed in self.buckets.values()
                                       for at in range(0, len(packed), size)}
        return digests

    def resent(self, window: ResendWindow, digest: bytes, at_ms: int, tag: int | None = None) -> bool:
        """Whether an event with ``digest`` at record time ``at_ms`` is a resend of one remembered:
        the same digest within the window, read at another position (``tag`` None: any position)."""
        if digest not in self._held():
            return False
        size = ENTRY.size
        first, last = window.nearby(at_ms)
        first, last = first * CHUNKS, last * CHUNKS + CHUNKS - 1
        for key, packed in self.buckets.items():
            if key < first or key > last:
                continue
            at = packed.find(digest)
            while at != -1:
                if at % size == 0:  # a match across two entries is not a match
                    _, when, seen_tag = ENTRY.unpack_from(packed, at)
                    if abs(when - at_ms) <= window.window_ms and (tag is None or seen_tag != tag):
                        return True
                at = packed.find(digest, at + 1)
        return False

    def remembers(self, digest: bytes, tag: int) -> bool:
        """Whether an entry of ``digest`` read at ``tag`` is kept (the very same message)."""
        size = ENTRY.size
        for packed in self.buckets.values():
            at = packed.find(digest)
            while at != -1:
                if at % size == 0 and ENTRY.unpack_from(packed, at)[2] == tag:
                    return True
                at = packed.find(digest, at + 1)
        return False

    def with_id(self, window: ResendWindow, digest: bytes, at_ms: int, tag: int = 0) -> tuple[SeenIds, Change]:
        """These ids and one more; returns the new value and the chunks it wrote and dropped."""
        base = window.bucket(at_ms) * CHUNKS
        newest = base - 1  # the bucket's newest chunk key, if it has one
        for key in self.buckets:
            if newest < key < base + CHUNKS:
                newest = key
        entry = ENTRY.pack(digest, at_ms, tag)
        buckets = dict(self.buckets)
        if newest >= base:  # the common case: the bucket exists, so nothing to drop
            packed = buckets[newest]
            if len(packed) < CHUNK_IDS * ENTRY.size or newest == base + CHUNKS - 1:
                buckets[newest] = packed + entry
                return self._handed_on(SeenIds(buckets), digest), Change((newest,), ())
            buckets[newest + 1] = entry  # the newest chunk is full: start the next one
            return self._handed_on(SeenIds(buckets), digest), Change((newest + 1,), ())
        buckets[base] = entry
        kept = window.kept_from(bucket_of(max(buckets))) * CHUNKS
        dropped = tuple(key for key in buckets if key < kept)
        for old in dropped:
            del buckets[old]
        written = (base,) if base >= kept else ()
        return SeenIds(buckets), Change(written, tuple(key for key in dropped if key in self.buckets))

    def _handed_on(self, successor: SeenIds, digest: bytes) -> SeenIds:
        """``successor`` (these ids and ``digest``, none dropped) takes over the set of digests."""
        digests = self._digests
        if digests is not None:
            self._digests = None
            digests.add(digest)
            successor._digests = digests
        return successor

    def __len__(self) -> int:
        return sum(len(packed) for packed in self.buckets.values()) // ENTRY.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeenIds) and dict(self.buckets) == dict(other.buckets)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SeenIds({len(self)} ids in chunks {sorted(self.buckets)})"


class Change(NamedTuple):
    """What :meth:`SeenIds.with_id` changed: chunk keys written (to store again) and dropped (to delete)."""

    written: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
