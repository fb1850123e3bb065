"""Output records of the worker: awards, progress and dead letters, exactly as DESIGN.md puts them on the wire."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Hashable, Iterable
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import DeadLetterCode

AWARD_ID_NAMESPACE = "badgestream/award/v1"
NUDGE_ID_NAMESPACE = "badgestream/nudge/v1"


def make_award_id(user_id: str, badge_id: str, tier: str | None, occurrence: int) -> str:
    """The award id is a pure function of (user, badge, tier, occurrence): a replayed award keeps it."""
    return _stable_id(AWARD_ID_NAMESPACE, user_id, badge_id, tier or "", str(occurrence))


def make_nudge_id(user_id: str, badge_id: str, tier: str | None, occurrence: int, threshold: int) -> str:
    """The nudge id, a pure function of (user, badge, tier, occurrence, threshold), like the award id."""
    return _stable_id(NUDGE_ID_NAMESPACE, user_id, badge_id, tier or "", str(occurrence), str(threshold))


def _stable_id(*parts: str) -> str:
    """A SHA-256 over the length-prefixed parts (so no choice of ids can collide by concatenation),
    cut to 32 hex characters: 128 bits, as wide as a UUID.

    Hashed as one buffer: the same digest as feeding the parts one by one, at a third of the cost
    (an award id is built per award, see bench/engine/README.md).
    """
    chunks: list[bytes] = []
    for part in parts:
        raw = part.encode("utf-8")
        chunks.append(len(raw).to_bytes(4, "big"))
        chunks.append(raw)
    return hashlib.sha256(b"".join(chunks)).hexdigest()[:32]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSource(_Record):
    """Where a deciding event was first read: its input topic, partition and offset.

    For an event re-keyed through the internal topic this is still its original input position.
    """

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class AwardRecord(_Record):
    """One award on ``badge-awards``, keyed by user_id.

    ``kind`` is ``award`` for a grant and ``revocation`` when a replay retracts an award that no
    longer qualifies; ``backfill`` marks awards found by a replay, so notifiers can stay quiet.
    ``source`` is the evidence (None where it is not known, e.g. awards written before it existed);
    ``points`` are the points this award grants (0 when the badge gives none).
    """

    award_id: str
    user_id: str
    badge_id: str
    tier: str | None = None
    occurrence: int = Field(default=1, ge=1)
    awarded_at: datetime
    event_id: str
    catalog_version: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    kind: Literal["award", "revocation"] = "award"
    backfill: bool = False
    source: EventSource | None = None
    points: int = Field(default=0, ge=0)


class ProgressRecord(_Record):
    """Latest progress of one (user, badge, tier) on ``badge-progress``, keyed by user_id."""

    user_id: str
    badge_id: str
    tier: str | None = None
    progress: float
    target: float
    updated_at: datetime


class NudgeRecord(_Record):
    """"Only ``remaining`` to go": a user came within a declared threshold of a badge (or tier), on ``badge-nudges``.

    Emitted once per (user, badge, tier, occurrence, threshold), when the remaining amount first
    falls to or below ``threshold`` (and is still above 0); ``nudge_id`` is a pure function of those
    five, so a replayed or redelivered nudge is recognisably the same. ``nudged_at`` and ``event_id``
    are those of the event that brought the user there.
    """

    nudge_id: str
    user_id: str
    badge_id: str
    tier: str | None = None
    occurrence: int = Field(default=1, ge=1)
    threshold: int = Field(ge=1)
    remaining: float
    progress: float
    target: float
    nudged_at: datetime
    event_id: str
    catalog_version: str


def supersedes(updated_at: datetime, current: datetime | None) -> bool:
    """The progress rule of the whole system: a record replaces the one held when it is at least as
    new (newest ``updated_at`` wins, the later record wins a tie). The worker's stored latest
    progress, the sink's batch reduction and its SQL upsert (``excluded.updated_at >= ...``) keep it."""
    return current is None or updated_at >= current


TierLadders = dict[str, tuple[tuple[str, float], ...]]
"""Per tiered badge, its (tier, target) ordered by target (``Catalog.tier_ladders``)."""


