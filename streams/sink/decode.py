"""Step 1 of the award sink: consumed messages become award rows, progress rows or dead letters.

A well-formed record is still checked against what the database can store here, rather than left
to the database, so that SQLite and PostgreSQL refuse the same records, and a record that could
never be written becomes a dead letter with a reason instead of an error that blocks its
partition forever.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message, TopicPartition
from pydantic import ValidationError

from schemas.errors import DeadLetterCode
from schemas.records import AwardRecord, DeadLetterRecord, ProgressRecord, make_award_id
from streams import db

log = logging.getLogger("streams.sink.award_sink")

MAX_OCCURRENCE = 2**31 - 1  # user_badges.occurrence is a 32-bit INTEGER


def validation_reason(exc: ValidationError, limit: int = 500) -> str:
    """``field: problem`` for each validation error, cut to ``limit`` characters."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "record"
        parts.append(f"{where}: {error['msg']}")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_ids(record: AwardRecord | ProgressRecord, names: Sequence[str], raw: bytes) -> str | None:
    lengths = [len(getattr(record, name) or "") for name in names]
    if max(lengths) > db.ID_LENGTH:
        name = names[next(i for i, n in enumerate(lengths) if n > db.ID_LENGTH)]
        return f"{name} is longer than {db.ID_LENGTH} characters"
    # A NUL can only be in a JSON string as the escape \u0000: look for it in the raw bytes first.
    if b"\\u0000" in raw:
        for name in names:
            if "\x00" in (getattr(record, name) or ""):
                return f"{name} contains a NUL character, which PostgreSQL cannot store"
    return None


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


_AWARD_IDS = ("award_id", "user_id", "badge_id", "tier", "event_id", "catalog_version")
_PROGRESS_IDS = ("user_id", "badge_id", "tier")


def check_award(record: AwardRecord, raw: bytes) -> str | None:
    """Why a well-formed award record still cannot be stored, or None.

    These are checked here rather than left to the database so that both databases refuse the
    same records, and a record that could never be written becomes a dead letter instead of an
    error that blocks the partition forever.
    """
    problem = _check_ids(record, _AWARD_IDS, raw)
    if problem:
        return problem
    if record.occurrence > MAX_OCCURRENCE:
        return f"occurrence {record.occurrence} is larger than {MAX_OCCURRENCE}"
    expected = make_award_id(record.user_id, record.badge_id, record.tier, record.occurrence)
    if record.award_id != expected:
        return (f"award_id {record.award_id!r} is not make_award_id(user_id, badge_id, tier, occurrence) "
                f"= {expected!r}")
    if b"\\u0000" in raw and _contains_nul(record.metadata):
        return "metadata contains a NUL character, which PostgreSQL cannot store"
    return None


def check_progress(record: ProgressRecord, raw: bytes) -> str | None:
    """Why a well-formed progress record still cannot be stored, or None."""
    problem = _check_ids(record, _PROGRESS_IDS, raw)
    if problem:
        return problem
    if not (math.isfinite(record.progress) and math.isfinite(record.target)):
        return "progress and target must be finite numbers"
    return None


@dataclass
class DecodedBatch:
    """Step 1's output: rows to write, dead letters, and the offsets the batch will commit."""

    awards: list[AwardRecord] = field(default_factory=list)
    progress: list[ProgressRecord] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, DeadLetterRecord]] = field(default_factory=list)
    offsets: list[TopicPartition] = field(default_factory=list)


def where(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (librdkafka always sets them on those)."""
    return message.topic() or "", message.partition() or 0, message.offset() or 0


def decode(messages: Sequence[Message], awards_topic: str, progress_topic: str) -> DecodedBatch:
    """Step 1: records from message values; anything unusable becomes a dead letter with its reason."""
    batch = DecodedBatch()
    next_offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        if message.error() is not None:
            continue
        topic, partition, offset = where(message)
        next_offsets[(topic, partition)] = max(next_offsets.get((topic, partition), 0), offset + 1)
        raw = message.value()
        code: DeadLetterCode
        if topic == awards_topic:
            code = "invalid_award"
        elif topic == progress_topic:
            code = "invalid_progress"
        else:
            batch.dead_letters.append(_dead_letter(message, "unknown_topic", f"not a sink topic: {topic}"))
            continue
        if raw is None:
            batch.dead_letters.append(_dead_letter(message, code, "the record has no value"))
            continue
        try:
            if code == "invalid_award":
                award = AwardRecord.model_validate_json(raw)
                problem = check_award(award, raw)
            else:
                progress = ProgressRecord.model_validate_json(raw)
                problem = check_progress(progress, raw)
        except ValidationError as exc:
            batch.dead_letters.append(_dead_letter(message, code, validation_reason(exc)))
            continue
        if problem is not None:
            batch.dead_letters.append(_dead_letter(message, code, problem))
        elif code == "invalid_award":
            batch.awards.append(award)
        else:
            batch.progress.append(progress)
    batch.offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(next_offsets.items())]
    return batch


def _dead_letter(message: Message, code: DeadLetterCode, reason: str) -> tuple[bytes | None, DeadLetterRecord]:
    record = DeadLetterRecord.of(message.key(), message.value(), *where(message), code, reason,
                                 failed_at=datetime.now(UTC), stage="sink")
    log.warning("dead letter %s:%d@%d %s: %s", record.source_topic, record.partition, record.offset, code, reason)
    return message.key(), record
