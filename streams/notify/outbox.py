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
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True, slots=True)
class EndpointBacklog:
    pending: int
    retrying: int  # pending rows that failed at least once
    oldest_queued_at: float | None


class Outbox:
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
        due again by itself if the notifier dies before the outcome is written.
        """
        with self._db:
            self._db.execute("BEGIN")
            rows = self._db.execute(
                "SELECT endpoint, webhook_id, type, body, queued_at, attempts, next_at, last_error FROM pending "
                "WHERE endpoint = ? AND next_at <= ? ORDER BY next_at, rowid LIMIT ?",
                (endpoint, now, limit)).fetchall()
            self._db.executemany("UPDATE pending SET next_at = ? WHERE endpoint = ? AND webhook_id = ?",
                                 ((lease_until, endpoint, row[1]) for row in rows))
        return [Pending(*row) for row in rows]

    def release(self, endpoint: str, webhook_id: str) -> None:
        """A leased row due again now (its attempt was abandoned, e.g. on shutdown)."""
        self._db.execute("UPDATE pending SET next_at = MIN(next_at, ?) WHERE endpoint = ? AND webhook_id = ?",
                         (0.0, endpoint, webhook_id))

    def next_due(self, endpoint: str) -> float | None:
        row = self._db.execute("SELECT MIN(next_at) FROM pending WHERE endpoint = ?", (endpoint,)).fetchone()
        return row[0] if row else None

    def done(self, endpoint: str, webhook_id: str) -> None:
        self._db.execute("DELETE FROM pending WHERE endpoint = ? AND webhook_id = ?", (endpoint, webhook_id))

    def retry(self, endpoint: str, webhook_id: str, attempts: int, next_at: float, error: str) -> None:
        self._db.execute("UPDATE pending SET attempts = ?, next_at = ?, last_error = ? "
                         "WHERE endpoint = ? AND webhook_id = ?", (attempts, next_at, error, endpoint, webhook_id))

    def endpoints(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT endpoint FROM pending")]

    def backlog(self) -> dict[str, EndpointBacklog]:
        rows = self._db.execute("SELECT endpoint, COUNT(*), SUM(attempts > 0), MIN(queued_at) FROM pending "
                                "GROUP BY endpoint").fetchall()
        return {endpoint: EndpointBacklog(n, int(retrying or 0), oldest) for endpoint, n, retrying, oldest in rows}
