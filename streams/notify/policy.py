"""What an attempt's result means — delivered, retry later, or dead letter — as a pure function of literal values.

2xx is delivered. 408, 429, 5xx, timeouts and refused or broken connections are retried with
exponential backoff and full jitter (``base * 2**(attempt-1)`` capped at ``max_delay``, times a
random factor in [0.5, 1]); a 429's or 503's ``Retry-After`` is honoured when longer. Retries stop
once the next attempt would come later than ``max_age`` after the first: then, and for every other
status (other 4xx, 3xx: redirects are not followed), the delivery goes to the dead-letter topic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

RETRIED_STATUSES = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's result: an HTTP status, or ``error`` (timeout, connection) when there was none."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None  # seconds, from the Retry-After header

    @property
    def endpoint_failed(self) -> bool:
        """No answer, or one saying the endpoint cannot take it now (408, 429, 5xx): what the circuit breaker counts.

        Any other answer, a 4xx that dead-letters the delivery included, shows the endpoint is up.
        """
        return self.status is None or self.status in RETRIED_STATUSES or self.status >= 500


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["delivered", "retry", "dead"]
    reason: str
    delay: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 1.0
    max_delay: float = 600.0
    max_age: float = 86400.0

    def decide(self, attempt: Attempt, attempts: int, age: float, rand: random.Random | None = None) -> Decision:
        """``attempts``: how many were made, this one included; ``age``: seconds since the first."""
        status = attempt.status
        if status is not None and 200 <= status < 300:
            return Decision("delivered", f"HTTP {status}")
        reason = f"HTTP {status}" if status is not None else (attempt.error or "no response")
        if status is not None and status not in RETRIED_STATUSES and status < 500:
            return Decision("dead", f"{reason}: not retried (only 408, 429, 5xx, timeouts and connection errors are)")
        backoff = min(self.max_delay, self.base * 2 ** min(attempts - 1, 60))
        delay = backoff * (0.5 + 0.5 * (rand or random).random())
        if attempt.retry_after is not None:
            delay = max(delay, attempt.retry_after)
        if age + delay > self.max_age:
            return Decision("dead", f"{reason}: gave up after {attempts} attempts over {age:.0f}s "
                                    f"(max age {self.max_age:.0f}s)")
        return Decision("retry", reason, delay)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
