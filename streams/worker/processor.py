"""One input message in, everything the worker must do about it out — with no Faust and no I/O.

The Faust agent in ``streams/worker/app.py`` only reads the stored state, calls :meth:`EventProcessor.process`
and acts on the :class:`Outcome`: store the new state, produce awards, progress and dead letters, or
forward the message to the repartition topic. Keeping the decision here makes it testable with
literal bytes, and identical between the live worker and replay.

Stored value per user (the table holds bytes): a small header, the engine's ``UserState`` bytes and
a tail with three bounded parts:

* the *input positions* — per input topic the partition and offset of the last event applied to this
  state. A message at or below that offset is a Kafka redelivery (after a crash or rebalance) and is
  recognised exactly, whatever its age; the engine's own window of recent event ids
  (:data:`evaluators.state.RECENT_EVENT_IDS`) is then only needed for upstream resends.
* the *outbox* — the award and nudge records of recent events that made any, by input position. If
  the worker dies after writing state but before its outputs reached Kafka, the redelivered event
  would award (and nudge) nothing; the outbox lets the worker publish the very same records (same
  award_id, same nudge_id) again.
  Entries below the partition's committed offset can never be redelivered and are pruned on
  every write, so the outbox holds only what is still uncommitted (at most :data:`OUTBOX_EVENTS`).
* the user's *latest progress* per (badge, tier) — the record the sink would keep: newest
  ``updated_at``, later records winning ties. A redelivery re-publishes it, so a progress record
  lost in a crash cannot leave its database row behind. Pruned like the outbox: a record made by
  a committed event is durable already.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from evaluators.engine import Engine, Evaluation
from evaluators.state import UserState
from schemas.catalog import Catalog
from schemas.errors import InvalidEventError
from schemas.events import EventEnvelope, parse_event
from schemas.records import AwardRecord, DeadLetterRecord, EventSource, ProgressRecord, supersedes

STORED_FORMAT = 6  # 1: state + outbox; 2: + latest progress; 3: + input positions, outbox by position; 4: + nudges
# 5: outbox records embedded as JSON (not as JSON strings, which escaped every quote); 6: format 5 with
# state and tail compressed (zlib), written when they exceed COMPRESS_OVER bytes
COMPRESS_OVER = 512
OUTBOX_EVENTS = 32  # most award- or nudge-producing events kept per user, even when uncommitted
_HEADER = struct.Struct(">BI")  # format version, length of the state bytes


Position = tuple[str, int, int]
"""Where a message was read: (topic, partition, offset)."""

ProgressKey = tuple[str, "str | None", datetime]
"""(badge_id, tier, updated_at) of a progress record: what coalescing needs without decoding it."""

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
    """What the worker keeps per user: engine state, input positions, outbox and latest progress."""

    state: UserState
    outbox: tuple[OutboxEntry, ...] = ()
    # (badge_id, tier) -> [progress, target, updated_at ISO, position of the event or None]: the
    # newest progress record per key that is not known to be committed.
    progress: dict[tuple[str, str | None], list[Any]] = field(default_factory=dict)
    # topic -> (partition, offset) of the last message applied to this state.
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        state = self.state.to_bytes()
        topics = {topic: index for index, topic in enumerate(self.positions)}

        def where(position: Position | None) -> list[Any]:
            # (topic index in "h", offset): the partition of a topic is the one in "h".
            if position is None or position[0] not in topics:
                return []
            return [topics[position[0]], position[2]]

        tail = orjson.dumps({
            "h": [[topic, partition, offset] for topic, (partition, offset) in self.positions.items()],
            "o": [[e.event_id, [orjson.Fragment(a) for a in e.awards], [orjson.Fragment(n) for n in e.nudges],
                   *where(e.position)] for e in self.outbox],
            "p": [[badge_id, tier, *value[:3], *where(value[3] if len(value) > 3 else None)]
                  for (badge_id, tier), value in self.progress.items()],
        })
        body = state + tail
        if len(body) > COMPRESS_OVER:
            # Award and progress records repeat most of their text: a mature user's value shrinks
            # 3-4x (written once per commit, so the ~0.1 ms this costs is paid rarely).
            return _HEADER.pack(6, len(state)) + zlib.compress(body, 6)
        return _HEADER.pack(5, len(state)) + body

    @classmethod
    def from_bytes(cls, raw: bytes) -> StoredUser:
        version, length = _HEADER.unpack_from(raw)
        if not 1 <= version <= STORED_FORMAT:
            raise ValueError(f"stored user state has format {version}, this worker reads 1..{STORED_FORMAT}")
        start = _HEADER.size
        if version == 6:
            raw, start, version = zlib.decompress(raw[start:]), 0, 5
        # Before format 5 an outbox record was a JSON string; since, the record itself.
        record: Callable[[Any], bytes] = orjson.dumps if version >= 5 else str.encode
        state = UserState.from_bytes(raw[start : start + length])
        tail_raw = raw[start + length :]
        tail = orjson.loads(tail_raw) if tail_raw else None
        if version == 1:
            tail = {"o": tail or []}
        elif tail is None:
            tail = {}
        positions = {topic: (partition, offset) for topic, partition, offset in tail.get("h", ())}
        topics = [(topic, partition) for topic, (partition, _) in positions.items()]

        def where(rest: list[Any]) -> Position | None:
            if len(rest) != 2:
                return None
            topic, partition = topics[rest[0]]
            return (topic, partition, rest[1])

        # Format 4 added the nudges as the third field of an outbox entry.
        nudged = 1 if version >= 4 else 0
        outbox = tuple(OutboxEntry(entry[0], tuple(record(a) for a in entry[1]), where(entry[2 + nudged:]),
                                   tuple(record(n) for n in entry[2]) if nudged else ())
                       for entry in tail.get("o", ()))
        progress = {(entry[0], entry[1]): [*entry[2:5], where(entry[5:])] for entry in tail.get("p", ())}
        return cls(state=state, outbox=outbox, progress=progress, positions=positions)

    def applied(self, position: Position) -> bool:
        """Whether the message at ``position`` was already applied to this state (a redelivery)."""
        topic, partition, offset = position
        last = self.positions.get(topic)
        return last is not None and last[0] == partition and offset <= last[1]

    def with_position(self, position: Position | None) -> dict[str, tuple[int, int]]:
        if position is None:
            return self.positions
        topic, partition, offset = position
        return {**self.positions, topic: (partition, offset)}

    def progress_records(self) -> list[bytes]:
        """The latest progress record of every (badge, tier), as first published."""
        return [progress_bytes(ProgressRecord(user_id=self.state.user_id, badge_id=badge_id, tier=tier,
                                              progress=value[0], target=value[1], updated_at=value[2]))
                for (badge_id, tier), value in self.progress.items()]

    def progress_keys(self) -> list[ProgressKey]:
        """(badge_id, tier, updated_at) of each of :meth:`progress_records`, in the same order."""
        return [(badge_id, tier, datetime.fromisoformat(value[2])) for (badge_id, tier), value in self.progress.items()]

    def with_progress(self, records: Sequence[ProgressRecord],
                      position: Position | None = None) -> dict[tuple[str, str | None], list[Any]]:
        """The latest-progress map after ``records``, by the sink's rule (newest updated_at, ties: later)."""
        if not records:
            return self.progress
        latest = dict(self.progress)
        for record in records:
            key = (record.badge_id, record.tier)
            current = latest.get(key)
            if supersedes(record.updated_at, datetime.fromisoformat(current[2]) if current is not None else None):
                latest[key] = [record.progress, record.target, record.updated_at.isoformat(), position]
        return latest

    def pruned(self, committed: CommittedOffset) -> StoredUser:
        """Without the outbox and progress entries of committed events: they can never be
        redelivered, and keeping them would only make every write of this user larger. (The worker
        prunes when it writes a value, once per commit, rather than on every event.)"""
        outbox = tuple(entry for entry in self.outbox if not _committed(entry.position, committed))
        progress = {key: value for key, value in self.progress.items() if not _committed(value[3], committed)}
        if len(outbox) == len(self.outbox) and len(progress) == len(self.progress):
            return self
        return StoredUser(state=self.state, outbox=outbox, progress=progress, positions=self.positions)

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


