"""Deliveries to one endpoint: rows taken from the outbox in batches, at most ``concurrency`` requests in flight.

A request holds one slot until its answer or its timeout, nothing else: a stalled request stalls
only itself, a failed one gives its slot back at once and its row waits in the outbox (holding no
slot) until the retry is due. Each endpoint has its own dispatcher, connection pool (keep-alive)
and :class:`~streams.notify.breaker.CircuitBreaker`, so one endpoint's trouble never delays another.

Rows are claimed (leased, one statement) a batch ahead of the free slots and kept in memory; a
row claimed more than ``LEASE_MARGIN_S`` ago is not sent any more (its lease may run out while it
is in flight) and simply comes due again. Outcomes are collected in memory and written by the
:class:`Settler` in one transaction per round (``SETTLE_ROUND_S``); a crash before that write only
means those rows are sent again once their lease ran out (at least once, same ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque

import aiohttp

from streams.notify.breaker import STATE_VALUES, CircuitBreaker, State
from streams.notify.dead_letters import DeadLetters
from streams.notify.endpoints import Endpoint
from streams.notify.messages import Signer
from streams.notify.metrics import NotifyMetrics, endpoint_label
from streams.notify.outbox import OutboxStore, Outcomes, Pending
from streams.notify.policy import Attempt, RetryPolicy, parse_retry_after
from streams.settings import Settings

log = logging.getLogger("badgestream.notify")

LEASE_MARGIN_S = 5.0
CLAIM_AHEAD = 100  # rows claimed beyond the free slots, so a busy endpoint needs one claim per ~100 deliveries
IDLE_POLL_S = 1.0
"""An idle endpoint looks at the outbox at least this often: in a shared (PostgreSQL) outbox another
notifier adds rows, and a dead one's leases run out, without this one being told."""
SETTLE_ROUND_S = 0.005  # outcomes decided within this long are written in one transaction


class Settler:
    """Writes the outcomes every dispatcher collected since its last round, in one transaction."""

    def __init__(self, outbox: OutboxStore) -> None:
        self.outbox = outbox
        self.outcomes = Outcomes()
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(SETTLE_ROUND_S)  # the attempts finishing meanwhile join the round
            self.outbox.settle(self.outcomes)

    def flush(self) -> None:
        self.outbox.settle(self.outcomes)


