"""The outbox as a table of the award database when that is PostgreSQL, shared by every notifier using it.

The same rows, leases and outcomes as the SQLite outbox (``outbox.py``); a claim takes due rows
``FOR UPDATE SKIP LOCKED``, so notifiers claiming at the same moment never take the same row, and
a row leased by a notifier that died comes due again for the others when its lease ends. The
table is the notifier's own queue, created here (under an advisory lock, as several notifiers may
start at once), not part of the award schema.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from sqlalchemy.engine import make_url

from streams.notify.outbox import EndpointBacklog, Outcomes, Pending

_SCHEMA_LOCK = 0x6E6F74696679  # "notify": serialises CREATE TABLE IF NOT EXISTS between notifiers starting together
_SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_pending (
    endpoint    TEXT             NOT NULL,
    webhook_id  TEXT             NOT NULL,
    type        TEXT             NOT NULL,
    body        BYTEA            NOT NULL,
    queued_at   DOUBLE PRECISION NOT NULL,
    attempts    INTEGER          NOT NULL DEFAULT 0,
    next_at     DOUBLE PRECISION NOT NULL,
    last_error  TEXT,
    seq         BIGSERIAL,
    PRIMARY KEY (endpoint, webhook_id)
);
CREATE INDEX IF NOT EXISTS notify_pending_due ON notify_pending (endpoint, next_at);
"""
_COLUMNS = "endpoint, webhook_id, type, body, queued_at, attempts, next_at, last_error"


def _conninfo(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://...``) as libpq takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresOutbox:
    def __init__(self, url: str) -> None:
        self._db = psycopg.connect(_conninfo(url), autocommit=True)
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, rows: Iterable[tuple[str, str, str, bytes]], now: float) -> int:
        """Queue (endpoint, webhook_id, type, body) rows in one statement; returns how many were new."""
        batch = list(rows)
        with self._db.cursor() as cursor:
            cursor.execute(
                "INSERT INTO notify_pending (endpoint, webhook_id, type, body, queued_at, next_at) "
                "SELECT e, w, t, b, %s, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[]) "
                "AS r(e, w, t, b) ON CONFLICT DO NOTHING",
                (now, now, [r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch],
                 [r[3] for r in batch]))
            return max(0, cursor.rowcount)

    def claim(self, endpoint: str, now: float, limit: int, lease_until: float) -> list[Pending]:
        rows = self._db.execute(
            f"UPDATE notify_pending AS p SET next_at = %s FROM (SELECT endpoint, webhook_id FROM notify_pending "
            f"WHERE endpoint = %s AND next_at <= %s ORDER BY next_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) AS due "
            f"WHERE p.endpoint = due.endpoint AND p.webhook_id = due.webhook_id "
            f"RETURNING {', '.join(f'p.{c}' for c in _COLUMNS.split(', '))}",
            (lease_until, endpoint, now, limit)).fetchall()
        return sorted((Pending(*row) for row in rows), key=lambda row: row.queued_at)

    def next_due(self, endpoint: str) -> float | None:
        row = self._db.execute("SELECT MIN(next_at) FROM notify_pending WHERE endpoint = %s", (endpoint,)).fetchone()
        return row[0] if row else None

    def settle(self, outcomes: Outcomes) -> None:
        with self._db.transaction(), self._db.cursor() as cursor:
            if outcomes.done:
                cursor.executemany("DELETE FROM notify_pending WHERE endpoint = %s AND webhook_id = %s",
                                   outcomes.done)
            if outcomes.retries:
                cursor.executemany("UPDATE notify_pending SET attempts = %s, next_at = %s, last_error = %s "
                                   "WHERE endpoint = %s AND webhook_id = %s", outcomes.retries)
            if outcomes.released:
                cursor.executemany("UPDATE notify_pending SET next_at = LEAST(next_at, 0) "
                                   "WHERE endpoint = %s AND webhook_id = %s", outcomes.released)
        outcomes.clear()

    def endpoints(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT endpoint FROM notify_pending")]

    def backlog(self) -> dict[str, EndpointBacklog]:
        rows = self._db.execute("SELECT endpoint, COUNT(*), COUNT(*) FILTER (WHERE attempts > 0), MIN(queued_at) "
                                "FROM notify_pending GROUP BY endpoint").fetchall()
        return {endpoint: EndpointBacklog(n, int(retrying or 0), oldest) for endpoint, n, retrying, oldest in rows}