@dataclass
class Outcome:
    """What the worker must do for one input message."""

    new_user: StoredUser | None = None  # None: leave the stored state alone
    awards: list[bytes] = field(default_factory=list)
    progress: list[bytes] = field(default_factory=list)
    progress_keys: list[ProgressKey] = field(default_factory=list)  # one per ``progress`` record
    nudges: list[bytes] = field(default_factory=list)
    dead_letter: bytes | None = None
    status: str = "processed"  # processed | duplicate | unmatched | dead_letter
    evaluation: Evaluation | None = None
    award_records: tuple[AwardRecord, ...] = ()

    @property
    def new_state(self) -> bytes | None:
        """The new stored value as bytes (encoded on demand: the worker encodes a user once per commit)."""
        return self.new_user.to_bytes() if self.new_user is not None else None


def dead_letter(raw_key: bytes | None, raw_value: bytes | None, topic: str, partition: int, offset: int,
                error: InvalidEventError, failed_at: datetime | None = None) -> bytes:
    """The worker's dead letter for one input message, as bytes for the DLQ topic."""
    record = DeadLetterRecord.of(raw_key, raw_value, topic, partition, offset, error.code, error.reason,
                                 failed_at=failed_at)
    return record.model_dump_json().encode()


def award_bytes(record: AwardRecord) -> bytes:
    return record.model_dump_json().encode()


