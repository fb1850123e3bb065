"""One endpoint's dispatcher against a real local receiver, without a broker: what a slot is held for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from streams.devstack.receiver import Response, WebhookReceiver
from streams.notify.dead_letters import DeadLetters
from streams.notify.dispatcher import Dispatcher, Settler
from streams.notify.endpoints import Endpoint
from streams.notify.metrics import NotifyMetrics
from streams.notify.outbox import Outbox
from streams.notify.policy import RetryPolicy
from streams.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class NoDeadLetters:
    async def send(self, key: str, record: dict[str, Any]) -> None:
        raise AssertionError(f"nothing is dead-lettered here: {key}")


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_stalled_request_holds_only_its_slot_and_a_failed_one_none(tmp_path: Path) -> None:
    """Two slots; one request stalls past the timeout, one delivery fails every time: the other 30 still
    go out through the remaining slot before the stalled one times out, and the failing one's retries
    wait in the outbox in between instead of holding a slot."""
    timeout = 3.0

    def respond(path: str, webhook_id: str, seen: int) -> Response:
        if webhook_id == "stall":
            return Response(200, delay=timeout + 5.0)
        return Response(500) if webhook_id == "fail" else Response(200)

    settings = Settings(notify_outbox=tmp_path / "outbox.sqlite", notify_concurrency=2, notify_timeout_s=timeout)
    outbox = Outbox(settings.notify_outbox)
    with WebhookReceiver(SECRET, respond=respond) as receiver:
        endpoint = Endpoint(url=receiver.url(), secret=SECRET)
        ids = ["stall", "fail", *(f"ok-{i:02d}" for i in range(30))]
        outbox.add([(endpoint.url, webhook_id, "badge.awarded", b"{}") for webhook_id in ids], now=time.time())
        settler = Settler(outbox)
        dispatcher = Dispatcher(endpoint, settings, settler, RetryPolicy(base=0.05, max_delay=0.1),
                                cast(DeadLetters, NoDeadLetters()), NotifyMetrics())
        tasks = [asyncio.create_task(dispatcher.run()), asyncio.create_task(settler.run())]
        began = time.monotonic()
        try:
            await until(lambda: len(receiver.delivered()) == 30, timeout, "the 30 healthy deliveries")
            await until(lambda: receiver.attempts.get(("/hook", "fail"), 0) >= 3, timeout, "retries of the failing one")
            assert time.monotonic() - began < timeout  # all while the stalled request still held its slot
            assert receiver.attempts[("/hook", "stall")] == 1 and len(dispatcher.inflight) >= 1
        finally:
            await dispatcher.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            settler.flush()
    backlog = outbox.backlog()[endpoint.url]
    assert (backlog.pending, backlog.retrying) == (2, 1)  # the stalled one (released) and the failing one
    outbox.close()