class Dispatcher:
    """Deliveries to one endpoint, at most ``concurrency`` at a time, from the outbox."""

    def __init__(self, endpoint: Endpoint, settings: Settings, settler: Settler, policy: RetryPolicy,
                 dead_letters: DeadLetters, metrics: NotifyMetrics) -> None:
        self.url = endpoint.url
        self.label = endpoint_label(endpoint.url)
        self.concurrency = endpoint.concurrency or settings.notify_concurrency
        self.lease = settings.notify_timeout_s + LEASE_MARGIN_S
        self.outbox = settler.outbox
        self.settler = settler
        self.outcomes = settler.outcomes
        self.policy = policy
        self.dead_letters = dead_letters
        self.breaker = CircuitBreaker(settings.notify_breaker_failures, settings.notify_breaker_window_s,
                                      settings.notify_breaker_cooldown_s)
        self.wake = asyncio.Event()
        self.closing = False
        self.inflight: set[asyncio.Task[None]] = set()
        self.buffer: deque[tuple[Pending, float]] = deque()  # claimed rows, with when they were claimed
        self.fresh = True  # rows may have been added since the last claim
        self.idle_until = 0.0  # nothing in the outbox is due before this (as of the last short claim)
        self._signer = Signer(endpoint.key)
        self._timeout = settings.notify_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._metrics = metrics
        self._delivered = metrics.deliveries.labels(self.label, "delivered")
        self._retried = metrics.deliveries.labels(self.label, "retried")
        self._dead = metrics.deliveries.labels(self.label, "dead_lettered")
        self._attempt_seconds = metrics.attempt_seconds.labels(self.label)
        self._delivery_seconds = metrics.delivery_seconds.labels(self.label)
        self._circuit = metrics.circuit_state.labels(self.label)
        self._circuit.set(0)

    def added(self) -> None:
        """The consumer queued rows for this endpoint."""
        self.fresh = True
        self.wake.set()

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(total=self._timeout), auto_decompress=False)
        # A flag, not only task cancellation, ends this loop: on Python 3.11 ``asyncio.timeout``
        # can swallow a cancellation that coincides with the wake-up (cpython gh-86296).
        while not self.closing:
            self.wake.clear()
            now = time.time()
            self._round(now)
            # Requests finishing start the next ones themselves (``_finished``); this loop only has
            # to come back for rows added, a retry coming due on an idle endpoint, or a probe.
            reopens = self.breaker.reopens_at()
            if reopens is not None:
                wake_at = reopens
            elif self.breaker.state == "half_open" or len(self.inflight) >= self.concurrency:
                wake_at = math.inf
            else:
                wake_at = now if self.fresh else self.idle_until
            timeout = min(1.0, max(0.0, wake_at - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    def _round(self, now: float) -> None:
        """Start as many requests as there are free slots, the breaker allows and rows are due."""
        if self.closing or self._session is None:
            return
        limit = self.breaker.limit(now)
        free = self.concurrency - len(self.inflight)
        wanted = free if limit is None else min(free, limit)
        if wanted <= 0:
            return
        while self.buffer and now - self.buffer[0][1] > LEASE_MARGIN_S:
            self.buffer.popleft()  # claimed too long ago to be sent within its lease: due again once it ends
        if len(self.buffer) < wanted and (self.fresh or now >= self.idle_until):
            if self.outcomes:
                self.settler.flush()  # so that the next due time read below counts the retries just decided
            asked = wanted - len(self.buffer) + (CLAIM_AHEAD if limit is None else 0)
            self.fresh = False
            rows = self.outbox.claim(self.url, now, asked, now + self.lease)
            self.buffer.extend((row, now) for row in rows)
            due = self.outbox.next_due(self.url) if len(rows) < asked else now
            self.idle_until = min(due if due is not None else math.inf, now + IDLE_POLL_S)
        before = self.breaker.state
        admitted = self.breaker.admit(min(wanted, len(self.buffer)), now)
        self._breaker_changed(before, self.breaker.state)
        for _ in range(admitted):
            row, _ = self.buffer.popleft()
            task = asyncio.create_task(self._deliver(row))
            self.inflight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self._round(time.time())

    async def close(self) -> None:
        """Stop taking rows, abandon the requests in flight and the claimed rows (due again at once), close the pool."""
        self.closing = True
        self.wake.set()
        for task in list(self.inflight):
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        self._release_buffer()
        if self._session is not None:
            await self._session.close()

    def _release_buffer(self) -> None:
        if self.buffer:
            self.outcomes.released.extend((self.url, row.webhook_id) for row, _ in self.buffer)
            self.buffer.clear()
            self.idle_until = 0.0  # they are due again at once
            self.settler.wake.set()

    async def _deliver(self, row: Pending) -> None:
        sent_at = time.time()
        try:
            await self._attempt(row, sent_at)
        except asyncio.CancelledError:
            self.outcomes.released.append((self.url, row.webhook_id))  # stopping: due again at once after a restart
            raise
        except Exception:
            # e.g. the dead-letter topic is unreachable: the row stays, leased, and is tried again.
            log.exception("delivery of %s to %s failed unexpectedly; it will be retried", row.webhook_id, self.label)
            self._breaker_failed(sent_at, time.time())

    async def _attempt(self, row: Pending, sent_at: float) -> None:
        assert self._session is not None
        timestamp = int(sent_at)
        began = time.perf_counter()
        try:
            async with self._session.post(self.url, data=row.body,
                                          headers=self._signer.headers(row.webhook_id, timestamp, row.body)) as answer:
                await answer.read()
                retry_after = parse_retry_after(answer.headers.get("retry-after")) if answer.status in (429, 503) \
                    else None
                attempt = Attempt(answer.status, retry_after=retry_after)
        except TimeoutError as exc:
            attempt = Attempt(None, f"timeout ({type(exc).__name__})")
        except aiohttp.ClientError as exc:
            attempt = Attempt(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        self._attempt_seconds.observe(time.perf_counter() - began)
        now = time.time()
        if attempt.endpoint_failed:
            self._breaker_failed(sent_at, now)
        else:
            before = self.breaker.state
            self._breaker_changed(before, self.breaker.succeeded(sent_at))
        attempts = row.attempts + 1
        decision = self.policy.decide(attempt, attempts, now - row.queued_at)
        if decision.action == "delivered":
            self.outcomes.done.append((self.url, row.webhook_id))
            self._delivery_seconds.observe(now - row.queued_at)
            self._delivered.inc()
        elif decision.action == "retry":
            self.outcomes.retries.append((attempts, now + decision.delay, decision.reason, self.url, row.webhook_id))
            self.idle_until = min(self.idle_until, now + decision.delay)
            self._retried.inc()
            log.info("%s to %s: %s; attempt %d in %.1fs", row.webhook_id, self.label, decision.reason,
                     attempts + 1, decision.delay)
        else:
            await self.dead_letters.send(row.webhook_id, {
                "endpoint": self.url, "webhook_id": row.webhook_id, "type": row.type, "status": attempt.status,
                "reason": decision.reason, "attempts": attempts, "queued_at": row.queued_at, "failed_at": now,
                "body": row.body.decode("utf-8"),
            })
            self.outcomes.done.append((self.url, row.webhook_id))
            self._dead.inc()
            log.warning("%s to %s dead-lettered: %s", row.webhook_id, self.label, decision.reason)
        self.settler.wake.set()

    def _breaker_failed(self, sent_at: float, now: float) -> None:
        before = self.breaker.state
        self._breaker_changed(before, self.breaker.failed(sent_at, now))

    def _breaker_changed(self, before: State, after: State) -> None:
        if after == before:
            return
        self._circuit.set(STATE_VALUES[after])
        if after == "open":
            self._metrics.circuit_opened.labels(self.label).inc()
            self._release_buffer()  # claimed rows wait in the outbox while the breaker is open
            why = ("the probe failed" if before == "half_open"
                   else f"{self.breaker.failed_in_a_row} failed attempts in a row")
            log.warning("circuit to %s open (%s); one probe in %.1fs", self.label, why, self.breaker.current_cooldown)
        elif after == "half_open":
            log.info("circuit to %s half-open: one probe", self.label)
        else:
            log.info("circuit to %s closed: the endpoint answered", self.label)
