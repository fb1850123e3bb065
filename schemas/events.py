"""The input event envelope and the one function that turns untrusted bytes into it.

Every check that protects the worker from hostile or broken input lives here (size, depth,
number range, time zone, timestamp), so the worker, the producer SDK and the offline command
refuse exactly the same events with exactly the same error codes.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import TzInfo

from schemas.errors import InvalidEventError
from schemas.records import trusted_record


class EventChecks(Protocol):
    """Per-type checks of an event's data (the catalog's ``events:``): raise InvalidEventError."""

    def validate_event_data(self, event: EventEnvelope) -> None: ...

MAX_EVENT_BYTES = 64 * 1024
"""A raw event larger than this is refused before it is parsed (code ``too_large``)."""

MAX_ID_CHARS = 256
"""Longest ``event_id``, ``type`` and ``user_id``; they become keys, labels and database columns."""

MAX_TZ_CHARS = 64
MAX_DATA_DEPTH = 16
"""Deepest nesting of lists and objects inside ``data`` (``data`` itself is depth 1)."""

MAX_SAFE_INTEGER = 2**53
"""Numbers beyond +-2**53 cannot round-trip through JavaScript or float and are refused."""
MAX_LIST_ITEMS = 1000
"""Longest list anywhere in ``data``: what one CEL comprehension over event data may iterate."""

MIN_YEAR = 1970
MAX_YEAR = 9000

_ISO_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_PLAIN_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(Z|[+-][01]\d:[0-5]\d)")
"""The timestamps the fast path reads itself (what producers send); any other form goes through pydantic."""
_Id = Field(min_length=1, max_length=MAX_ID_CHARS)


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> tzinfo:
    """The ``ZoneInfo`` for an IANA name; cached because every event asks for its zone."""
    return ZoneInfo(name)


def _check_tz(name: str) -> str:
    if not name or len(name) > MAX_TZ_CHARS:
        raise ValueError(f"time zone name must have 1..{MAX_TZ_CHARS} characters")
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Berlin')") from None
    return name


def _check_data(value: Any, depth: int, path: str) -> None:
    """Depth and number limits of ``data``, walked once; ``path`` names the offending field."""
    if isinstance(value, dict):
        if depth > MAX_DATA_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DATA_DEPTH} levels")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: keys must be strings")
            if isinstance(item, dict | list | int | float):
                _check_data(item, depth + 1, f"{path}.{key}")
    elif isinstance(value, list):
        if depth > MAX_DATA_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DATA_DEPTH} levels")
        if len(value) > MAX_LIST_ITEMS:
            raise ValueError(f"{path}: list has {len(value)} items, the limit is {MAX_LIST_ITEMS}")
        for index, item in enumerate(value):
            if isinstance(item, dict | list | int | float):
                _check_data(item, depth + 1, f"{path}[{index}]")
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValueError(f"{path}: integer {value} is outside +-2**53")
    elif isinstance(value, float) and not (math.isfinite(value) and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER):
        # orjson reads integers too large for 64 bits as floats: refuse them here as well.
        raise ValueError(f"{path}: number {value} is outside +-2**53")


class EventEnvelope(BaseModel):
    """One thing that happened to one user, as upstream services produce it (see DESIGN.md).

    Frozen: the engine and custom evaluators get the very object, so it must not change under them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    event_id: str = _Id
    type: str = _Id
    user_id: str = _Id
    occurred_at: datetime
    tz: str = "UTC"
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _timestamp_is_iso(cls, value: Any) -> Any:
        # pydantic would read a number (or a string of digits) as Unix time; the contract is
        # an ISO 8601 date and time with an offset.
        if isinstance(value, str) and not _ISO_PREFIX.match(value):
            raise ValueError("timestamp must be ISO 8601, e.g. '2026-11-21T09:30:00+01:00'")
        if isinstance(value, int | float):
            raise ValueError("timestamp must be an ISO 8601 string with a time zone offset")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _timestamp_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp has no time zone")
        if not MIN_YEAR <= value.year <= MAX_YEAR:
            raise ValueError(f"year {value.year} is outside {MIN_YEAR}..{MAX_YEAR}")
        return value

    @field_validator("tz")
    @classmethod
    def _tz_known(cls, value: str) -> str:
        return _check_tz(value)

    @field_validator("data")
    @classmethod
    def _data_bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_data(value, 1, "data")
        return value


