"""A circuit breaker per endpoint: stop sending to an endpoint that keeps failing, probe it with one request.

Pure (the caller passes the clock), so it is tested with literal values.

- ``closed``: every request may go. It opens once the endpoint failed ``failures`` attempts in a
  row and the first of them was sent at least ``window`` seconds earlier: an endpoint that failed
  everything for a while, not one that failed a burst (with many requests in flight, a quarter of
  them failing can still line up twenty failures in a row for a moment).
- ``open``: nothing goes until ``cooldown`` has passed; then one request (the probe) may go and the
  breaker is ``half_open`` until its answer comes: a success closes it, a failure opens it again
  for twice the previous cooldown (capped at ``max_cooldown``).
- Answers to requests sent before it opened change nothing while it is open.

Deliveries that may not go stay in the outbox; nothing is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass
class CircuitBreaker:
    failures: int = 20
    window: float = 5.0
    cooldown: float = 5.0
    max_cooldown: float = 60.0
    state: State = "closed"
    failed_in_a_row: int = 0
    failing_since: float = math.inf  # when the first attempt of the current run of failures was sent
    opened_at: float = 0.0
    open_until: float = 0.0
    current_cooldown: float = 0.0

    def limit(self, now: float) -> int | None:
        """How many new requests may start now: None (no limit), 1 (the probe) or 0; changes nothing."""
        if self.state == "closed":
            return None
        return 1 if self.state == "open" and now >= self.open_until else 0

    def admit(self, wanted: int, now: float) -> int:
        """How many of ``wanted`` new requests may start now (an open breaker past its cooldown lets one probe go)."""
        if self.state == "closed":
            return wanted
        if self.state == "open" and now >= self.open_until and wanted > 0:
            self.state = "half_open"
            return 1
        return 0

    def succeeded(self, sent_at: float) -> State:
        """The endpoint answered an attempt sent at ``sent_at``; returns the state after it."""
        if self.state == "closed" or sent_at >= self.opened_at:
            self.state = "closed"
            self.failed_in_a_row = 0
            self.failing_since = math.inf
            self.current_cooldown = 0.0
        return self.state

    def failed(self, sent_at: float, now: float) -> State:
        """An attempt sent at ``sent_at`` failed (timeout, connection error, 408, 429, 5xx); returns the new state."""
        if self.state == "closed":
            self.failed_in_a_row += 1
            self.failing_since = min(self.failing_since, sent_at)
            if self.failed_in_a_row >= self.failures and now - self.failing_since >= self.window:
                self._open(now, self.cooldown)
        elif sent_at >= self.opened_at:  # the probe
            self._open(now, min(self.max_cooldown, max(self.cooldown, self.current_cooldown * 2)))
        return self.state

    def _open(self, now: float, cooldown: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.current_cooldown = cooldown
        self.open_until = now + cooldown

    def reopens_at(self) -> float | None:
        """When an open breaker lets its probe go (None unless open)."""
        return self.open_until if self.state == "open" else None
