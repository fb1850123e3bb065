"""A small webhook receiver: verifies each Standard Webhooks signature and hands the notification on.

``badgestream up`` runs one that prints notifications on the console; tests and bench/notify run
it with a ``respond`` hook that injects faults (statuses, Retry-After, slow answers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
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
    """An HTTP server on 127.0.0.1 in a thread; ``received`` lists every request, valid or not, in order."""

    def __init__(self, secret: str, port: int = 0, respond: Respond | None = None,
                 on_received: Callable[[Received], None] | None = None) -> None:
        self.verifier = Webhook(secret)
        self.respond = respond
        self.on_received = on_received
        self.received: list[Received] = []
        self.attempts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("content-length") or 0))
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
        if answer.delay:
            time.sleep(answer.delay)
        if 200 <= answer.status < 300:
            item = Received(request.path, webhook_id, str(payload.get("type", "")), payload.get("data") or {}, valid,
                            time.time())
            with self._lock:
                self.received.append(item)
            if self.on_received is not None:
                self.on_received(item)
        try:
            request.send_response(answer.status)
            for name, value in answer.headers.items():
                request.send_header(name, value)
            request.send_header("content-length", "0")
            request.end_headers()
        except OSError:
            pass  # the notifier gave up waiting (timeout) and closed the connection

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
