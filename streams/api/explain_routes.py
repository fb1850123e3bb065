"""The explain and what-if endpoints under ``/v1`` (answers: ``streams.api.explain``; contract: docs/api.md).

No ``from __future__ import annotations`` here: the parameter types come from ``streams.api.app`` at
registration time, and FastAPI must see them as objects, not as names to look up in this module.
"""

import logging
from collections.abc import Callable
from typing import Annotated
from zoneinfo import ZoneInfoNotFoundError

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from schemas.errors import CatalogError, InvalidEventError
from schemas.events import MAX_EVENT_BYTES, EventEnvelope, zone
from streams.api.explain import Explainer, UnknownBadge, event_problems

log = logging.getLogger(__name__)

TimeZone = Annotated[str, Query(min_length=1, max_length=64, description="the user's IANA time zone, for the window")]


def register_explain_routes(router: APIRouter, explainer: Explainer, authorised: Callable[[Request], bool]) -> None:
    """Add ``GET /users/{user_id}/badges/{badge_id}/explain`` and ``POST /users/{user_id}/what-if`` to ``router``."""
    from streams.api.app import Id, _json, _param_error

    def catalog_or_503() -> None:
        try:
            explainer.engine  # noqa: B018  # loads the catalog on first use
        except CatalogError as exc:
            log.error("explain and what-if: the badge catalog cannot be loaded: %s", exc)
            raise HTTPException(503, "the badge catalog cannot be loaded (BADGESTREAM_CATALOG_PATH; see the log)") \
                from None

    @router.get("/users/{user_id}/badges/{badge_id}/explain",
                summary="why a user holds a badge, or what is still missing (per tier and occurrence)")
    def explain(request: Request, user_id: Id, badge_id: Id, tz: TimeZone = "UTC") -> Response:
        try:
            zone(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise _param_error("query", "tz", f"unknown time zone {tz!r} (an IANA name, e.g. Europe/Berlin)") from None
        catalog_or_503()
        try:
            return _json(explainer.explain(user_id, badge_id, authorised=authorised(request), tz=tz))
        except UnknownBadge:
            raise HTTPException(404, f"no badge {badge_id!r}") from None

    @router.post("/users/{user_id}/what-if",
                 summary="dry-run one event on the user's live state: what it would award, and why (nothing kept)",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": EventEnvelope.model_json_schema()}}}})
    async def what_if(request: Request, user_id: Id) -> Response:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_EVENT_BYTES:
                break  # parse_event refuses it as too_large; no need to read the rest
        await run_in_threadpool(catalog_or_503)
        try:
            answer = await run_in_threadpool(explainer.what_if, user_id, bytes(raw), authorised=authorised(request))
        except InvalidEventError as exc:
            names = ", ".join(".".join(str(p) for p in problem["loc"][1:]) or "body" for problem in event_problems(exc))
            return _json({"detail": event_problems(exc), "message": f"invalid event ({names}): {exc.reason}"}, 422)
        return _json(answer)
