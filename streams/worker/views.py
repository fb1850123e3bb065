"""The worker's web views: its metrics, and one user's stored value and engine state.

``GET /metrics`` is Prometheus' exposition. ``GET /users/{user_id}/state`` shows what the worker
keeps for a user (badges, outbox, input marks, resend buckets), for operators.
``GET /users/{user_id}/engine-state`` answers the user's :class:`evaluators.state.UserState` as its own
versioned bytes (base64), so the API decodes it with ``UserState.from_bytes`` — the one reader of that
format — and explains or dry-runs exactly what the worker would evaluate next. Faust's ``table_route``
sends the request to the worker owning the user's partition. 404 when that worker knows no such user.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from evaluators.resends import SeenIds
from evaluators.state import STATE_FORMAT
from streams.worker.metrics import WorkerMetrics
from streams.worker.stored import StoredUser

ENGINE_STATE_PATH = "/users/{user_id}/engine-state"


def engine_state_body(user_id: str, user: StoredUser | None,
                      seen: SeenIds | None = None) -> tuple[dict[str, Any], int]:
    """The view's JSON body and status for ``user`` (None: not in the table), with the user's
    remembered event ids (``seen``: bucket -> base64 of its packed entries) so that a dry run
    recognises a resend as the worker would."""
    if user is None:
        return {"user_id": user_id, "state": None}, 404
    ids = {str(bucket): base64.b64encode(packed).decode("ascii") for bucket, packed in (seen.buckets.items()
                                                                                       if seen else ())}
    return {"user_id": user_id, "format": STATE_FORMAT,
            "state": base64.b64encode(user.state.to_bytes()).decode("ascii"), "ids": ids}, 200


def seen_ids(body: dict[str, Any]) -> SeenIds:
    """The remembered ids of an engine-state body (what :func:`engine_state_body` wrote)."""
    return SeenIds({int(bucket): base64.b64decode(packed) for bucket, packed in body.get("ids", {}).items()})


def stored_state_body(user_id: str, user: StoredUser | None) -> tuple[dict[str, Any], int]:
    """The ``/users/{user_id}/state`` view's JSON body and status (None: not in the table)."""
    if user is None:
        return {"user_id": user_id, "state": None}, 404
    state = user.state
    return {"user_id": user_id, "catalog_fingerprint": state.catalog_fp,
            "badges": {bid: badge.to_json() for bid, badge in sorted(state.badges.items())},
            "outbox_events": [entry.event_id for entry in user.outbox],
            "marks": [[topic, partition, "rekeyed" if rekeyed else "direct", offset]
                      for (topic, partition, rekeyed), offset in user.marks.items()],
            "resend_buckets": list(user.id_buckets)}, 200


def register_views(app: Any, table: Any, get_user: Callable[[str], StoredUser | None],
                   metrics: WorkerMetrics, get_seen: Callable[[str, StoredUser | None], SeenIds] | None = None) -> None:
    """Add the views to the Faust ``app``; ``get_user`` reads one user's stored value (through the
    state cache); Faust's ``table_route`` sends a user's request to the worker owning the user."""
    from faust.web import Request, Response, View

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            body, content_type = metrics.exposition()
            response: Response = self.bytes(body, content_type=content_type)
            return response

    def engine_state(user_id: str, user: StoredUser | None) -> tuple[dict[str, Any], int]:
        return engine_state_body(user_id, user, get_seen(user_id, user) if get_seen and user else None)

    for path, render in (("/users/{user_id}/state", stored_state_body), (ENGINE_STATE_PATH, engine_state)):
        register_user_view(app, table, path, render, get_user)


def register_user_view(app: Any, table: Any, path: str,
                       render: Callable[[str, StoredUser | None], tuple[dict[str, Any], int]],
                       get_user: Callable[[str], StoredUser | None]) -> None:
    from faust.web import Request, Response, View

    @app.page(path)
    class UserView(View):
        @app.table_route(table=table, match_info="user_id")  # type: ignore[untyped-decorator]  # Faust is untyped
        async def get(self, request: Request, user_id: str) -> Response:
            body, status = render(user_id, get_user(user_id))
            response: Response = self.json(body, status=status)
            return response
