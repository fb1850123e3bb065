"""Alembic environment: runs on the connection handed over by ``streams.db.upgrade`` (no alembic.ini).

``render_as_batch`` lets later migrations alter SQLite tables (SQLite has almost no ALTER TABLE).
"""

from __future__ import annotations

from alembic import context

from schemas.errors import ConfigurationError
from streams.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise ConfigurationError("migrations run through streams.db.upgrade(url), which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
