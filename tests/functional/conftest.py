"""Fixtures of the functional tier: an award database migrated to the newest schema, on each backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from streams import db


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An empty award database at the newest migration (a module with data of its own overrides it)."""
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()
