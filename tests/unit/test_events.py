"""The event envelope: what is accepted, and the dead-letter code and reason for what is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from evaluators.facts import EventFacts
from schemas.errors import InvalidEventError
from schemas.events import MAX_EVENT_BYTES, EventEnvelope, _plain_envelope, describe_validation_error, parse_event

GOOD = {"event_id": "e-0001", "type": "quiz_completed", "user_id": "u-42",
        "occurred_at": "2026-11-21T09:30:00+00:00", "tz": "Europe/Berlin",
        "data": {"quiz_id": "q1", "score": 9, "total_questions": 10}}


def raw(**changes: object) -> bytes:
    body = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def code_and_reason(payload: bytes) -> tuple[str, str]:
    with pytest.raises(InvalidEventError) as info:
        parse_event(payload)
    return info.value.code, info.value.reason


def test_the_design_example_parses() -> None:
    event = parse_event(raw())
    assert event.user_id == "u-42" and event.tz == "Europe/Berlin"
    assert EventFacts(event).local.isoformat() == "2026-11-21T10:30:00+01:00"


def test_tz_defaults_to_utc_and_data_to_empty() -> None:
    event = parse_event(raw(tz=..., data=...))
    assert event.tz == "UTC" and event.data == {}


def test_too_large_is_checked_before_parsing() -> None:
    code, reason = code_and_reason(b"{" * (MAX_EVENT_BYTES + 1))
    assert code == "too_large" and str(MAX_EVENT_BYTES) in reason


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe{}", b'{"a": 1', b""])
def test_not_json_or_not_utf8(payload: bytes) -> None:
    assert code_and_reason(payload)[0] == "invalid_json"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"occurred_at": "2026-11-21T09:30:00"}, "occurred_at", "timestamp has no time zone"),
        ({"occurred_at": 1700000000}, "occurred_at", "ISO 8601"),
        ({"occurred_at": "1700000000"}, "occurred_at", "ISO 8601"),
        ({"occurred_at": "1969-12-31T23:00:00+00:00"}, "occurred_at", "outside 1970..9000"),
        ({"occurred_at": "9001-01-01T00:00:00+00:00"}, "occurred_at", "outside 1970..9000"),
        ({"tz": "Mars/Olympus"}, "tz", "unknown time zone"),
        ({"tz": "../../etc/passwd"}, "tz", "unknown time zone"),
        ({"tz": ""}, "tz", "time zone name"),
        ({"event_id": ""}, "event_id", "at least 1"),
        ({"user_id": "u" * 257}, "user_id", "at most 256"),
        ({"type": ...}, "type", "required"),
        ({"data": [1, 2]}, "data", "dictionary"),
        ({"data": {"n": 2**53 + 1}}, "data.n", "outside +-2**53"),
        ({"data": {"n": -(2**60)}}, "data.n", "outside +-2**53"),
        ({"data": {"n": 1e300}}, "data.n", "outside +-2**53"),
        ({"extra": 1}, "extra", "Extra inputs"),
    ],
)
def test_invalid_envelopes_name_the_field(changes: dict[str, object], field: str, words: str) -> None:
    code, reason = code_and_reason(raw(**changes))
    assert code == "invalid_envelope"
    assert reason.startswith(f"{field}:") or f"{field}:" in reason
    assert words in reason


def test_integers_beyond_64_bits_are_refused() -> None:
    payload = raw().replace(b'"score":9', b'"score":99999999999999999999999')
    code, reason = code_and_reason(payload)
    assert code == "invalid_envelope" and "data.score" in reason


def test_data_depth_limit() -> None:
    def nested(depth: int) -> object:
        value: object = 1
        for _ in range(depth):
            value = [value]
        return value

    parse_event(raw(data={"a": nested(15)}))  # data (1) + 15 lists = 16 levels
    code, reason = code_and_reason(raw(data={"a": nested(16)}))
    assert code == "invalid_envelope" and "deeper than 16" in reason
    code, _ = code_and_reason(raw().replace(b'"data":{', b'"data":{"deep":' + b"[" * 5000 + b"]" * 5000 + b","))
    assert code == "invalid_envelope"


def test_not_an_object() -> None:
    assert code_and_reason(b"[1, 2]") == ("invalid_envelope", "event: expected a JSON object, got list")


def test_constructing_directly_applies_the_same_checks() -> None:
    with pytest.raises(ValidationError, match="timestamp has no time zone"):
        EventEnvelope(event_id="e", type="t", user_id="u", occurred_at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="outside"):
        EventEnvelope(event_id="e", type="t", user_id="u", occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                      data={"x": [2**54]})


def test_local_time_follows_dst() -> None:
    before = parse_event(raw(occurred_at="2026-03-29T00:30:00+00:00"))  # 01:30 CET
    after = parse_event(raw(occurred_at="2026-03-29T01:30:00+00:00"))   # 03:30 CEST
    assert EventFacts(before).local.hour == 1 and EventFacts(after).local.hour == 3
    assert EventFacts(after).local.utcoffset() == timedelta(hours=2)


def test_envelope_is_frozen() -> None:
    event = parse_event(raw())
    with pytest.raises(ValidationError):
        event.user_id = "someone else"  # type: ignore[misc]


def test_round_trip_through_json() -> None:
    event = parse_event(raw())
    assert parse_event(event.model_dump_json().encode()) == event


# --- the fast path: plainly valid events are built without pydantic's validation ---------------------

_MISSING = object()


def _mostly(valid: st.SearchStrategy[object], invalid: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Nine draws in ten from ``valid``: most examples reach the fast path, the rest its refusals."""
    return st.integers(0, 9).flatmap(lambda n: invalid if n == 0 else valid)


