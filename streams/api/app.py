"""The read API application: ``create_app()`` wires routes, bearer-token auth, errors, metrics and the pages.

Safe by default: the CLI binds 127.0.0.1; with ``BADGESTREAM_API_TOKEN`` set every ``/v1`` call
needs ``Authorization: Bearer <token>``, and ``include_hidden`` is refused (403) unless a token is
configured, since without one nobody can be told apart. Bad parameters get 422 naming the parameter;
a database that cannot be reached gets 503 with neither URL nor password in the body or the log;
nothing a caller sends produces a 5xx. The profile pages (``/``, ``/users/{user_id}``) are public
and never show hidden badges that are not earned.
"""

from __future__ import annotations

import hmac
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streams import db
from streams.api.emblems import emblem_svg
from streams.api.explain import Explainer
from streams.api.explain_routes import register_explain_routes
from streams.api.fast import DATABASE_DOWN, FastPaths
from streams.api.profile import profile
from streams.api.views import PeriodName, RankBy, Views
from streams.db.aggregates import period_bounds, period_start
from streams.settings import Settings

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters: PostgreSQL refuses NUL in text
"""Ids a caller may send: 1..255 characters (``db.ID_LENGTH``), no control characters."""
# Module level: with postponed annotations FastAPI resolves these names in the module's namespace.
Id = Annotated[str, PathParam(min_length=1, max_length=db.ID_LENGTH, pattern=ID_PATTERN)]
OptionalId = Annotated[str | None, Query(min_length=1, max_length=db.ID_LENGTH, pattern=ID_PATTERN)]
Instant = Annotated[str | None, Query(max_length=64, description="ISO 8601 time; without offset: UTC")]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status_code, media_type="application/json")