def progress_bytes(record: ProgressRecord) -> bytes:
    return record.model_dump_json().encode()


class EventProcessor:
    """Decode, validate and evaluate one message against a user's stored state."""

    def __init__(self, catalog: Catalog, engine: Engine) -> None:
        self.catalog = catalog
        self.engine = engine

    def decode(self, raw_value: bytes | None) -> EventEnvelope:
        return parse_event(raw_value, self.catalog)

    def process(self, raw_key: bytes | None, raw_value: bytes | None, topic: str, partition: int, offset: int,
                stored: bytes | None) -> Outcome:
        """Decode and evaluate one whole message whose state is ``stored``: what the agent does, in one call."""
        try:
            event = self.decode(raw_value)
        except InvalidEventError as exc:
            return Outcome(status="dead_letter",
                           dead_letter=dead_letter(raw_key, raw_value, topic, partition, offset, exc))
        return self.evaluate(event, stored, (topic, partition, offset))

    def evaluate(self, event: EventEnvelope, stored: bytes | None, position: Position | None = None,
                 committed: CommittedOffset | None = None, source: EventSource | None = None) -> Outcome:
        """Evaluate ``event`` against the user's ``stored`` value.

        ``position``: where the message was read; a message at or before the last position applied
        to this user is a redelivery and changes nothing. ``committed`` prunes the outbox.
        ``source``: the awards' evidence, where the event was first read (default: ``position``)."""
        return self.evaluate_user(event, StoredUser.from_bytes(stored) if stored else None, position, committed,
                                  source)

    def evaluate_user(self, event: EventEnvelope, user: StoredUser | None, position: Position | None = None,
                      committed: CommittedOffset | None = None, source: EventSource | None = None) -> Outcome:
        """:meth:`evaluate` on a decoded stored value (None: a user not seen before); the new value is
        ``Outcome.new_user``. Stored values are never changed in place, so the worker can keep them
        decoded between events."""
        previous = user if user is not None else StoredUser(UserState.empty(event.user_id))
        if position is not None and previous.applied(position):
            # A Kafka redelivery of an event already in this state: re-publish what it awarded and
            # the latest progress, in case they were lost in a crash after the state was written
            # (the sink absorbs repeats).
            entry = previous.entry_at(position) or previous.entry_for(event.event_id)
            return Outcome(status="duplicate", awards=list(entry.awards) if entry else [],
                           nudges=list(entry.nudges) if entry else [], progress=previous.progress_records(),
                           progress_keys=previous.progress_keys())
        evaluation = self.engine.evaluate(previous.state, event, source=source)
        if source is None and position is not None and evaluation.awards:
            # The awards' evidence is where the event was read; built without validation (a Kafka
            # position is well-typed), and only for the events that award something.
            read_at = EventSource.model_construct(topic=position[0], partition=position[1], offset=position[2])
            evaluation = replace(evaluation, awards=self.engine.with_source(evaluation.awards, read_at))
        outcome = Outcome(evaluation=evaluation)
        if evaluation.duplicate:
            # The same event id again under a new position (an upstream resend): nothing changes.
            # Its awards are re-published if still at hand; without a position this may also be a
            # redelivery, so the latest progress goes out again too.
            outcome.status = "duplicate"
            entry = previous.entry_for(event.event_id)
            if entry is not None:
                outcome.awards, outcome.nudges = list(entry.awards), list(entry.nudges)
            if position is None:
                outcome.progress, outcome.progress_keys = previous.progress_records(), previous.progress_keys()
            return outcome
        if not evaluation.matched:
            # No badge listens to this type: counted by the caller, no state write needed.
            outcome.status = "unmatched"
            return outcome
        outcome.award_records = evaluation.awards
        outcome.awards = [award_bytes(a) for a in evaluation.awards]
        outcome.progress = [progress_bytes(p) for p in evaluation.progress]
        outcome.progress_keys = [(p.badge_id, p.tier, p.updated_at) for p in evaluation.progress]
        outcome.nudges = [n.model_dump_json().encode() for n in evaluation.nudges]
        kept = previous.pruned(committed) if committed is not None else previous
        outcome.new_user = StoredUser(
            state=evaluation.state,
            outbox=kept.with_outputs(event.event_id, outcome.awards, outcome.nudges, position),
            progress=kept.with_progress(evaluation.progress, position),
            positions=kept.with_position(position),
        )
        return outcome
