"""One input message in, everything the worker must do about it out — with no Faust and no I/O.

The Faust agent in ``streams/worker/app.py`` only reads the stored state, calls :meth:`EventProcessor.process`
and acts on the :class:`Outcome`: store the new state, produce awards, progress and dead letters, or
forward the message to the repartition topic. Keeping the decision here makes it testable with
literal bytes, and identical between the live worker and replay.

Stored value per user (the table holds bytes): a small header, the engine's ``UserState`` bytes, and
an *outbox* — the award records of the last few events that produced awards. If the worker dies
after writing state but before its awards reached Kafka, the redelivered event is a duplicate to
the engine (its event_id is in the state) and would award nothing; the outbox lets the worker
publish the very same award records (same award_id) again instead of losing them. For the same
reason the stored value keeps the user's *latest progress* per (badge, tier) — the record the sink
would keep: newest ``updated_at``, later records winning ties — and a duplicate re-publishes it, so
a progress record lost in a crash cannot leave its database row behind.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from evaluators.engine import Engine, Evaluation
from evaluators.state import UserState
from schemas.catalog import Catalog
from schemas.errors import InvalidEventError
from schemas.events import EventEnvelope, parse_event
from schemas.records import AwardRecord, DeadLetterRecord, ProgressRecord, supersedes

STORED_FORMAT = 2  # 1: state + outbox; 2: state + {"o": outbox, "p": latest progress}
OUTBOX_EVENTS = 32  # award-producing events remembered per user for redelivery after a crash
_HEADER = struct.Struct(">BI")  # format version, length of the state bytes


@dataclass(frozen=True)
class StoredUser:
    """What the worker keeps per user: engine state plus the outbox of recent awards."""

    state: UserState
    outbox: tuple[tuple[str, tuple[bytes, ...]], ...] = ()
    # (badge_id, tier) -> [progress, target, updated_at ISO]: the newest progress record per key.
    progress: dict[tuple[str, str | None], list[Any]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        state = self.state.to_bytes()
        tail = orjson.dumps({
            "o": [[event_id, [a.decode() for a in awards]] for event_id, awards in self.outbox],
            "p": [[badge_id, tier, *value] for (badge_id, tier), value in self.progress.items()],
        })
        return _HEADER.pack(STORED_FORMAT, len(state)) + state + tail

    @classmethod
    def from_bytes(cls, raw: bytes) -> StoredUser:
        version, length = _HEADER.unpack_from(raw)
        if version not in (1, STORED_FORMAT):
            raise ValueError(f"stored user state has format {version}, this worker reads 1..{STORED_FORMAT}")
        start = _HEADER.size
        state = UserState.from_bytes(raw[start : start + length])
        tail_raw = raw[start + length :]
        tail = orjson.loads(tail_raw) if tail_raw else None
        if version == 1:
            tail = {"o": tail or [], "p": []}
        elif tail is None:
            tail = {"o": [], "p": []}
        outbox = tuple((event_id, tuple(a.encode() for a in awards)) for event_id, awards in tail["o"])
        progress = {(badge_id, tier): value for badge_id, tier, *value in tail["p"]}
        return cls(state=state, outbox=outbox, progress=progress)

    def progress_records(self) -> list[bytes]:
        """The latest progress record of every (badge, tier), as first published."""
        return [progress_bytes(ProgressRecord(user_id=self.state.user_id, badge_id=badge_id, tier=tier,
                                              progress=value[0], target=value[1], updated_at=value[2]))
                for (badge_id, tier), value in self.progress.items()]

    def with_progress(self, records: Sequence[ProgressRecord]) -> dict[tuple[str, str | None], list[Any]]:
        """The latest-progress map after ``records``, by the sink's rule (newest updated_at, ties: later)."""
        if not records:
            return self.progress
        latest = dict(self.progress)
        for record in records:
            key = (record.badge_id, record.tier)
            current = latest.get(key)
            if supersedes(record.updated_at, datetime.fromisoformat(current[2]) if current is not None else None):
                latest[key] = [record.progress, record.target, record.updated_at.isoformat()]
        return latest

    def awards_for(self, event_id: str) -> tuple[bytes, ...]:
        for seen_id, awards in self.outbox:
            if seen_id == event_id:
                return awards
        return ()

    def with_awards(self, event_id: str, awards: Sequence[bytes]) -> tuple[tuple[str, tuple[bytes, ...]], ...]:
        if not awards:
            return self.outbox
        kept = [entry for entry in self.outbox if entry[0] != event_id]
        kept.append((event_id, tuple(awards)))
        return tuple(kept[-OUTBOX_EVENTS:])


@dataclass
class Outcome:
    """What the worker must do for one input message."""

    new_state: bytes | None = None  # None: leave the stored state alone
    awards: list[bytes] = field(default_factory=list)
    progress: list[bytes] = field(default_factory=list)
    nudges: list[bytes] = field(default_factory=list)
    dead_letter: bytes | None = None
    status: str = "processed"  # processed | duplicate | unmatched | dead_letter
    evaluation: Evaluation | None = None
    award_records: tuple[AwardRecord, ...] = ()


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
        return self.evaluate(event, stored)

    def evaluate(self, event: EventEnvelope, stored: bytes | None) -> Outcome:
        previous = StoredUser.from_bytes(stored) if stored else StoredUser(UserState.empty(event.user_id))
        evaluation = self.engine.evaluate(previous.state, event)
        outcome = Outcome(evaluation=evaluation)
        if evaluation.duplicate:
            # Nothing changes; re-publish what this event awarded, and the latest progress, in case
            # they were lost in a crash after the state was written (the sink absorbs repeats).
            outcome.status = "duplicate"
            outcome.awards = list(previous.awards_for(event.event_id))
            outcome.progress = previous.progress_records()
            return outcome
        if not evaluation.matched:
            # No badge listens to this type: counted by the caller, no state write needed.
            outcome.status = "unmatched"
            return outcome
        outcome.award_records = evaluation.awards
        outcome.awards = [award_bytes(a) for a in evaluation.awards]
        outcome.progress = [progress_bytes(p) for p in evaluation.progress]
        outcome.nudges = [n.model_dump_json().encode() for n in evaluation.nudges]
        outcome.new_state = StoredUser(
            state=evaluation.state, outbox=previous.with_awards(event.event_id, outcome.awards),
            progress=previous.with_progress(evaluation.progress),
        ).to_bytes()
        return outcome
