"""One input message in, everything the worker must do about it out — with no Faust and no I/O.

The worker's input handler decodes a message, reads the user's stored value
(:mod:`streams.worker.stored`) and remembered event ids, calls :meth:`EventProcessor.evaluate_user`
and acts on the :class:`Outcome`: store the new value and ids, produce awards, progress and nudges.
Keeping the decision here makes it testable with literal bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from evaluators.engine import Engine, Evaluation
from evaluators.resends import Change, ResendWindow, SeenIds, event_digest
from evaluators.state import UserState
from schemas.catalog import Catalog
from schemas.errors import InvalidEventError
from schemas.events import EventEnvelope, parse_event
from schemas.records import AwardRecord, DeadLetterRecord
from streams.worker.stored import CommittedOffset, Origin, Position, ProgressChange, StoredUser


@dataclass
class Outcome:
    """What the worker must do for one input message."""

    new_user: StoredUser | None = None  # None: leave the stored state alone
    awards: list[bytes] = field(default_factory=list)  # award records to publish
    progress: ProgressChange | None = None  # progress records to publish
    nudges: list[bytes] = field(default_factory=list)
    dead_letter: bytes | None = None
    status: str = "processed"  # processed | duplicate | unmatched | dead_letter
    evaluation: Evaluation | None = None  # what the engine decided (None: it was not asked)
    seen: SeenIds | None = None  # the user's remembered ids after this message (None: unchanged)
    ids_change: Change | None = None  # which of their buckets to write and delete

    @property
    def granted(self) -> tuple[AwardRecord, ...]:
        """The awards this message made (not those it re-publishes): what metrics and logs count."""
        return self.evaluation.awards if self.evaluation is not None else ()

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
    """The award record as pydantic writes it (``model_dump_json``, UTC as ``Z``), by orjson from the
    record's fields: a third of the cost. Metadata orjson cannot write (a custom evaluator's own
    types) goes through pydantic."""
    fields = record.__dict__
    source = fields["source"]
    try:
        return orjson.dumps({**fields, "source": source.__dict__ if source is not None else None},
                            option=orjson.OPT_UTC_Z)
    except TypeError:
        return record.model_dump_json().encode()


class EventProcessor:
    """Decode, validate and evaluate one message against a user's stored value and remembered ids."""

    def __init__(self, catalog: Catalog, engine: Engine, window: ResendWindow | None = None) -> None:
        self.catalog = catalog
        self.engine = engine
        self.window = window if window is not None else ResendWindow()

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
                 committed: CommittedOffset | None = None, **context: Any) -> Outcome:
        """:meth:`evaluate_user` on the user's stored bytes (None: a user not seen before)."""
        return self.evaluate_user(event, StoredUser.from_bytes(stored) if stored else None, position, committed,
                                  **context)

    def evaluate_user(self, event: EventEnvelope, user: StoredUser | None, position: Position | None = None,
                      committed: CommittedOffset | None = None, *, origin: Origin | None = None,
                      record_ms: int = 0, seen: SeenIds | None = None) -> Outcome:
        """Evaluate ``event`` against the user's decoded stored value; the new value is
        ``Outcome.new_user`` and the new remembered ids ``Outcome.seen``.

        ``position``: where the message was read (prunes the outbox once committed); ``origin``:
        where the event was first read and along which path (default: ``position``, directly) — a
        message at or before the last one applied along that path is a redelivery and changes
        nothing; it is the awards' evidence too. ``record_ms`` and ``seen``: the message's record time
        and the user's remembered ids, for resends. ``committed`` prunes the outbox. Stored values are
        never changed in place, so the worker can keep them decoded between events."""
        if origin is None and position is not None:
            origin = Origin(*position)
        previous = user if user is not None else StoredUser(UserState.empty(event.user_id))
        seen = seen if seen is not None else SeenIds()
        digest = event_digest(event.event_id)
        tag = origin.tag if origin is not None else None
        if origin is not None and previous.applied(origin):
            # A Kafka redelivery of an event already in this state: re-publish what it awarded and
            # the latest progress, in case they were lost in a crash after the state was written
            # (the sink absorbs repeats).
            entry = previous.entry_at(position) if position is not None else None
            entry = entry or previous.entry_for(event.event_id)
            outcome = Outcome(status="duplicate", awards=list(entry.awards) if entry else [],
                              nudges=list(entry.nudges) if entry else [], progress=previous.progress_records())
            if previous.id_buckets and tag is not None and not seen.remembers(digest, tag):
                # Written with the state but lost before its ids were (a crash inside a commit).
                outcome.seen, outcome.ids_change = seen.with_id(self.window, digest, record_ms, tag)
                written = set(outcome.ids_change.written) - set(previous.id_buckets)
                if written:  # the value must list the chunk the id went to, or it is never read back
                    outcome.new_user = replace(previous, id_buckets=tuple(sorted({*previous.id_buckets, *written})))
            return outcome
        if seen.resent(self.window, digest, record_ms, tag):
            # The same event id again in another message (an upstream resend): nothing changes. Its
            # awards are re-published if still at hand.
            outcome = Outcome(status="duplicate")
            entry = previous.entry_for(event.event_id)
            if entry is not None:
                outcome.awards, outcome.nudges = list(entry.awards), list(entry.nudges)
            return outcome
        evaluation = self.engine.evaluate(previous.state, event, progress_entries=True)
        if not evaluation.matched:
            # No badge listens to this type: counted by the caller, no state write needed.
            return Outcome(status="unmatched", evaluation=evaluation)
        if evaluation.awards and origin is not None:
            # The awards' evidence, settled once: where the event was first read.
            evaluation = replace(evaluation, awards=self.engine.with_source(evaluation.awards, origin.evidence()))
        outcome = Outcome(evaluation=evaluation)
        outcome.awards = [award_bytes(a) for a in evaluation.awards]
        outcome.nudges = [n.model_dump_json().encode() for n in evaluation.nudges]
        outcome.seen, outcome.ids_change = seen.with_id(self.window, digest, record_ms, tag or 0)
        kept = previous.pruned(committed) if committed is not None else previous
        latest, changed = kept.with_progress(evaluation.progress_entries, event.occurred_at, position)
        if changed:  # their records are built when sent, from the map: most are coalesced away before
            outcome.progress = ProgressChange(event.user_id, latest, changed)
        outcome.new_user = StoredUser(
            state=evaluation.state,
            outbox=kept.with_outputs(event.event_id, outcome.awards, outcome.nudges, position),
            progress=latest,
            marks=kept.with_mark(origin),
            id_buckets=tuple(sorted(outcome.seen.buckets)),
        )
        return outcome
