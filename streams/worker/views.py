"""The worker's web view of one user's engine state, for the read API's explain and what-if endpoints.

``GET /users/{user_id}/engine-state`` answers the user's :class:`evaluators.state.UserState` as its own
versioned bytes (base64), so the API decodes it with ``UserState.from_bytes`` — the one reader of that
format — and explains or dry-runs exactly what the worker would evaluate next. Faust's ``table_route``
sends the request to the worker owning the user's partition. 404 when that worker knows no such user.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from evaluators.state import STATE_FORMAT
from streams.worker.processor import StoredUser

ENGINE_STATE_PATH = "/users/{user_id}/engine-state"


def engine_state_body(user_id: str, user: StoredUser | None) -> tuple[dict[str, Any], int]:
    """The view's JSON body and status for ``user`` (None: not in the table)."""
    if user is None:
        return {"user_id": user_id, "state": None}, 404
    return {"user_id": user_id, "format": STATE_FORMAT,
            "state": base64.b64encode(user.state.to_bytes()).decode("ascii")}, 200


def register_engine_state_view(app: Any, table: Any, get_user: Callable[[str], StoredUser | None]) -> None:
    """Add the view to the Faust ``app``; ``get_user`` reads one user's stored value (through the state cache)."""
    from faust.web import Request, Response, View

    @app.page(ENGINE_STATE_PATH)
    class EngineStateView(View):
        @app.table_route(table=table, match_info="user_id")  # type: ignore[untyped-decorator]  # Faust is untyped
        async def get(self, request: Request, user_id: str) -> Response:
            body, status = engine_state_body(user_id, get_user(user_id))
            response: Response = self.json(body, status=status)
            return response
