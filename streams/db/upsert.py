"""Batch ``INSERT ... ON CONFLICT`` for SQLite and PostgreSQL: the one way the writes and the aggregates upsert rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from schemas.errors import ConfigurationError


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise ConfigurationError(f"unsupported database dialect {name!r}: badgestream supports sqlite and postgresql")


def _json_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    # Timestamps are sent as RFC 3339 with their offset (naive ones as UTC), JSON columns nested.
    try:
        return orjson.dumps(list(rows), option=orjson.OPT_NAIVE_UTC).decode()
    except TypeError:  # integers wider than 64 bits in metadata: the stdlib can write those
        return json.dumps([{k: v.isoformat() if isinstance(v, datetime | date) else v for k, v in row.items()}
                           for row in rows], default=str)


def _recordset(table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> sa.Select[Any]:
    """``SELECT ... FROM json_to_recordset(:rows) AS incoming(col type, ...)``: a whole batch as one parameter.

    PostgreSQL only. One short statement and one JSON document (serialised by orjson), instead of
    a multi-row VALUES with thousands of placeholders that the driver must parse and adapt for
    every batch: several times faster, and the reason the sink reaches its throughput goal.
    """
    document = sa.cast(sa.bindparam("rows", _json_rows(rows), type_=sa.Text), postgresql.JSON)
    incoming = (
        sa.func.json_to_recordset(document)
        .table_valued(*[sa.column(name, table.c[name].type) for name in columns])
        .render_derived(name="incoming", with_types=True)
    )
    return sa.select(*[incoming.c[name] for name in columns])


OnConflict = Callable[[Any], Any]


def upsert(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], on_conflict: OnConflict) -> int:
    """Insert ``rows`` with the dialect's ``INSERT ... ON CONFLICT`` clause from ``on_conflict(insert)``.

    Returns the number of rows inserted or updated. PostgreSQL gets the whole batch as one JSON
    document (see ``_recordset``); SQLite gets an executemany of one prepared statement, which is its fast path.
    """
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        return len(upsert_returning(conn, table, rows, on_conflict, [sa.literal(1)]))
    result = conn.execute(on_conflict(dialect_insert(conn, table)), list(rows))
    # sqlite3 sums the changes of an executemany; rows skipped by ON CONFLICT do not count.
    return max(result.rowcount, 0)


def upsert_returning(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], on_conflict: OnConflict,
                     returning: Sequence[sa.ColumnElement[Any]]) -> list[Row[Any]]:
    """Like ``upsert``, returning ``returning`` of each row inserted or updated (none for a row skipped)."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        columns = list(rows[0])
        insert = postgresql.insert(table).from_select(columns, _recordset(table, columns, rows))
        return list(conn.execute(on_conflict(insert).returning(*returning)).all())
    # SQLite: SQLAlchemy batches the rows into multi-row INSERTs ("insertmanyvalues") to return them.
    return list(conn.execute(on_conflict(dialect_insert(conn, table)).returning(*returning), list(rows)).all())


def _sqlite_rows_per_statement(columns: int) -> int:
    """Rows per multi-row VALUES within SQLite's bound-parameter limit (32766 since 3.32, 999 before)."""
    import sqlite3

    limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return max(1, min(1000, limit // columns))


def add_returning(conn: Connection, table: sa.Table, columns: Sequence[str], keys: Sequence[str],
                  added: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``INSERT rows ON CONFLICT (keys) DO UPDATE SET c = c + incoming c`` for each of ``added`` (``DO NOTHING``
    when there are none) ``RETURNING columns``: the rows as they are after the statement (none for a row skipped).

    ``rows`` are plain tuples in the order of ``columns``, holding only text and integers (dates as ISO text),
    and are sent to the driver as they are: the aggregates write ~30,000 rows per sink batch, and SQLAlchemy's
    per-row parameter processing and ``Row`` objects cost more than the database does (bench/sink). PostgreSQL
    gets one JSON document (as ``_recordset``), SQLite multi-row ``VALUES`` of up to 1000 rows. Returned values
    are as the driver gives them (PostgreSQL: a ``date`` for a date column).
    """
    if not rows:
        return []
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(name) for name in columns)
    name = quote(table.name)
    if added:
        update = ", ".join(f"{quote(c)} = {name}.{quote(c)} + excluded.{quote(c)}" for c in added)
        conflict = f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {update}"
    else:
        conflict = f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO NOTHING"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    out: list[tuple[Any, ...]] = []
    try:
        if conn.dialect.name == "postgresql":
            types = ", ".join(f"{quote(c)} {table.c[c].type.compile(conn.dialect)}" for c in columns)
            cursor.execute(f"INSERT INTO {name} ({names}) SELECT {names} FROM json_to_recordset(%s::json) "
                           f"AS incoming({types}) {conflict} RETURNING {names}",
                           (orjson.dumps([dict(zip(columns, row, strict=True)) for row in rows]).decode(),))
            return [tuple(row) for row in cursor.fetchall()]
        step = _sqlite_rows_per_statement(len(columns))
        group = f"({', '.join('?' * len(columns))})"
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            cursor.execute(f"INSERT INTO {name} ({names}) VALUES {', '.join([group] * len(chunk))} "
                           f"{conflict} RETURNING {names}", [value for row in chunk for value in row])
            out += cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy raises it (OperationalError for "database is locked" or a lost server), so
        # callers tell a transient failure from a fatal one the same way for every statement; a lost
        # connection is not handed out by the pool again.
        lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
        if lost:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(f"INSERT INTO {name} ... {conflict}", None, exc,
                                         conn.dialect.loaded_dbapi.Error, connection_invalidated=lost,
                                         dialect=conn.dialect) from exc
    finally:
        cursor.close()
    return out
