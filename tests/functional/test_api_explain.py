"""Explain and what-if over the read API (``streams.api.explain``), on SQLite and PostgreSQL.

The award database is the read API tests' (``api_data``); the catalog the API explains with is the same
one, as YAML. The worker is stood in for by an ``httpx.MockTransport`` answering with the real view's
body (``streams.worker.views.engine_state_body``) over a state the engine built from literal events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from evaluators.engine import Engine as BadgeEngine
from evaluators.resends import ResendWindow, SeenIds, event_digest
from evaluators.state import UserState
from schemas.catalog import load_catalog
from streams.settings import Settings
from streams.worker.processor import StoredUser
from streams.worker.views import engine_state_body
from tests.functional.api_data import CATALOG, fill
from tests.unit.support import event

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = fill(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(CATALOG))
    return path


def worker_states(catalog_path: Path) -> dict[str, tuple[UserState, SeenIds]]:
    """u-1 as the worker knows them: logins on four days in a row, and one referral (an hour ago in
    record time, so its event id is within the resend window)."""
    badges = BadgeEngine(load_catalog(catalog_path))
    state: UserState | None = None
    for day in range(1, 5):
        state = badges.evaluate(state, event("user_logged_in", f"2026-11-0{day}T08:00:00+00:00", user="u-1")).state
    state = badges.evaluate(state, event("referral_signup", "2026-11-05T08:00:00+00:00", user="u-1",
                                         event_id="ref-1", referred_user_id="x")).state
    assert state is not None
    seen = SeenIds()
    now_ms = int(time.time() * 1000)
    for event_id, when in [("ref-1", now_ms - 3600 * 1000)]:
        seen = seen.with_id(ResendWindow(), event_digest(event_id), when)[0]
    return {"u-1": (state, seen)}


def mock_worker(states: dict[str, tuple[UserState, SeenIds]]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        user_id = request.url.path.split("/")[2]
        known = states.get(user_id)
        body, status = engine_state_body(user_id, StoredUser(known[0]) if known else None, known[1] if known else None)
        return httpx.Response(status, content=orjson.dumps(body))

    return httpx.MockTransport(answer)


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(engine: Engine, database_url: str, catalog_path: Path) -> Iterator[ClientFactory]:
    clients: list[TestClient] = []

    def make(worker: bool = False, **overrides: Any) -> TestClient:
        from streams.api.app import create_app

        overrides.setdefault("catalog_path", catalog_path)
        settings = Settings(database_url=SecretStr(database_url), api_cache_ttl_s=0,
                            worker_url="http://worker.invalid:6066" if worker else None, **overrides)
        app = create_app(settings)
        if worker:
            app.state.explainer.transport = mock_worker(worker_states(catalog_path))
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.app.state.engine.dispose()  # type: ignore[attr-defined]
        client.close()


class TestExplain:
    def test_a_held_badge_names_its_deciding_event_and_kafka_position(self, make_client: ClientFactory) -> None:
        body = make_client().get("/v1/users/u-1/badges/first_quiz/explain").json()
        assert body["held"] and body["complete"] and body["requirements"] is None
        award = body["parts"][0]["award"]
        assert (award["event_id"], award["topic"], award["partition"], award["offset"]) == (
            "e-u-1-first_quiz-None-1", "user-events", 2, 41)
        assert body["state_source"] == "database"
        assert "BADGESTREAM_WORKER_URL" in body["unknown"][0]

    def test_tiers_from_the_database_held_and_in_progress(self, make_client: ClientFactory) -> None:
        body = make_client().get("/v1/users/u-1/badges/quiz_master/explain").json()
        parts = {p["tier"]: p for p in body["parts"]}
        assert parts["bronze"]["held"] and parts["bronze"]["award"]["event_id"] == "e-u-1-quiz_master-bronze-1"
        assert (parts["silver"]["held"], parts["silver"]["progress"], parts["silver"]["remaining"]) == (False, 37, 13)
        assert body["missing"][0] == "13 more quiz completed events for silver"
        assert body["last_event"]["at"].startswith("2026-11-2")

    def test_hidden_badges_are_404_unless_held_or_asked_with_the_token(self, make_client: ClientFactory) -> None:
        open_client = make_client()
        assert open_client.get("/v1/users/u-1/badges/recruiter/explain").status_code == 200  # held
        hidden = open_client.get("/v1/users/u-1/badges/secret_society/explain")
        assert hidden.status_code == 404 and hidden.json()["detail"] == "no badge 'secret_society'"
        secured = make_client(api_token=SecretStr("s3cret"))
        assert secured.get("/v1/users/u-1/badges/secret_society/explain").status_code == 401
        shown = secured.get("/v1/users/u-1/badges/secret_society/explain", headers=TOKEN).json()
        assert shown["kind"] == "streak" and shown["parts"][0]["progress"] == 2

    def test_an_unknown_badge_is_404_naming_it_and_a_bad_tz_is_422(self, make_client: ClientFactory) -> None:
        client = make_client()
        missing = client.get("/v1/users/u-1/badges/no_such_badge/explain")
        assert missing.status_code == 404 and "no_such_badge" in missing.json()["detail"]
        bad_tz = client.get("/v1/users/u-1/badges/first_quiz/explain?tz=Mars/Olympus")
        assert bad_tz.status_code == 422 and "tz" in bad_tz.json()["message"]

    def test_a_catalog_other_than_the_databases_is_said(self, make_client: ClientFactory,
                                                         catalog_path: Path) -> None:
        catalog_path.write_text(yaml.safe_dump({**CATALOG, "catalog_version": "2027-01-01"}))
        body = make_client().get("/v1/users/u-1/badges/first_quiz/explain").json()
        assert any("'2027-01-01'" in text and "'2026-11-26'" in text for text in body["unknown"])

    def test_a_catalog_that_cannot_be_loaded_is_503_without_its_path(self, make_client: ClientFactory,
                                                                      tmp_path: Path) -> None:
        client = make_client(catalog_path=tmp_path / "gone.yaml")
        for response in (client.get("/v1/users/u-1/badges/first_quiz/explain"),
                         client.post("/v1/users/u-1/what-if", content=quiz())):
            assert response.status_code == 503 and "gone.yaml" not in response.text
        assert client.get("/users/u-1").status_code == 200  # the page still shows, without "how to earn"

    def test_levels_are_explained_by_name(self, make_client: ClientFactory) -> None:
        body = make_client().get("/v1/users/u-1/badges/regular/explain").json()
        assert (body["kind"], body["name"], body["parts"][0]["remaining"]) == ("level", "Regular", 15)
        assert body["missing"] == ["15 more points (you have 35, Regular is at 50)"]

    def test_with_the_worker_a_streak_tells_its_current_run(self, make_client: ClientFactory) -> None:
        client = make_client(worker=True, api_token=SecretStr("s3cret"))
        body = client.get("/v1/users/u-1/badges/secret_society/explain?tz=Europe/Berlin", headers=TOKEN).json()
        assert body["state_source"] == "worker"
        assert body["unknown"] == ["the id of the last event that moved it: progress records carry only its time"]
        assert body["last_event"] == {"at": "2026-11-21T09:30:00+00:00", "event_id": None, "what": "progress"}
        rule = body["requirements"]["rule"]
        assert (rule["current"], rule["best"], rule["missing"], rule["last_active"]) == (4, 4, 26, "2026-11-04")
        # A user the worker has never seen: an empty state, known as such.
        nobody = client.get("/v1/users/nobody/badges/explorer/explain", headers=TOKEN).json()
        assert nobody["state_source"] == "worker" and nobody["parts"][0]["progress"] == 0

    def test_a_worker_that_does_not_answer_falls_back_to_the_database(self, make_client: ClientFactory) -> None:
        client = make_client(worker=True)

        def down(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        client.app.state.explainer.transport = httpx.MockTransport(down)  # type: ignore[attr-defined]
        body = client.get("/v1/users/u-1/badges/explorer/explain").json()
        assert body["state_source"] == "database" and "ConnectError" in body["unknown"][0]
        assert body["parts"][0]["progress"] == 3


def quiz(user: str = "u-1", **changes: Any) -> bytes:
    body = {"event_id": "w-1", "type": "quiz_completed", "user_id": user, "occurred_at": "2026-11-22T10:00:00+01:00",
            "tz": "Europe/Berlin", "data": {"quiz_id": "q9"}}
    body.update(changes)
    return orjson.dumps(body)


class TestWhatIf:
    def test_a_dry_run_on_the_live_state_stores_nothing(self, make_client: ClientFactory) -> None:
        client = make_client(worker=True)
        login = orjson.dumps({"event_id": "w-2", "type": "user_logged_in", "user_id": "u-1",
                              "occurred_at": "2026-11-05T09:00:00+00:00"})
        body = client.post("/v1/users/u-1/what-if", content=login).json()
        assert body["state_source"] == "worker" and body["matched"] and not body["duplicate"]
        # secret_society (hidden, not held) is moved by it, but not shown without the token.
        assert body["badges"] == [] and body["progress"] == []
        secured = make_client(worker=True, api_token=SecretStr("s3cret"))
        shown = secured.post("/v1/users/u-1/what-if", content=login, headers=TOKEN).json()
        assert [(b["badge_id"], b["progress_after"][0]["progress"]) for b in shown["badges"]] == [("secret_society", 5)]
        answer = client.post("/v1/users/u-1/what-if", content=quiz()).json()
        verdicts = {b["badge_id"]: b for b in answer["badges"]}
        assert verdicts["first_quiz"]["qualifies"] and [a["badge_id"] for a in verdicts["first_quiz"]["awards"]] == [
            "first_quiz"]
        assert verdicts["explorer"]["progress_before"] == [{"tier": None, "progress": 0, "target": 5}]
        assert verdicts["explorer"]["progress_after"] == [{"tier": None, "progress": 1, "target": 5}]
        # Nothing was kept: the same question gets the same answer.
        assert client.post("/v1/users/u-1/what-if", content=quiz()).json() == answer
        resent = client.post("/v1/users/u-1/what-if", content=orjson.dumps({
            "event_id": "ref-1", "type": "referral_signup", "user_id": "u-1",
            "occurred_at": "2026-11-06T08:00:00+00:00", "data": {"referred_user_id": "y"}})).json()
        assert resent["duplicate"] and "already evaluated" in resent["reason"]  # the worker's remembered ids

    def test_both_endpoints_are_in_the_openapi_document(self, make_client: ClientFactory) -> None:
        paths = make_client().get("/openapi.json").json()["paths"]
        body = paths["/v1/users/{user_id}/what-if"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {"event_id", "type", "user_id", "occurred_at"} <= set(body["required"])
        assert "/v1/users/{user_id}/badges/{badge_id}/explain" in paths

    def test_without_a_worker_it_says_what_it_could_not_know(self, make_client: ClientFactory) -> None:
        body = make_client().post("/v1/users/u-1/what-if", content=quiz()).json()
        assert body["state_source"] == "database"
        assert any("rule progress" in text for text in body["unknown"])
        assert body["points"]["before"] == 35  # the awards' points are known

    @pytest.mark.parametrize(("raw", "field"), [
        (quiz(occurred_at="yesterday"), "occurred_at"),
        (quiz(event_id=None), "event_id"),
        (quiz(user="u-2"), "user_id"),
        (b"{not json", "body"),
        (orjson.dumps({"event_id": "x", "type": "quiz_completed", "user_id": "u-1",
                       "occurred_at": "2026-11-22T10:00:00+00:00", "tz": "Nowhere/City"}), "tz"),
    ])
    def test_a_malformed_event_is_422_naming_the_field(self, make_client: ClientFactory, raw: bytes,
                                                        field: str) -> None:
        response = make_client().post("/v1/users/u-1/what-if", content=raw)
        assert response.status_code == 422, response.text
        assert field in response.json()["message"]
        assert field in {str(p) for problem in response.json()["detail"] for p in problem["loc"]}


def test_a_hidden_badge_not_yet_held_leaves_no_trace_in_a_what_if() -> None:
    """Not its verdict, its award, its progress, nor its points (demo catalog: recruiter is hidden, 20 points)."""
    from evaluators.what_if import what_if
    from streams.api.explain import _hide_unearned
    from streams.settings import DEMO_CATALOG

    badges = BadgeEngine(load_catalog(DEMO_CATALOG))
    state: UserState | None = None
    for number, kind in enumerate(["quiz_completed", "referral_signup", "referral_signup"]):
        data = {"quiz_id": "q1", "score": 1, "total_questions": 10} if kind == "quiz_completed" else {
            "referred_user_id": f"r{number}"}
        state = badges.evaluate(state, event(kind, f"2026-03-0{number + 2}T10:00:00+00:00", user="u", **data)).state
    assert state is not None
    answer = what_if(badges, state, event("referral_signup", "2026-03-05T10:00:00+00:00", user="u",
                                          referred_user_id="r9"))
    assert [a["badge_id"] for a in answer["awards"]] == ["recruiter"] and answer["points"]["after"] == 30
    _hide_unearned(badges, state, answer)
    assert (answer["awards"], answer["badges"], answer["progress"]) == ([], [], [])
    assert answer["points"] == {"before": 10, "after": 10}