_ZONES = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30)),
          timezone(timedelta(hours=14)), timezone(timedelta(hours=19, minutes=59)),
          timezone(timedelta(hours=23, minutes=59))]
_TIMES = _mostly(
    st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(9100, 1, 1), timezones=st.sampled_from(_ZONES))
    .map(lambda moment: moment.isoformat().replace("+00:00", "Z") if moment.second % 2 else moment.isoformat()),
    st.one_of(st.sampled_from([
        "2026-11-21t09:30:00z", "2026-11-21 09:30:00+00:00", "2026-11-21T09:30+01:00",
        "2026-11-21T09:30:00.1234567+01:00", "2026-11-21T09:30:00+0100", "2026-02-30T09:30:00+00:00",
        "2026-11-21T24:00:00+00:00", "2026-11-21T09:30:00", "2026-11-21T09:30:00-00:00", "1700000000", "",
        "2026-11-21T09:30:00.5+01:00", "2026-11-21T09:30:00.123Z", "2026-11-21T09:30:00.12345-19:59"]),
        st.text(max_size=30), st.integers(min_value=-2**63, max_value=2**63 - 1), st.none()))
_IDS = _mostly(st.text(min_size=1, max_size=4),
               st.one_of(st.just(""), st.text(min_size=255, max_size=258),
                         st.integers(min_value=-2**63, max_value=2**63 - 1), st.none()))
_DATA = _mostly(
    st.dictionaries(st.text(max_size=3), st.one_of(
        st.integers(min_value=-2**60, max_value=2**60), st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=3), st.booleans(), st.none(), st.lists(st.integers(min_value=0, max_value=9), max_size=3),
        st.dictionaries(st.text(max_size=2), st.integers(min_value=-9, max_value=9), max_size=2)), max_size=3),
    st.one_of(st.lists(st.integers(min_value=0, max_value=9), max_size=2), st.none(), st.text(max_size=2),
              st.just(_MISSING)))
_TZ = _mostly(st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]),
              st.sampled_from(["Mars/Olympus", "", "utc", None, _MISSING]))


@settings(max_examples=400, deadline=None)
@given(event_id=_IDS, type_=st.one_of(st.just("quiz_completed"), _IDS), user_id=_IDS, occurred_at=_TIMES,
       tz=_TZ, data=_DATA, extra=_mostly(st.just(_MISSING), st.sampled_from(["source", "Type"])))
def test_the_fast_path_accepts_and_refuses_exactly_as_validation(
        event_id: object, type_: object, user_id: object, occurred_at: object, tz: object, data: object,
        extra: object) -> None:
    """Whatever the fast path builds equals what pydantic builds (values, types, offsets, what was set),
    and what it does not build gets pydantic's verdict: the same dead-letter code and reason."""
    body = {"event_id": event_id, "type": type_, "user_id": user_id, "occurred_at": occurred_at, "tz": tz,
            "data": data}
    if extra is not _MISSING:
        body[str(extra)] = 1
    body = {name: value for name, value in body.items() if value is not _MISSING}
    try:
        validated: EventEnvelope | str = EventEnvelope.model_validate(body)
    except ValidationError as exc:
        validated = "refused: " + describe_validation_error(exc)
    try:
        parsed: EventEnvelope | str = parse_event(orjson.dumps(body))
    except InvalidEventError as exc:
        parsed = "refused: " + exc.reason
    assert parsed == validated
    if isinstance(parsed, EventEnvelope):
        assert isinstance(validated, EventEnvelope)
        assert type(parsed.occurred_at.tzinfo) is type(validated.occurred_at.tzinfo)
        assert parsed.occurred_at.isoformat() == validated.occurred_at.isoformat()
        assert parsed.model_fields_set == validated.model_fields_set
        assert parsed.model_dump_json() == validated.model_dump_json()


def test_the_fast_path_builds_the_common_event() -> None:
    fast = _plain_envelope(orjson.loads(raw()))
    assert fast is not None and fast == EventEnvelope.model_validate(GOOD)
    assert _plain_envelope(orjson.loads(raw(occurred_at="2026-11-21T09:30:00+01:00[Europe/Berlin]"))) is None
