"""The worker's stored value per user, and how it is read and written as bytes — no Faust, no I/O.

A small header, the engine's ``UserState`` bytes and a tail with bounded parts:

* the *input marks* — per input partition an event came from (its original topic and partition,
  and whether it came directly or through the re-key topic) the offset of the last event applied.
  Each of these paths delivers one partition's events in offset order (forwarding to the re-key
  topic keeps it: one idempotent producer, in the order read), so a message at or below its mark
  is a Kafka redelivery, recognised exactly, whatever its age — also a re-keyed copy forwarded
  again after a crash, which carries the same original position. At most two marks per input
  partition.
* the *resend buckets* — which buckets of remembered event ids (:mod:`evaluators.resends`) this
  user has in the worker's second table; the ids themselves live there, not here.
* the *outbox* — the award and nudge records of recent events that made any, with where they were
  read. If the worker dies after writing state but before its outputs reached Kafka, the
  redelivered event would award (and nudge) nothing; the outbox lets the worker publish the very
  same records (same award_id, same nudge_id) again. Entries below the committed offset of where
  they were read can never be redelivered and are pruned when the value is written.
* the user's *latest progress* per (badge, tier) — the record the sink would keep: newest
  ``updated_at``, later records winning ties. A redelivery re-publishes it, so a progress record
  lost in a crash cannot leave its database row behind. Pruned like the outbox.

Older stored formats are read through one chain of small upgrades (:func:`_upgrade_tail`);
docs/worker-state.md lists them.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import zstandard

from evaluators.engine import ProgressEntry
from evaluators.resends import CHUNKS, bucket_of, position_tag
from evaluators.state import UserState
from schemas.records import EventSource, supersedes

STORED_FORMAT = 7
COMPRESSED_ZLIB = 8  # a format-7 value whose state and tail are zlib-compressed (written before format 9)
COMPRESSED = 9  # a format-7 value whose state and tail are one zstd frame (see to_bytes)
COMPRESS_OVER = 512
ZSTD_LEVEL = 3
# zstandard's (de)compressors are reused (a new one per value costs as much as compressing it); they
# are not thread-safe, and each thread that encodes or decodes values gets its own.
_zstd = threading.local()
OUTBOX_EVENTS = 32  # most award- or nudge-producing events kept per user, even when uncommitted
_HEADER = struct.Struct(">BI")  # format version, length of the state bytes


Position = tuple[str, int, int]
"""Where a message was read: (topic, partition, offset)."""


class Origin(NamedTuple):
    """Where an event was first read, and whether it reached the evaluation through the re-key topic."""

    topic: str
    partition: int
    offset: int
    rekeyed: bool = False

    @property
    def mark(self) -> tuple[str, int, bool]:
        """The input path this event came along: its marks are comparable, offsets on it only grow."""
        return (self.topic, self.partition, self.rekeyed)

    @property
    def tag(self) -> int:
        return position_tag(self.topic, self.partition, self.offset)

    def evidence(self) -> EventSource:
        # Built without validation: a position Kafka gave us is well-typed.
        return EventSource.model_construct(topic=self.topic, partition=self.partition, offset=self.offset)


ProgressKey = tuple[str, "str | None"]
"""(badge_id, tier) of a progress record."""


@dataclass(frozen=True, slots=True)
class ProgressChange:
    """Progress records to publish: the ``keys`` of one user's ``latest`` progress map (the stored
    value's) that changed. Their bytes are built only when sent (:meth:`records`): coalescing drops
    most of them before that, and the map already holds what the sink keeps per key."""

    user_id: str
    latest: Mapping[ProgressKey, list[Any]]
    keys: tuple[ProgressKey, ...]

    def records(self) -> Iterator[tuple[ProgressKey, bytes]]:
        latest = self.latest
        for key in self.keys:
            yield key, progress_bytes(self.user_id, key, latest[key])


CommittedOffset = Callable[[str, int], "int | None"]
"""The committed offset (the next one to read) of a (topic, partition), or None if unknown."""


@dataclass(frozen=True)
class OutboxEntry:
    """The award and nudge records one event produced, and where that event was read (None: not known)."""

    event_id: str
    awards: tuple[bytes, ...]
    position: Position | None = None
    nudges: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class StoredUser:
    """What the worker keeps per user: engine state, input marks, resend buckets, outbox, latest progress."""

    state: UserState
    outbox: tuple[OutboxEntry, ...] = ()
    # (badge_id, tier) -> [progress, target, updated_at, position read at or None]: the newest
    # progress record per key that is not known to be committed (updated_at a datetime here, ISO
    # 8601 in the stored bytes).
    progress: dict[ProgressKey, list[Any]] = field(default_factory=dict)
    # (original topic, partition, re-keyed) -> offset of the last message applied along that path.
    marks: dict[tuple[str, int, bool], int] = field(default_factory=dict)
    # Keys of this user's chunks of remembered ids in the resend table (evaluators/resends.py).
    id_buckets: tuple[int, ...] = ()

    def to_bytes(self) -> bytes:
        state = self.state.to_bytes()
        topics: dict[str, int] = {}

        def topic(name: str) -> int:
            return topics.setdefault(name, len(topics))

        def where(position: Position | None) -> list[Any]:
            return [] if position is None else [topic(position[0]), position[1], position[2]]

        marks = [[topic(t), partition, int(rekeyed), offset] for (t, partition, rekeyed), offset in self.marks.items()]
        outbox = [[e.event_id, [orjson.Fragment(a) for a in e.awards], [orjson.Fragment(n) for n in e.nudges],
                   *where(e.position)] for e in self.outbox]
        # updated_at as orjson writes a datetime: ISO 8601, what from_bytes reads back (fromisoformat)
        progress = [[badge_id, tier, value[0], value[1], value[2], *where(value[3])]
                    for (badge_id, tier), value in self.progress.items()]
        tail = orjson.dumps({"t": list(topics), "a": marks, "i": _chunk_counts(self.id_buckets), "o": outbox,
                             "p": progress})
        body = state + tail
        if len(body) > COMPRESS_OVER:
            # Award and progress records repeat most of their text: a value shrinks 2.5-4.5x. zstd
            # does it in about a third of zlib's time at the same size (bench/worker/README.md).
            return _HEADER.pack(COMPRESSED, len(state)) + _compressor().compress(body)
        return _HEADER.pack(STORED_FORMAT, len(state)) + body

    @classmethod
    def from_bytes(cls, raw: bytes) -> StoredUser:
        version, length = _HEADER.unpack_from(raw)
        if not 1 <= version <= COMPRESSED:
            raise ValueError(f"stored user state has format {version}, this worker reads 1..{COMPRESSED}")
        start = _HEADER.size
        if version == COMPRESSED:
            raw, start, version = _decompressor().decompress(raw[start:]), 0, STORED_FORMAT
        elif version in (6, COMPRESSED_ZLIB):
            raw, start, version = zlib.decompress(raw[start:]), 0, version - 1
        state = UserState.from_bytes(raw[start : start + length])
        tail_raw = raw[start + length :]
        tail = _upgrade_tail(version, orjson.loads(tail_raw) if tail_raw else None)
        topics: list[str] = tail["t"]

        def where(rest: Sequence[Any]) -> Position | None:
            return (topics[rest[0]], rest[1], rest[2]) if len(rest) == 3 else None

        outbox = tuple(OutboxEntry(e[0], tuple(orjson.dumps(a) for a in e[1]), where(e[3:]),
                                   tuple(orjson.dumps(n) for n in e[2])) for e in tail["o"])
        progress = {(e[0], e[1]): [e[2], e[3], datetime.fromisoformat(e[4]), where(e[5:])] for e in tail["p"]}
        marks = {(topics[t], partition, bool(rekeyed)): offset for t, partition, rekeyed, offset in tail["a"]}
        return cls(state=state, outbox=outbox, progress=progress, marks=marks,
                   id_buckets=tuple(bucket * CHUNKS + n for bucket, count in tail["i"] for n in range(count)))

    def applied(self, origin: Origin) -> bool:
        """Whether the message of ``origin`` was already applied to this state (a redelivery)."""
        last = self.marks.get(origin.mark)
        return last is not None and origin.offset <= last

    def with_mark(self, origin: Origin | None) -> dict[tuple[str, int, bool], int]:
        if origin is None:
            return self.marks
        return {**self.marks, origin.mark: origin.offset}

    def progress_records(self) -> ProgressChange | None:
        """The latest progress record of every (badge, tier), as first published (None: there is none)."""
        if not self.progress:
            return None
        return ProgressChange(self.state.user_id, self.progress, tuple(self.progress))

    def with_progress(self, entries: Sequence[ProgressEntry], updated_at: datetime, position: Position | None = None
                      ) -> tuple[dict[ProgressKey, list[Any]], tuple[ProgressKey, ...]]:
        """The latest-progress map after one event's progress ``entries`` (the engine's
        ``progress_entries``) at ``updated_at``, by the sink's rule (newest updated_at, ties: later),
        and the keys whose record changed (those to publish: the sink would ignore the others)."""
        if not entries:
            return self.progress, ()
        latest = dict(self.progress)
        changed = []  # the engine makes one entry per (badge, tier) and event
        for badge_id, tier, progress, target in entries:
            key = (badge_id, tier)
            current = latest.get(key)
            if current is None or supersedes(updated_at, current[2]):
                latest[key] = [progress, target, updated_at, position]
                changed.append(key)
        return latest, tuple(changed)

    def pruned(self, committed: CommittedOffset) -> StoredUser:
        """Without the outbox and progress entries of committed events: they can never be
        redelivered, and keeping them would only make every write of this user larger. (The worker
        prunes when it writes a value, once per commit, rather than on every event.)"""
        outbox = tuple(entry for entry in self.outbox if not _committed(entry.position, committed))
        progress = {key: value for key, value in self.progress.items() if not _committed(value[3], committed)}
        if len(outbox) == len(self.outbox) and len(progress) == len(self.progress):
            return self
        return replace(self, outbox=outbox, progress=progress)

    def entry_for(self, event_id: str) -> OutboxEntry | None:
        """The outbox entry of the event with this id, if it is still there."""
        for entry in self.outbox:
            if entry.event_id == event_id:
                return entry
        return None

    def entry_at(self, position: Position) -> OutboxEntry | None:
        """The outbox entry of the event read at ``position``, if it is still there."""
        for entry in self.outbox:
            if entry.position == position:
                return entry
        # Written by a worker that did not record positions: the event id is all there is.
        return None

    def awards_for(self, event_id: str) -> tuple[bytes, ...]:
        entry = self.entry_for(event_id)
        return entry.awards if entry is not None else ()

    def awards_at(self, position: Position) -> tuple[bytes, ...]:
        """What the event read at ``position`` awarded, if it is still in the outbox."""
        entry = self.entry_at(position)
        return entry.awards if entry is not None else ()

    def with_outputs(self, event_id: str, awards: Sequence[bytes], nudges: Sequence[bytes] = (),
                     position: Position | None = None) -> tuple[OutboxEntry, ...]:
        """The outbox after an event that made ``awards`` and ``nudges``."""
        kept = [entry for entry in self.outbox if entry.event_id != event_id]
        if awards or nudges:
            kept.append(OutboxEntry(event_id, tuple(awards), position, tuple(nudges)))
        elif len(kept) == len(self.outbox):
            return self.outbox
        return tuple(kept[-OUTBOX_EVENTS:])


def _committed(position: Position | Sequence[Any] | None, committed: CommittedOffset) -> bool:
    if position is None:
        return False
    topic, partition, offset = position
    mark = committed(topic, partition)
    return mark is not None and offset < mark


def _chunk_counts(keys: Sequence[int]) -> list[list[int]]:
    """Chunk keys as ``[bucket, chunks]`` pairs: a bucket's chunks are numbered from 0 without gaps
    (a new one starts when the last is full; buckets are dropped whole), so the stored value holds
    one pair per bucket however busy the user."""
    counts: dict[int, int] = {}
    for key in keys:
        counts[bucket_of(key)] = counts.get(bucket_of(key), 0) + 1
    return [[bucket, count] for bucket, count in sorted(counts.items())]


def _v1_to_v2(tail: Any) -> dict[str, Any]:
    return {"o": tail or []}  # format 1's tail was the outbox alone


def _v3_to_v4(tail: dict[str, Any]) -> dict[str, Any]:
    # Format 4 added an outbox entry's nudges as its third field.
    return {**tail, "o": [[e[0], e[1], [], *e[2:]] for e in tail.get("o", ())]}


def _v4_to_v5(tail: dict[str, Any]) -> dict[str, Any]:
    # Before format 5 an outbox record was a JSON string; since, the record itself.
    return {**tail, "o": [[e[0], [orjson.loads(a) for a in e[1]], [orjson.loads(n) for n in e[2]], *e[3:]]
                          for e in tail.get("o", ())]}


def _v5_to_v7(tail: dict[str, Any]) -> dict[str, Any]:
    # Format 7 keeps marks per input partition and path (format 5: one partition per topic, by where
    # a message was read), names topics once, and lists the user's resend buckets.
    heads = tail.get("h", ())
    partitions = [partition for _, partition, _ in heads]

    def where(rest: Sequence[Any]) -> list[Any]:
        return [rest[0], partitions[rest[0]], rest[1]] if len(rest) == 2 else []

    return {"t": [topic for topic, _, _ in heads],
            "a": [[index, partition, 0, offset] for index, (_, partition, offset) in enumerate(heads)],
            "i": [],
            "o": [[*e[:3], *where(e[3:])] for e in tail.get("o", ())],
            "p": [[*e[:5], *where(e[5:])] for e in tail.get("p", ())]}


_UPGRADES: dict[int, Callable[[Any], Any]] = {1: _v1_to_v2, 2: lambda tail: tail or {}, 3: _v3_to_v4,
                                              4: _v4_to_v5, 5: _v5_to_v7}
"""Format n's tail -> format n+1's (5 -> 7: format 6 is format 5 compressed)."""


def _upgrade_tail(version: int, tail: Any) -> dict[str, Any]:
    """A stored tail of format ``version`` in today's shape, one explicit upgrade after another."""
    while version != STORED_FORMAT:
        tail = _UPGRADES[version](tail)
        version = 7 if version == 5 else version + 1
    upgraded: dict[str, Any] = tail
    return upgraded


def progress_bytes(user_id: str, key: ProgressKey, entry: Sequence[Any]) -> bytes:
    """The progress record (``schemas.records.ProgressRecord``, as pydantic writes it: numbers as
    floats, UTC as ``Z``) of one entry of a latest-progress map, without building the model. (Offsets
    are whole minutes, all that :func:`schemas.events.parse_event` reads: orjson writes no seconds.)"""
    return orjson.dumps({"user_id": user_id, "badge_id": key[0], "tier": key[1], "progress": float(entry[0]),
                         "target": float(entry[1]), "updated_at": entry[2]}, option=orjson.OPT_UTC_Z)


def _compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_zstd, "compressor", None)
    if compressor is None:
        compressor = _zstd.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_zstd, "decompressor", None)
    if decompressor is None:
        decompressor = _zstd.decompressor = zstandard.ZstdDecompressor()
    return decompressor
