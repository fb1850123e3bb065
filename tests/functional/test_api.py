"""Contract tests of the read API (``streams.api``), in-process with Starlette's TestClient, on SQLite and PostgreSQL.

A small database of known awards and progress, then the JSON endpoints checked field by field:
held badges with rarity, progress with ``remaining``, hidden badges absent until earned, holders,
competition ranks, season windows, points, evidence, revoked awards held nowhere (including after
a replay ``--revoke``), auth, 422 naming the parameter, 503 without secrets when the database is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from schemas.records import make_award_id
from streams import db
from streams.api.app import create_app
from streams.settings import Settings
from tests.functional.api_data import AWARDS, T0, award, fill


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = fill(database_url)
    yield engine
    engine.dispose()


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(engine: Engine, database_url: str) -> Iterator[ClientFactory]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(database_url=SecretStr(database_url), api_cache_ttl_s=0, **overrides)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.app.state.engine.dispose()  # type: ignore[attr-defined]
        client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


class TestReadAPI:
    """Every test runs on SQLite and on PostgreSQL (``database_url`` is parametrised)."""

    def test_user_has_held_badges_with_rarity_and_progress_with_remaining(self, client: TestClient) -> None:
        body = client.get("/v1/users/u-1").json()
        assert body["user_id"] == "u-1"
        assert [(b["badge_id"], b["tier"], b["name"]) for b in body["badges"]] == [
            ("first_quiz", None, "First Quiz"), ("quiz_master", "bronze", "Quiz Master"),
            ("recruiter", None, "Recruiter")]
        first = body["badges"][0]
        assert first["award_id"] == make_award_id("u-1", "first_quiz", None, 1)
        assert first["awarded_at"] == T0.isoformat() and first["event_id"] == "e-u-1-first_quiz-None-1"
        assert first["occurrence"] == 1 and first["description"] == "Complete your first quiz."
        # 4 known users (u-4 has only progress): first_quiz is held by 3 of them, bronze by 1.
        assert first["rarity"] == pytest.approx(3 / 4)
        assert body["badges"][1]["rarity"] == pytest.approx(1 / 4)
        assert body["points"] == 35
        assert body["level"] is None
        assert body["next_level"] == {"id": "regular", "name": "Regular", "at": 50, "remaining": 15}
        # Bronze is earned (no progress shown for it); secret_society is hidden and not earned: absent.
        assert body["progress"] == [
            {"badge_id": "explorer", "name": "Explorer", "tier": None, "progress": 3, "target": 5, "remaining": 2},
            {"badge_id": "quiz_master", "name": "Quiz Master", "tier": "silver", "progress": 37, "target": 50,
             "remaining": 13},
        ]
        assert body["locked"] == []  # every visible badge is earned or under way
        assert "secret_society" not in str(body)

    def test_unknown_user_is_200_with_empty_lists_and_every_visible_badge_locked(self, client: TestClient) -> None:
        body = client.get("/v1/users/nobody").json()
        assert (body["badges"], body["progress"], body["points"]) == ([], [], 0)
        assert [b["badge_id"] for b in body["locked"]] == ["explorer", "first_quiz", "quiz_master"]

    def test_badge_list_has_holders_and_rarity_and_withholds_hidden_names(self, client: TestClient) -> None:
        badges = {b["badge_id"]: b for b in client.get("/v1/badges").json()}
        assert set(badges) == {"first_quiz", "quiz_master", "explorer", "recruiter", "secret_society", "regular",
                               "expert"}
        assert (badges["regular"]["kind"], badges["first_quiz"]["kind"]) == ("level", "badge")
        assert (badges["first_quiz"]["holders"], badges["first_quiz"]["rarity"]) == (3, 0.75)
        assert badges["quiz_master"]["tiers"] == [
            {"tier": "bronze", "target": 10, "holders": 1, "rarity": 0.25},
            {"tier": "silver", "target": 50, "holders": 0, "rarity": 0.0},
            {"tier": "gold", "target": 100, "holders": 0, "rarity": 0.0},
        ]
        assert badges["recruiter"]["hidden"] and badges["recruiter"]["holders"] == 1
        assert badges["recruiter"]["name"] is None and badges["recruiter"]["description"] is None
        assert badges["secret_society"]["name"] is None

    def test_include_hidden_is_refused_without_a_token_and_shows_names_with_it(
        self, make_client: ClientFactory
    ) -> None:
        assert make_client().get("/v1/badges?include_hidden=true").status_code == 403
        secured = make_client(api_token=SecretStr("s3cret"))
        assert secured.get("/v1/badges?include_hidden=true").status_code == 401
        shown = secured.get("/v1/badges?include_hidden=true", headers={"Authorization": "Bearer s3cret"}).json()
        assert {b["badge_id"]: b["name"] for b in shown}["secret_society"] == "Secret Society"

    def test_with_a_token_every_v1_call_needs_it_and_pages_stay_public(self, make_client: ClientFactory) -> None:
        client = make_client(api_token=SecretStr("s3cret"))
        award_id = make_award_id("u-1", "first_quiz", None, 1)
        for path in ("/v1/users/u-1", "/v1/badges", "/v1/leaderboard", f"/v1/awards/{award_id}"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert client.get("/users/u-1").status_code == 200
        assert client.get("/healthz").status_code == 200

    def test_leaderboard_ranks_ties_competition_style(self, client: TestClient) -> None:
        rows = client.get("/v1/leaderboard").json()
        assert [(r["rank"], r["user_id"], r["badges"]) for r in rows] == [(1, "u-1", 3), (2, "u-2", 2),
                                                                          (3, "u-3", 1)]
        # Only first_quiz: all three tie.
        rows = client.get("/v1/leaderboard?badge_id=first_quiz").json()
        assert [(r["rank"], r["user_id"]) for r in rows] == [(1, "u-1"), (1, "u-2"), (1, "u-3")]
        assert len(client.get("/v1/leaderboard?limit=2").json()) == 2

    def test_leaderboard_window_by_points_and_around(self, client: TestClient) -> None:
        since, until = (T0 + timedelta(days=1)).isoformat(), (T0 + timedelta(days=4)).isoformat()
        rows = client.get("/v1/leaderboard", params={"since": since, "until": until}).json()
        # [day 1, day 4): u-1's bronze and recruiter, u-2's first_quiz; explorer (day 4) is outside.
        assert [(r["rank"], r["user_id"], r["badges"]) for r in rows] == [(1, "u-1", 2), (2, "u-2", 1)]
        rows = client.get("/v1/leaderboard?by=points").json()
        assert [(r["rank"], r["user_id"], r["points"]) for r in rows] == [(1, "u-2", 60), (2, "u-1", 35),
                                                                          (3, "u-3", 10)]
        rows = client.get("/v1/leaderboard?around=u-3&limit=2").json()
        assert [r["user_id"] for r in rows] == ["u-2", "u-3"]
        assert client.get("/v1/leaderboard?around=u-4").status_code == 404  # holds nothing

    def test_recurring_periods_rank_the_awards_of_that_day_week_or_month(self, client: TestClient) -> None:
        # T0 is Saturday 2026-11-21: u-1 on days 0-2 (Sat, Sun, Mon), u-2 on days 3-4, u-3 on day 5.
        def board(**params: str) -> list[tuple[int, str, int, int]]:
            response = client.get("/v1/leaderboard", params=params)
            assert response.status_code == 200, response.text
            return [(r["rank"], r["user_id"], r["badges"], r["points"]) for r in response.json()]

        assert board(period="day", at="2026-11-21T23:59:59Z") == [(1, "u-1", 1, 10)]
        assert board(period="day", at="2026-11-22T01:00:00+03:00") == [(1, "u-1", 1, 10)]  # still the 21st in UTC
        assert board(period="week", at="2026-11-16") == [(1, "u-1", 2, 30)]  # Monday 16th to Sunday 22nd
        assert board(period="week", at="2026-11-24T12:00:00") == [(1, "u-2", 2, 60), (2, "u-1", 1, 5),
                                                                  (2, "u-3", 1, 10)]
        assert board(period="week", at="2026-11-24", by="points") == [(1, "u-2", 2, 60), (2, "u-3", 1, 10),
                                                                      (3, "u-1", 1, 5)]
        assert board(period="week", at="2026-11-24", around="u-3", limit="2") == [(2, "u-1", 1, 5),
                                                                                 (2, "u-3", 1, 10)]
        assert board(period="month", at="2026-11-30") == board(period="all") == board() == [
            (1, "u-1", 3, 35), (2, "u-2", 2, 60), (3, "u-3", 1, 10)]
        assert board(period="month", at="2026-10-31") == []
        # One badge within a period: ranked from the awards in the period's bounds.
        assert board(period="week", at="2026-11-24", badge_id="first_quiz") == [(1, "u-2", 1, 10), (1, "u-3", 1, 10)]
        assert client.get("/v1/leaderboard?period=week&at=2026-11-24&around=u-4").status_code == 404

    def test_front_page_has_period_tabs_over_the_same_boards(self, client: TestClient) -> None:
        page = client.get("/").text
        assert '<a href="/?period=all" aria-current="page">All time</a>' in page
        assert page.index(">u-1</a>") < page.index(">u-2</a>") < page.index(">u-3</a>")
        week = client.get("/?period=week")
        assert week.status_code == 200 and '<a href="/?period=week" aria-current="page">This week</a>' in week.text
        # The page's week is this week (the clock's): it shows what the API's board for now shows.
        shown = "No awards yet." if not client.get("/v1/leaderboard?period=week").json() else ">u-"
        assert shown in week.text.split('id="all-badges"')[0]
        assert client.get("/?period=year").status_code == 422

    def test_award_has_its_evidence(self, client: TestClient) -> None:
        award_id = make_award_id("u-1", "first_quiz", None, 1)
        body = client.get(f"/v1/awards/{award_id}").json()
        assert (body["topic"], body["partition"], body["offset"]) == ("user-events", 2, 41)
        assert body["event_id"] == "e-u-1-first_quiz-None-1" and body["catalog_version"] == "2026-11-26"
        assert body["metadata"] == {"progress": 1, "target": 1} and body["revoked_at"] is None
        unknown_source = client.get(f"/v1/awards/{make_award_id('u-2', 'explorer', None, 1)}").json()
        assert (unknown_source["topic"], unknown_source["partition"], unknown_source["offset"]) == (None, None, None)
        assert client.get("/v1/awards/no-such-award").status_code == 404

    def test_revoked_awards_are_held_nowhere(self, engine: Engine, client: TestClient) -> None:
        with engine.begin() as conn:
            db.upsert_awards(conn, [award("u-1", "recruiter", kind="revocation"),
                                    award("u-2", "first_quiz", kind="revocation")])
        user = client.get("/v1/users/u-1").json()
        assert "recruiter" not in [b["badge_id"] for b in user["badges"]]
        badges = {b["badge_id"]: b for b in client.get("/v1/badges").json()}
        assert (badges["recruiter"]["holders"], badges["first_quiz"]["holders"]) == (0, 2)
        board = client.get("/v1/leaderboard?badge_id=first_quiz").json()
        assert [r["user_id"] for r in board] == ["u-1", "u-3"]
        evidence = client.get(f"/v1/awards/{make_award_id('u-2', 'first_quiz', None, 1)}").json()
        assert evidence["revoked_at"] is not None

    @pytest.mark.kafka
    def test_after_a_replay_revoke_the_revoked_awards_are_held_nowhere(
        self, engine: Engine, client: TestClient, kafka_bootstrap: str, topic_factory: Callable[..., str]
    ) -> None:
        from streams.replay.replay import apply_diff, database_awards, diff

        # A rule change: the replay no longer finds u-1's recruiter nor u-3's first_quiz.
        gone = {make_award_id("u-1", "recruiter", None, 1), make_award_id("u-3", "first_quiz", None, 1)}
        replayed = {a.award_id: a for a in AWARDS if a.award_id not in gone}
        found = diff(replayed, database_awards(engine))
        assert {r["award_id"] for r in found.no_longer_qualifying} == gone
        settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, awards_topic=topic_factory("awards"))
        assert apply_diff(settings, engine, found, add=False, revoke=True) == {"added": 0, "revoked": 2}

        assert [b["badge_id"] for b in client.get("/v1/users/u-1").json()["badges"]] == ["first_quiz", "quiz_master"]
        assert client.get("/v1/users/u-3").json()["badges"] == []
        badges = {b["badge_id"]: b for b in client.get("/v1/badges").json()}
        assert (badges["recruiter"]["holders"], badges["first_quiz"]["holders"]) == (0, 2)
        assert badges["first_quiz"]["rarity"] == pytest.approx(2 / 4)  # u-3 is still a known user
        board = client.get("/v1/leaderboard").json()
        assert [(r["rank"], r["user_id"], r["badges"]) for r in board] == [(1, "u-1", 2), (1, "u-2", 2)]
        for award_id in gone:
            assert client.get(f"/v1/awards/{award_id}").json()["revoked_at"] is not None

    @pytest.mark.parametrize(("path", "parameter"), [
        ("/v1/users/" + "x" * 256, "user_id"),
        ("/v1/awards/" + "a" * 256, "award_id"),
        ("/v1/leaderboard?limit=0", "limit"),
        ("/v1/leaderboard?limit=1001", "limit"),
        ("/v1/leaderboard?limit=ten", "limit"),
        ("/v1/leaderboard?since=yesterday", "since"),
        ("/v1/leaderboard?until=2026-13-01", "until"),
        ("/v1/leaderboard?since=0001-01-01T00:00:00%2B05:00", "since"),
        ("/v1/leaderboard?since=2026-02-01&until=2026-01-01", "until"),
        ("/v1/leaderboard?badge_id=" + "b" * 256, "badge_id"),
        ("/v1/leaderboard?around=" + "u" * 256, "around"),
        ("/v1/leaderboard?by=karma", "by"),
        ("/v1/leaderboard?period=year", "period"),
        ("/v1/leaderboard?period=week&since=2026-01-01", "period"),
        ("/v1/leaderboard?at=2026-01-01", "at"),
        ("/v1/leaderboard?period=day&at=tuesday", "at"),
        ("/v1/leaderboard?period=month&at=9999-12-31", "at"),
        ("/v1/leaderboard?period=month&at=9999-12-31&badge_id=first_quiz", "at"),
        ("/v1/users/u%00-1", "user_id"),
        ("/v1/badges?include_hidden=perhaps", "include_hidden"),
    ])
    def test_bad_parameters_get_422_naming_the_parameter(self, client: TestClient, path: str, parameter: str) -> None:
        response = client.get(path)
        assert response.status_code == 422, response.text
        assert parameter in response.json()["message"]
        assert "x" * 256 not in response.text  # the input is not echoed back

    def test_odd_input_never_gets_a_5xx(self, client: TestClient) -> None:
        for user_id in ("ü-ñ", "a/b", "%ff", "' OR 1=1 --", "x" * 255, "\u202e", "🙂"):
            response = client.get("/v1/users/" + user_id.replace("%", "%25").replace("/", "%2F"))
            assert response.status_code < 500, (user_id, response.status_code)
            assert client.get("/users/" + user_id.replace("%", "%25").replace("/", "%2F")).status_code < 500

    def test_health_metrics_and_openapi(self, client: TestClient) -> None:
        assert client.get("/healthz").json() == {"status": "ok", "schema_revision": "0004"}
        client.get("/v1/users/u-1")
        metrics = client.get("/metrics").text
        assert 'badgestream_api_requests_total{route="/v1/users/{user_id}",status="200"}' in metrics
        spec = client.get("/openapi.json").json()
        assert {"/v1/users/{user_id}", "/v1/badges", "/v1/leaderboard", "/v1/awards/{award_id}"} <= set(spec["paths"])
        assert client.get("/docs").status_code == 200


FAST = ["/v1/users/u-1", "/v1/users/nobody", "/v1/users/%C3%BC-%C3%B1", "/v1/users/u-1?unused=1", "/v1/badges",
        "/v1/badges?include_hidden=false", "/v1/leaderboard", "/v1/leaderboard?limit=2", "/v1/leaderboard?by=points",
        "/v1/leaderboard?around=u-3&limit=2", "/v1/leaderboard?period=week&at=2026-11-24&by=points",
        "/v1/leaderboard?period=day&at=2026-11-22T01:00:00%2B03:00", "/v1/leaderboard?period=month&at=2026-10-31",
        "/v1/leaderboard?badge_id=first_quiz&limit=1000"]
DECLINED = ["/v1/users/" + "x" * 256, "/v1/users/u%00-1", "/v1/badges?include_hidden=true",
            "/v1/badges?include_hidden=1", "/v1/leaderboard?around=u-4", "/v1/leaderboard?limit=0",
            "/v1/leaderboard?limit=010", "/v1/leaderboard?limit=1&limit=2", "/v1/leaderboard?by=karma",
            "/v1/leaderboard?at=2026-01-01", "/v1/leaderboard?period=month&at=9999-12-31",
            "/v1/leaderboard?since=2026-11-22", "/v1/leaderboard?period=week&at=2026-11-24&badge_id=first_quiz",
            "/v1/users/u-1/", "/v1/awards/x"]


def test_the_fast_paths_answer_exactly_what_fastapi_answers(make_client: ClientFactory) -> None:
    """``streams.api.fast`` answers the well-formed hot requests itself, with FastAPI's bytes; the rest it passes on."""
    fast, plain = make_client(), make_client()
    plain.app.fast_paths = None  # type: ignore[attr-defined]
    paths = fast.app.fast_paths  # type: ignore[attr-defined]
    answered: list[str] = []
    handled = paths.handled

    async def spy(scope: Any, receive: Any, send: Any) -> bool:
        done: bool = await handled(scope, receive, send)
        if done:
            answered.append(f"{scope['path']}?{scope['query_string'].decode()}".rstrip("?"))
        return done

    paths.handled = spy
    for path in FAST + DECLINED:
        mine, theirs = fast.get(path), plain.get(path)
        assert (mine.status_code, mine.headers.get("content-type"), mine.content) == (
            theirs.status_code, theirs.headers.get("content-type"), theirs.content), path
    # FastAPI redirects /v1/users/u-1/ to /v1/users/u-1, which the fast path answers.
    assert answered == [*(path if "?" in path else unquote(path) for path in FAST), "/v1/users/u-1"]
    for path in ("/v1/users/u-1", "/v1/badges", "/v1/leaderboard"):
        with_token = make_client(api_token=SecretStr("s3cret"))
        assert with_token.get(path).status_code == 401  # declined: FastAPI's answer
        assert with_token.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    metrics = fast.get("/metrics").text
    assert 'badgestream_api_requests_total{route="/v1/leaderboard",status="200"}' in metrics


def test_a_database_outage_is_503_without_url_or_password(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql+psycopg://badgestream:hunter2-secret@127.0.0.1:9/awards"  # nothing listens on port 9
    settings = Settings(database_url=SecretStr(url), api_cache_ttl_s=0)
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for path in ("/v1/users/u-1", "/v1/badges", "/v1/leaderboard", "/users/u-1", "/", "/healthz"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.status_code)
            assert "hunter2" not in response.text and "127.0.0.1" not in response.text
    assert "hunter2" not in caplog.text and "9/awards" not in caplog.text
