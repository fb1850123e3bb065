"""The durable queue of pending deliveries: one row per (endpoint, webhook_id) until delivered or dead-lettered.

A SQLite file in WAL mode, written only by the notifier's event loop. Input offsets are committed
after the rows for their records are inserted (one transaction per consumed batch), so a record
is always either still to be read from Kafka or in here: a notifier killed at any point loses
nothing. A row leaves only when its delivery succeeded or its dead letter was acknowledged.
Inserting a row already pending is a no-op, so a redelivered input record does not double it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    endpoint    TEXT    NOT NULL,
    webhook_id  TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    queued_at   REAL    NOT NULL,  -- wall clock (Unix seconds) when first queued: the age of the delivery
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL    NOT NULL,  -- not attempted before this
    last_error  TEXT,
    PRIMARY KEY (endpoint, webhook_id)
);
CREATE INDEX IF NOT EXISTS pending_due ON pending (endpoint, next_at);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    endpoint: str
    webhook_id: str
    type: str
    body: bytes
    queued_at: float
    attempts: int
    next_at: float
    last_error: str | None


@dataclass(slots=True)
class Outcomes:
    """Outbox writes collected during a dispatch round, written by :meth:`Outbox.settle` in one transaction."""

    done: list[tuple[str, str]] = field(default_factory=list)  # (endpoint, webhook_id): delivered or dead-lettered
    retries: list[tuple[int, float, str, str, str]] = field(default_factory=list)  # attempts, next_at, error, e, w
    released: list[tuple[str, str]] = field(default_factory=list)  # leased but not attempted: due again now

    def __len__(self) -> int:
        return len(self.done) + len(self.retries) + len(self.released)

    def clear(self) -> None:
        self.done.clear()
        self.retries.clear()
        self.released.clear()


@dataclass(frozen=True, slots=True)
class EndpointBacklog:
    pending: int
    retrying: int  # pending rows that failed at least once
    oldest_queued_at: float | None


class OutboxStore(Protocol):
    """What the notifier needs of an outbox: this SQLite file (:class:`Outbox`), or a table in the award
    database when that is PostgreSQL (:class:`~streams.notify.outbox_postgres.PostgresOutbox`)."""

    def add(self, rows: Iterable[tuple[str, str, str, bytes]], now: float) -> int: ...
    def claim(self, endpoint: str, now: float, limit: int, lease_until: float) -> list[Pending]: ...
    def next_due(self, endpoint: str) -> float | None: ...
    def settle(self, outcomes: Outcomes) -> None: ...
    def endpoints(self) -> list[str]: ...
    def backlog(self) -> dict[str, EndpointBacklog]: ...
    def close(self) -> None: ...


class Outbox:
    """The embedded outbox: a SQLite file of one notifier process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Autocommit, WAL: each statement is durable once it returns (against a process crash;
        # synchronous=NORMAL trades the last transactions on power loss for speed).
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, rows: Iterable[tuple[str, str, str, bytes]], now: float) -> int:
        """Queue (endpoint, webhook_id, type, body) rows in one transaction; returns how many were new."""
        before = self._db.total_changes
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO pending (endpoint, webhook_id, type, body, queued_at, next_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", ((e, w, t, b, now, now) for e, w, t, b in rows))
        return self._db.total_changes - before

    def claim(self, endpoint: str, now: float, limit: int, lease_until: float) -> list[Pending]:
        """Up to ``limit`` due rows of ``endpoint``, oldest due first, leased: not due again before ``lease_until``.

        The lease keeps a row from being taken twice while its request is in flight, and makes it
        due again by itself if the notifier dies before the outcome is written. One statement.
        """
        rows = self._db.execute(
            "UPDATE pending SET next_at = ? WHERE rowid IN (SELECT rowid FROM pending "
            "WHERE endpoint = ? AND next_at <= ? ORDER BY next_at, rowid LIMIT ?) "
            "RETURNING endpoint, webhook_id, type, body, queued_at, attempts, next_at, last_error",
            (lease_until, endpoint, now, limit)).fetchall()
        return sorted((Pending(*row) for row in rows), key=lambda row: row.queued_at)

    def next_due(self, endpoint: str) -> float | None:
        row = self._db.execute("SELECT MIN(next_at) FROM pending WHERE endpoint = ?", (endpoint,)).fetchone()
        return row[0] if row else None

    def settle(self, outcomes: Outcomes) -> None:
        """Write the outcomes of a dispatch round in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            if outcomes.done:
                self._db.executemany("DELETE FROM pending WHERE endpoint = ? AND webhook_id = ?", outcomes.done)
            if outcomes.retries:
                self._db.executemany("UPDATE pending SET attempts = ?, next_at = ?, last_error = ? "
                                     "WHERE endpoint = ? AND webhook_id = ?", outcomes.retries)
            if outcomes.released:
                self._db.executemany("UPDATE pending SET next_at = MIN(next_at, ?) "
                                     "WHERE endpoint = ? AND webhook_id = ?",
                                     ((0.0, e, w) for e, w in outcomes.released))
        outcomes.clear()

    def endpoints(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT endpoint FROM pending")]

    def backlog(self) -> dict[str, EndpointBacklog]:
        rows = self._db.execute("SELECT endpoint, COUNT(*), SUM(attempts > 0), MIN(queued_at) FROM pending "
                                "GROUP BY endpoint").fetchall()
        return {endpoint: EndpointBacklog(n, int(retrying or 0), oldest) for endpoint, n, retrying, oldest in rows}
