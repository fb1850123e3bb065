"""Engines with the settings the project relies on, and the Alembic migrations entry point."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from schemas.errors import ConfigurationError
from streams.db.tables import MIGRATIONS_DIR
from streams.settings import mask_url

log = logging.getLogger(__name__)


def _json_dumps(value: Any) -> str:
    # orjson is several times faster than json for the metadata column; it refuses integers wider
    # than 64 bits, which the stdlib writes as plain JSON numbers.
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, default=str)


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = 5000, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings this project relies on.

    SQLite: WAL so ``badgestream user`` can read while the sink writes, a busy timeout so brief
    lock contention waits instead of failing, and ``synchronous=FULL`` because offsets are
    committed right after the transaction and must never run ahead of durable rows.
    PostgreSQL: pre-ping, so a server restart costs one failed check instead of a failed batch.
    """
    sa_url = sa.make_url(url)
    options: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        options["connect_args"] = {"timeout": sqlite_busy_timeout_ms / 1000}
    elif sa_url.get_backend_name() == "postgresql":
        options["pool_pre_ping"] = True
        options["connect_args"] = {"connect_timeout": 10}
    options.update(kwargs)
    engine = sa.create_engine(sa_url, **options)
    if sa_url.get_backend_name() == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_ms)}")
            cursor.close()

    return engine


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``head``) with Alembic; the only way the schema is created or changed.

    On PostgreSQL a transaction-scoped advisory lock serialises concurrent starters (a worker and a
    sink starting together would otherwise both try to create the tables).
    """
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7233420154)"))  # any fixed key of ours
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()
    log.info("database %s is at migration %s", mask_url(engine.url.render_as_string(hide_password=False)), revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_schema(engine: Engine) -> None:
    """Fail with a helpful message when the database was never migrated (read-only commands do not migrate)."""
    if not sa.inspect(engine).has_table("user_badges"):
        masked = mask_url(engine.url.render_as_string(hide_password=False))
        raise ConfigurationError(
            f"the database {masked} has no badgestream tables: run `badgestream db upgrade` or start the sink"
        )