def describe_validation_error(exc: ValidationError) -> str:
    """``field: problem`` for each error, so a dead letter says what to fix and where."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in error["loc"]) or "event"
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        # _check_data already names the path inside data; don't say "data: data.x: ...".
        if loc == "data" and message.startswith("data"):
            parts.append(message)
        else:
            parts.append(f"{loc}: {message}")
    return "; ".join(parts)


def parse_event(raw: bytes | None, catalog: EventChecks | None = None) -> EventEnvelope:
    """Decode and validate one raw event; raises :class:`InvalidEventError` with a dead-letter code.

    Codes: ``too_large`` (over :data:`MAX_EVENT_BYTES`, checked before parsing), ``invalid_json``
    (no value, not UTF-8 or not JSON), ``invalid_envelope`` (the reason names the field), and with
    a ``catalog`` its per-type checks (``invalid_data``). The worker, replay, offline evaluate and the
    producer SDK all read events through here.
    """
    if raw is None:
        raise InvalidEventError("invalid_json", "the message has no value (tombstone)")
    event = _parse_envelope(raw)
    if catalog is not None:
        catalog.validate_event_data(event)
    return event


def _parse_envelope(raw: bytes) -> EventEnvelope:
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEventError("too_large", f"event is {len(raw)} bytes, the limit is {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            # Well-formed but absurdly deep: an envelope problem, like data nested beyond the limit.
            raise InvalidEventError("invalid_envelope", f"event: nested deeper than {MAX_DATA_DEPTH} levels") from None
        raise InvalidEventError("invalid_json", f"not valid JSON (or not UTF-8): {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEventError("invalid_envelope", f"event: expected a JSON object, got {type(obj).__name__}")
    event = _plain_envelope(obj)
    if event is not None:
        return event
    try:
        return EventEnvelope.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEventError("invalid_envelope", describe_validation_error(exc)) from None
    except RecursionError:
        raise InvalidEventError("invalid_envelope", f"data: nested deeper than {MAX_DATA_DEPTH} levels") from None


_FIELDS = frozenset(EventEnvelope.model_fields)
_REQUIRED_IDS = ("event_id", "type", "user_id")
_ZONES_SEEN: set[str] = set()
_OFFSETS: dict[str, TzInfo] = {}


def _plain_envelope(obj: dict[str, Any]) -> EventEnvelope | None:
    """The envelope of a plainly valid event, built without pydantic's validation; None for anything
    else, which :meth:`EventEnvelope.model_validate` then accepts or refuses with its named reason.

    Validation was the largest per-event cost of the worker's path around the engine. This accepts
    only what the model accepts, with the very values it would build (a ``TzInfo`` offset, as pydantic
    gives; tests/unit/test_events.py compares both), so every refusal still comes from one place."""
    if not obj.keys() <= _FIELDS:
        return None
    for name in _REQUIRED_IDS:
        value = obj.get(name)
        if type(value) is not str or not 0 < len(value) <= MAX_ID_CHARS:
            return None
    when = obj.get("occurred_at")
    if type(when) is not str or (shape := _PLAIN_TIMESTAMP.fullmatch(when)) is None:
        return None
    tz = obj.get("tz", "UTC")
    if type(tz) is not str:
        return None
    if tz not in _ZONES_SEEN:
        try:
            _check_tz(tz)
        except ValueError:
            return None
        _ZONES_SEEN.add(tz)
    data = obj.get("data")
    if data is None:
        if "data" in obj:
            return None  # null is refused by the model
        data = {}
    elif type(data) is not dict or not _plainly_bounded(data, 1):
        return None
    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        return None
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        return None
    suffix = shape.group(1)
    offset = _OFFSETS.get(suffix)
    if offset is None:
        seconds = moment.utcoffset()
        offset = _OFFSETS.setdefault(suffix, TzInfo(int(seconds.total_seconds()) if seconds is not None else 0))
    # The constructor, not ``replace(tzinfo=...)``: a sixth of the cost.
    moment = datetime(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
                      moment.microsecond, offset)
    event = trusted_record(EventEnvelope, {
        "event_id": obj["event_id"], "type": obj["type"], "user_id": obj["user_id"],
        "occurred_at": moment, "tz": tz, "data": data})
    object.__setattr__(event, "__pydantic_fields_set__", set(obj))  # as validation records what was given
    return event


def _plainly_bounded(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether ``data`` is surely within :func:`_check_data`'s limits, walked without naming paths
    (False also for what only the full check can judge; the model then decides)."""
    if depth > MAX_DATA_DEPTH:
        return False
    items: Any
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            return False
        items = value
    else:
        items = value.values()
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return False
        elif kind is float:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:  # False for NaN too
                return False
        elif kind is dict or kind is list:
            if not _plainly_bounded(item, depth + 1):
                return False
        else:
            return False
    return True
