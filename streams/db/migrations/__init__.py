"""Alembic migrations of the award database, run programmatically by ``streams.db.upgrade``."""
