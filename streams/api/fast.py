"""The hot read endpoints answered in front of FastAPI: a well-formed GET of a user, the badge list or an
index-backed leaderboard goes straight from the views to orjson bytes, with no routing, dependency solving,
parameter models, middleware stack or thread-pool hop per request.

Everything else goes on to the FastAPI application, which stays the one definition of the API: its routes
give the OpenAPI document and answer every request this module declines (a parameter it does not accept
exactly, a missing token, ``include_hidden`` without one, a ``since``/``until`` window). So every 4xx still
comes from FastAPI, word for word, and what this module answers is what FastAPI would have answered (a
functional test compares the bytes). Its checks accept a subset of what FastAPI accepts, never more.

The views run on the event loop: the fast paths are index range scans of a few rows (bench/api), for
which a thread-pool hop costs more than the query; the slow ones (windows over the awards) stay on FastAPI's
thread pool.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
import sqlalchemy as sa
from fastapi.exceptions import RequestValidationError
from starlette.types import Receive, Scope, Send

from streams.api.views import Views

log = logging.getLogger(__name__)

LeaderboardTimes = Callable[[Any, str | None, str | None, str | None],
                            tuple[datetime | None, datetime | None, datetime | None]]
Answer = tuple[int, bytes]

DATABASE_DOWN = {"detail": "the award database is unavailable; try again shortly"}
_JSON_HEADERS = [(b"content-type", b"application/json")]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LIMIT = re.compile(r"[1-9][0-9]{0,3}")
_BY = {"badges", "points"}
_PERIODS = {"day", "week", "month", "all"}
_LEADERBOARD_PARAMETERS = {"limit", "around", "by", "period", "at", "badge_id"}
USER_ROUTE, BADGES_ROUTE, LEADERBOARD_ROUTE = "/v1/users/{user_id}", "/v1/badges", "/v1/leaderboard"


def authorization(scope: Scope) -> str:
    """The ``Authorization`` header of a request (the first one, as Starlette reads headers), or ""."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return ""


class _Route:
    """What ``scope["route"]`` needs for the metrics: the route's path template."""

    def __init__(self, path: str) -> None:
        self.path = path


class FastPaths:
    """``await handled(scope, receive, send)``: True when this answered the request, False to pass it on."""

    def __init__(self, views: Views, *, token: str | None, authorised: Callable[[str], bool],
                 leaderboard_times: LeaderboardTimes, id_length: int,
                 record: Callable[[str, int, float], None]) -> None:
        self.views = views
        self.token = token
        self.authorised = authorised
        self.leaderboard_times = leaderboard_times
        self.id_length = id_length
        self.record = record
        self.routes = {path: _Route(path) for path in (USER_ROUTE, BADGES_ROUTE, LEADERBOARD_ROUTE)}

    async def handled(self, scope: Scope, receive: Receive, send: Send) -> bool:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return False
        began = time.perf_counter()
        path: str = scope["path"]
        answer: Callable[[], Answer | None] | None = None
        route = ""
        if path.startswith("/v1/users/"):
            route, user_id = USER_ROUTE, path[len("/v1/users/"):]
            if self._id(user_id) and "/" not in user_id:
                answer = lambda: self._json(self.views.user(user_id))  # noqa: E731
        elif path == BADGES_ROUTE:
            route, answer = BADGES_ROUTE, lambda: self._badges(scope)
        elif path == LEADERBOARD_ROUTE:
            route, answer = LEADERBOARD_ROUTE, lambda: self._leaderboard(scope)
        if answer is None or (self.token is not None and not self.authorised(authorization(scope))):
            return False
        try:
            result = answer()
        except sa.exc.SQLAlchemyError as exc:
            # As app.database_down: the driver's message can carry the host, user or URL.
            log.error("database unavailable for GET %s: %s", path, type(exc).__name__)
            result = 503, orjson.dumps(DATABASE_DOWN)
        if result is None:
            return False
        status, body = result
        scope["route"] = self.routes[route]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]})
        await send({"type": "http.response.body", "body": body})
        self.record(route, status, time.perf_counter() - began)
        return True

    @staticmethod
    def _json(value: Any) -> Answer:
        return 200, orjson.dumps(value)

    def _id(self, value: str) -> bool:
        return 0 < len(value) <= self.id_length and _CONTROL.search(value) is None

    @staticmethod
    def _query(scope: Scope, allowed: set[str]) -> dict[str, str] | None:
        """The query parameters as Starlette reads them, or None when one is unknown or repeated."""
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs) or not params.keys() <= allowed:
            return None
        return params

    def _badges(self, scope: Scope) -> Answer | None:
        params = self._query(scope, {"include_hidden"})
        if params is None:
            return None
        hidden = params.get("include_hidden", "false")
        if hidden not in ("true", "false") or (hidden == "true" and self.token is None):
            return None  # FastAPI's 422 or 403
        return self._json(self.views.badges(hidden == "true"))

    def _leaderboard(self, scope: Scope) -> Answer | None:
        params = self._query(scope, _LEADERBOARD_PARAMETERS)
        if params is None:
            return None
        limit, by, period = params.get("limit", "10"), params.get("by", "badges"), params.get("period", "all")
        around, badge_id, at = params.get("around"), params.get("badge_id"), params.get("at")
        if (_LIMIT.fullmatch(limit) is None or int(limit) > 1000 or by not in _BY or period not in _PERIODS
                or (around is not None and not self._id(around)) or (badge_id is not None and not self._id(badge_id))
                or (at is not None and len(at) > 64) or (badge_id is not None and period != "all")):
            return None  # a 422 from FastAPI, or one badge within a period: ranked over the awards
        try:
            _, _, moment = self.leaderboard_times(period, None, None, at)
        except RequestValidationError:
            return None
        rows = self.views.leaderboard(by=by, period=period, at=moment, badge_id=badge_id,  # type: ignore[arg-type]
                                      limit=int(limit), around=around)
        return None if rows is None else self._json(rows)  # None: FastAPI's 404 for ``around``


__all__ = ["DATABASE_DOWN", "FastPaths", "authorization"]
