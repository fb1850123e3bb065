"""The worker's engine-state view (``streams.worker.views``): its body round-trips the user state, and
``register_views`` wires the views, each answering that answers through the given getter."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from evaluators.state import UserState
from streams.worker.metrics import WorkerMetrics
from streams.worker.processor import StoredUser
from streams.worker.views import ENGINE_STATE_PATH, engine_state_body, register_views
from tests.unit.support import engine, event

ENGINE = engine("""
    badges:
      - {id: daily, on: [login], rule: {streak: {days: 3}}}
""")


def stored() -> StoredUser:
    state = ENGINE.evaluate(None, event("login", event_id="e-1")).state
    return StoredUser(state)


def test_the_body_carries_the_state_as_its_own_bytes() -> None:
    user = stored()
    body, status = engine_state_body("u1", user)
    assert status == 200 and body["format"] == 1
    assert UserState.from_bytes(base64.b64decode(body["state"])) == user.state
    assert engine_state_body("nobody", None) == ({"user_id": "nobody", "state": None}, 404)


class FakeApp:
    """What the registration uses of a Faust app: ``page`` and ``table_route`` decorators."""

    def __init__(self) -> None:
        self.pages: dict[str, Any] = {}

    def page(self, path: str) -> Any:
        def register(view: Any) -> Any:
            self.pages[path] = view
            return view

        return register

    def table_route(self, table: Any, match_info: str) -> Any:
        assert match_info == "user_id"
        return lambda handler: handler


class FakeView:
    def json(self, body: Any, status: int) -> tuple[Any, int]:
        return body, status


def test_the_registered_view_answers_through_the_getter() -> None:
    app, users = FakeApp(), {"u1": stored()}
    register_views(app, table=object(), get_user=users.get, metrics=WorkerMetrics(set()))
    view = app.pages[ENGINE_STATE_PATH]
    body, status = asyncio.run(view.get(FakeView(), None, "u1"))
    assert status == 200 and UserState.from_bytes(base64.b64decode(body["state"])) == users["u1"].state
    assert asyncio.run(view.get(FakeView(), None, "u2"))[1] == 404
    stored_view = app.pages["/users/{user_id}/state"]
    body, status = asyncio.run(stored_view.get(FakeView(), None, "u1"))
    assert status == 200 and body["marks"] == [] and body["resend_buckets"] == []
    assert "/metrics" in app.pages