def _param_error(where: str, name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": (where, name), "msg": message, "type": "value_error"}])


def _instant(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 / ISO 8601 time from a query parameter, in UTC (a time without offset is taken as UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _param_error("query", name, "not a time: use ISO 8601, e.g. 2026-06-01T00:00:00Z") from None


def leaderboard_times(period: PeriodName, since: str | None, until: str | None,
                      at: str | None) -> tuple[datetime | None, datetime | None, datetime | None]:
    """``since``, ``until`` and ``at`` of a leaderboard request as times, checked together with ``period``
    (``RequestValidationError`` naming the parameter when they do not fit)."""
    start, end, moment = _instant("since", since), _instant("until", until), _instant("at", at)
    if start is not None and end is not None and end <= start:
        raise _param_error("query", "until", "must be later than since")
    if period != "all" and (start is not None or end is not None):
        raise _param_error("query", "period", "a period and a since/until window exclude each other")
    if moment is not None:
        if period == "all":
            raise _param_error("query", "at", "picks a past day, week or month: give period too")
        try:
            period_bounds(period, period_start(period, moment))
        except (OverflowError, ValueError):
            raise _param_error("query", "at", "the period is out of range") from None
    return start, end, moment


class _Metrics:
    """Request counts and latencies per route, on the app's own registry (one app, one registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("badgestream_api_requests", "HTTP requests answered", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("badgestream_api_request_seconds", "time to answer a request", ["route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5))

    def record(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class ReadAPI(FastAPI):
    """The FastAPI application with the hot endpoints' fast paths in front (``streams.api.fast``): a request
    they decline goes through FastAPI as usual. ``fast_paths = None`` sends everything through FastAPI."""

    fast_paths: FastPaths | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_paths is not None and await self.fast_paths.handled(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


class _MetricsMiddleware:
    """Counts and times every HTTP request; pure ASGI (BaseHTTPMiddleware costs more than our endpoints do)."""

    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.record(getattr(scope.get("route"), "path", "unmatched"), status, time.perf_counter() - began)


def create_app(settings: Settings | None = None) -> ReadAPI:
    """The application over ``settings.database_url`` (no schema needed at start: missing tables give 503)."""
    settings = settings or Settings()
    engine = db.make_engine(settings.database_url_value, **_engine_options(settings.database_url_value,
                                                                           settings.api_statement_timeout_s))
    views = Views(engine, settings.api_cache_ttl_s)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    templates = Jinja2Templates(directory=str(TEMPLATES))  # autoescapes HTML by default
    templates.env.globals["emblem"] = emblem_svg
    metrics = _Metrics()

    app = ReadAPI(
        title="badgestream read API",
        description="A user's badges, progress and rarity, the badge list, leaderboards and award evidence.",
        version="1",
    )
    app.state.views = views
    app.state.engine = engine

    def authorised_by(header: str) -> bool:
        scheme, _, presented = header.partition(" ")
        return token is not None and scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), token.encode())

    def authorised(request: Request) -> bool:
        return authorised_by(request.headers.get("authorization", ""))

    async def require_token(request: Request) -> None:
        # async: FastAPI runs a sync dependency on the thread pool, one more thread hop per request.
        if token is not None and not authorised(request):
            raise HTTPException(401, "a bearer token is required: Authorization: Bearer <BADGESTREAM_API_TOKEN>",
                                headers={"WWW-Authenticate": "Bearer"})

    # --- errors ---------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # The caller's input is not echoed back (it may be megabytes): location, message and type suffice.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        names = ", ".join(str(e["loc"][-1]) for e in errors if e["loc"])
        return _json({"detail": errors, "message": f"invalid parameter: {names}"}, 422)

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def database_down(request: Request, exc: sa.exc.SQLAlchemyError) -> Response:
        # The driver's message can carry the host, user or URL: only the exception class is logged.
        log.error("database unavailable for %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return _json(DATABASE_DOWN, 503)

    # --- health and metrics ------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="liveness and database reachability")
    def healthz() -> Response:
        with engine.connect() as conn:
            migrated = sa.inspect(conn).has_table("alembic_version")
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() if migrated else None
        if revision is None:
            return _json({"status": "no schema yet: run `badgestream db upgrade` or start the sink",
                          "schema_revision": None}, 503)
        return _json({"status": "ok", "schema_revision": revision})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics of this process")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- /v1 ------------------------------------------------------------------------------------

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], tags=["v1"])

    @v1.get("/users/{user_id}", summary="a user's held badges with rarity, progress with remaining")
    def get_user(user_id: Id) -> Response:
        return _json(views.user(user_id))

    @v1.get("/badges", summary="every badge with holders and rarity")
    def get_badges(include_hidden: bool = False) -> Response:
        if include_hidden and token is None:
            raise HTTPException(403, "include_hidden needs an authorised caller: set BADGESTREAM_API_TOKEN")
        return _json(views.badges(include_hidden))

    @v1.get("/leaderboard", summary="users by awards held (or points) all time, per day, week or month; "
                                     "competition ranks")
    def get_leaderboard(
        badge_id: OptionalId = None,
        since: Instant = None,
        until: Instant = None,
        limit: Limit = 10,
        around: OptionalId = None,
        by: RankBy = "badges",
        period: PeriodName = "all",
        at: Instant = None,
    ) -> Response:
        start, end, moment = leaderboard_times(period, since, until, at)
        rows = views.leaderboard(by=by, period=period, at=moment, badge_id=badge_id, since=start, until=end,
                                 limit=limit, around=around)
        if rows is None:
            raise HTTPException(404, f"user {around!r} (around) holds no award on this leaderboard")
        return _json(rows)

    @v1.get("/awards/{award_id}", summary="one award with its evidence")
    def get_award(award_id: Id) -> Response:
        award = views.award(award_id)
        if award is None:
            raise HTTPException(404, f"no award {award_id!r}")
        return _json(award)

    explainer = app.state.explainer = Explainer(settings, engine)
    register_explain_routes(v1, explainer, authorised)
    app.include_router(v1)

    # --- pages ----------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, tags=["pages"],
             summary="leaderboards (all time, today, this week, this month) and the badge list")
    def index_page(request: Request, period: PeriodName = "all") -> Response:
        page: Response = templates.TemplateResponse(request, "index.html", {
            "period": period,
            "leaderboard": views.leaderboard(period=period, limit=10) or [],
            "points_board": views.leaderboard(by="points", period=period, limit=10) or [],
            "badges": views.badges(include_hidden=False),
        })
        return page

    @app.get("/users/{user_id}", response_class=HTMLResponse, tags=["pages"], summary="a user's profile page")
    def user_page(request: Request, user_id: Id) -> Response:
        user = views.user(user_id)
        page: Response = templates.TemplateResponse(request, "user.html", {"user": user,
                                                                           "profile": profile(user, explainer)})
        return page

    @app.get("/emblems/{badge_id}.svg", tags=["pages"], summary="a badge's emblem")
    def emblem(badge_id: Id, tier: OptionalId = None) -> Response:
        with engine.connect() as conn:
            info = views.catalog(conn).get(badge_id)
        if info is None or info.hidden:
            raise HTTPException(404, f"no visible badge {badge_id!r}")
        return Response(str(emblem_svg(info.id, info.name, tier)), media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=3600"})

    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.fast_paths = FastPaths(views, token=token, authorised=authorised_by, leaderboard_times=leaderboard_times,
                               id_length=db.ID_LENGTH, record=metrics.record)
    return app


def _engine_options(url: str, statement_timeout_s: float = 0.0) -> dict[str, Any]:
    """Read-only use: autocommit (no BEGIN/ROLLBACK round trips around every request, which bench/api showed
    costing more than the queries) and no pre-ping (another round trip; after a database restart the pool is
    invalidated by the first failed request, which gets a 503). PostgreSQL: a pool as wide as the thread pool
    that runs the endpoints (40 threads in AnyIO), and ``statement_timeout_s`` as the bound of a query and of
    a new connection (the fast paths query on the event loop)."""
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"}
    if sa.make_url(url).get_backend_name() == "postgresql":
        options.update(pool_pre_ping=False, pool_size=20, max_overflow=20, pool_timeout=5)
        if statement_timeout_s > 0:
            options["connect_args"] = {"connect_timeout": max(1, round(statement_timeout_s)),
                                       "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}"}
    return options