def expand_tiers(records: Iterable[ProgressRecord], ladders: TierLadders) -> list[ProgressRecord]:
    """Each progress record of a tiered badge, followed by the records of its higher tiers.

    The worker publishes, per event, only the lowest tier of a tiered count whose progress moved:
    every higher tier moved with it to the same count (below their targets, which are higher).
    Derived here they are exactly the records the worker used to publish, so the rows are the same;
    a record of any tier expands alike, so records published before this change expand harmlessly."""
    out: list[ProgressRecord] = []
    for record in records:
        out.append(record)
        ladder = ladders.get(record.badge_id)
        if ladder is None or record.tier is None:
            continue
        higher = False
        for tier, target in ladder:
            if higher:
                out.append(ProgressRecord.model_construct(
                    user_id=record.user_id, badge_id=record.badge_id, tier=tier,
                    progress=min(record.progress, target), target=target, updated_at=record.updated_at))
            elif tier == record.tier:
                higher = True
    return out


K = TypeVar("K", bound=Hashable)


def newest_progress(records: Iterable[ProgressRecord], key: Callable[[ProgressRecord], K]) -> dict[K, ProgressRecord]:
    """The newest record per ``key(record)``, by :func:`supersedes`, in the order keys first appeared."""
    newest: dict[K, ProgressRecord] = {}
    for record in records:
        k = key(record)
        current = newest.get(k)
        if supersedes(record.updated_at, current.updated_at if current is not None else None):
            newest[k] = record
    return newest


class DeadLetterRecord(_Record):
    """An input that could not be used, with everything needed to find and fix it.

    ``value`` holds the original bytes as text when they are UTF-8, else base64 with
    ``value_encoding="base64"``; the same for ``key``.
    """

    source_topic: str
    partition: int
    offset: int
    error_code: DeadLetterCode
    reason: str
    key: str | None = None
    key_encoding: Literal["utf-8", "base64"] = "utf-8"
    value: str | None = None
    value_encoding: Literal["utf-8", "base64"] = "utf-8"
    failed_at: datetime | None = None
    stage: str = "worker"

    @classmethod
    def of(cls, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int,
           code: DeadLetterCode, reason: str, *, failed_at: datetime | None = None,
           stage: str = "worker") -> DeadLetterRecord:
        """The dead letter of one consumed message: its original bytes, where it was, and why."""
        key_text, key_encoding = cls.encode_bytes(key)
        value_text, value_encoding = cls.encode_bytes(value)
        return cls(source_topic=topic, partition=partition, offset=offset, error_code=code, reason=reason,
                   key=key_text, key_encoding=key_encoding, value=value_text, value_encoding=value_encoding,
                   failed_at=failed_at, stage=stage)

    @staticmethod
    def encode_bytes(raw: bytes | None) -> tuple[str | None, Literal["utf-8", "base64"]]:
        """Text for UTF-8 bytes, base64 for anything else, so the original is never lost."""
        if raw is None:
            return None, "utf-8"
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"

    def original_value(self) -> bytes | None:
        if self.value is None:
            return None
        if self.value_encoding == "base64":
            return base64.b64decode(self.value)
        return self.value.encode("utf-8")


_set = object.__setattr__
_new = object.__new__
_FIELD_NAMES: dict[type[BaseModel], frozenset[str]] = {}
M = TypeVar("M", bound=BaseModel)


def trusted_record(model: type[M], values: dict[str, Any]) -> M:
    """A record built from values the engine made itself, with every field given, skipping validation.

    Validation would only re-check types we just produced, yet it was the largest single cost per
    event (see bench/engine/README.md). ``values`` must name every field, with its final type. It
    fills the slots pydantic 2 keeps per instance (``__pydantic_fields_set__``, ``_extra__``,
    ``_private__``); tests/unit/test_engine.py checks that such a record equals a validated one.
    """
    names = _FIELD_NAMES.get(model)
    if names is None:
        if set(values) != set(model.model_fields):
            return model(**values)  # the record gained or lost a field: validate rather than guess
        names = _FIELD_NAMES[model] = frozenset(model.model_fields)
    elif len(values) != len(names):
        return model(**values)  # not every field given: validation fills defaults or refuses
    record = _new(model)
    _set(record, "__dict__", values)
    _set(record, "__pydantic_fields_set__", set(names))  # its own set, as validation gives each record
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record
