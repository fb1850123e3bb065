"""Requests generated from the API's own OpenAPI schema never get a 5xx, and what they get has the documented shape.

Hypothesis (seeded) builds each parameter from its schema in ``/openapi.json`` — values the schema
allows (lengths, patterns, ranges, enums) and values it does not (any text) — for the main read
endpoints, over the small database of ``api_data``. Allowed or not, the answer is 200, 403, 404
or 422, never a 5xx; a 200 has the fields docs/api.md lists with their types; a 422 names a
parameter that was sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from streams.api.app import create_app
from streams.settings import Settings
from tests.functional.api_data import fill

ENDPOINTS = ["/v1/users/{user_id}", "/v1/badges", "/v1/leaderboard", "/v1/awards/{award_id}", "/"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'badgestream.db'}"
    fill(url).dispose()
    with TestClient(create_app(Settings(database_url=SecretStr(url), api_cache_ttl_s=0)),
                    raise_server_exceptions=False) as client:
        yield client
        client.app.state.engine.dispose()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = client.get("/openapi.json").json()
    return spec


def _allowed(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values ``schema`` accepts (the first branch of an ``anyOf`` that is not null)."""
    if "ISO 8601" in schema.get("description", ""):  # a time: the whole range, with and without offset
        return st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(datetime.isoformat)
    if "anyOf" in schema:
        return _allowed(next(s for s in schema["anyOf"] if s.get("type") != "null"))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    if kind == "boolean":
        return st.booleans()
    lo, hi = schema.get("minLength", 0), schema.get("maxLength", 300)
    text = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else st.text()
    return text.filter(lambda value: lo <= len(value) <= hi)


KNOWN_IDS = ["u-1", "u-2", "u-3", "u-4", "first_quiz", "quiz_master", "recruiter"]


def _value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly values the schema allows (ids often ones the database holds), one in ten anything at all (422s)."""
    allowed = _allowed(schema)
    if "pattern" in str(schema):
        allowed = st.one_of(allowed, st.sampled_from(KNOWN_IDS))
    return st.integers(0, 9).flatmap(lambda n: st.text(max_size=300) if n == 0 else allowed)


@st.composite
def requests(draw: st.DrawFn, spec: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    path = draw(st.sampled_from(ENDPOINTS))
    parameters = spec["paths"][path]["get"].get("parameters", [])
    url, query = path, {}
    for parameter in parameters:
        name, schema = parameter["name"], {**parameter.get("schema", {}), **parameter}
        if parameter["in"] == "path":
            value = draw(_value(schema).filter(lambda v: str(v) not in ("", ".", "..")))
            url = url.replace("{" + name + "}", quote(str(value), safe=""))
        elif draw(st.integers(0, 2)) == 0:
            value = draw(_value(schema))
            query[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return path, url, query


def _shape(path: str, body: Any) -> None:
    if path == "/v1/users/{user_id}":
        assert {"user_id", "points", "badges", "progress", "locked"} <= set(body)
        for badge in body["badges"]:
            assert {"award_id", "badge_id", "name", "tier", "occurrence", "awarded_at", "event_id",
                    "rarity"} <= set(badge)
            assert 0 <= badge["rarity"] <= 1
        for row in body["progress"]:
            assert {"badge_id", "name", "tier", "progress", "target", "remaining"} <= set(row)
    elif path == "/v1/badges":
        for badge in body:
            assert {"badge_id", "name", "description", "hidden", "tiers", "holders", "rarity"} <= set(badge)
            assert isinstance(badge["holders"], int) and 0 <= badge["rarity"] <= 1
    elif path == "/v1/leaderboard":
        assert isinstance(body, list) and len(body) <= 1000
        for row in body:
            assert set(row) == {"rank", "user_id", "badges", "points"}
            assert all(isinstance(row[k], int) for k in ("rank", "badges", "points")) and row["rank"] >= 1
        assert [row["rank"] for row in body] == sorted(row["rank"] for row in body)
    elif path == "/v1/awards/{award_id}":
        assert {"award_id", "user_id", "badge_id", "event_id", "topic", "partition", "offset",
                "revoked_at"} <= set(body)


@seed(4)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_requests_never_get_a_5xx_and_match_the_documented_shape(
    client: TestClient, spec: dict[str, Any], data: st.DataObject
) -> None:
    path, url, query = data.draw(requests(spec))
    response = client.get(url, params=query)
    event(f"{path} {response.status_code}")
    assert response.status_code in (200, 403, 404, 422), (url, query, response.status_code, response.text[:300])
    if response.status_code == 422:
        body = response.json()
        named = {str(error["loc"][-1]) for error in body["detail"] if error["loc"]}
        assert named and named <= {*query, *(p["name"] for p in spec["paths"][path]["get"].get("parameters", []))}
    elif response.status_code == 200 and path != "/":
        _shape(path, response.json())
