"""A small webhook receiver: verifies each Standard Webhooks signature and hands the notification on.

``badgestream up`` runs one that prints notifications on the console; tests and bench/notify run
it with a ``respond`` hook that injects faults (statuses, Retry-After, slow answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class Received:
    path: str
    webhook_id: str
    type: str
    data: dict[str, Any]
    valid: bool
    at: float  # time.time() when received


@dataclass(frozen=True)
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow endpoint)


Respond = Callable[[str, str, int], Response]
"""(path, webhook_id, how many times this id was seen on this path, this one included) -> the answer."""


class WebhookReceiver:
    """An aiohttp server on 127.0.0.1, on its own event loop in a thread; ``received`` lists every 2xx-answered request.

    (aiohttp rather than ``http.server``: the latter answered httpx's requests only after a
    delayed ACK, ~40 ms each, which made it the bottleneck of bench/notify.)
    """

    def __init__(self, secret: str, port: int = 0, respond: Respond | None = None,
                 on_received: Callable[[Received], None] | None = None) -> None:
        self.verifier = Webhook(secret)
        self.respond = respond
        self.on_received = on_received
        self.received: list[Received] = []
        self.attempts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True)
        self._port = port
        self.port = port

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(30)
        return self

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)  # slow answers still pending end now
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        try:
            self.verifier.verify(body, headers)
            valid = True
        except (WebhookVerificationError, ValueError):
            valid = False
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = {}
        with self._lock:
            key = (request.path, webhook_id)
            self.attempts[key] = seen = self.attempts.get(key, 0) + 1
        answer = self.respond(request.path, webhook_id, seen) if self.respond else Response()
        if answer.delay and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), answer.delay)
                return web.Response(status=503)  # stopped while stalling: nothing was received
        if 200 <= answer.status < 300:
            item = Received(request.path, webhook_id, str(payload.get("type", "")), payload.get("data") or {}, valid,
                            time.time())
            with self._lock:
                self.received.append(item)
            if self.on_received is not None:
                self.on_received(item)
        return web.Response(status=answer.status, headers=answer.headers)

    def delivered(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]


def describe(item: Received, names: dict[str, str]) -> str:
    """One console line: "ana earned Quiz Master (silver)", "ben: 1 to go for Daily Warrior"."""
    data = item.data
    badge = names.get(str(data.get("badge_id")), str(data.get("badge_id")))
    tier = f" ({data['tier']})" if data.get("tier") else ""
    if item.type == "badge.nudge":
        return f"{data.get('user_id')}: {float(data.get('remaining', 0)):g} to go for {badge}{tier}"
    verb = "lost" if item.type == "badge.revoked" else "earned"
    return f"{data.get('user_id')} {verb} {badge}{tier}"
