"""The ``stack`` of a reliability test: its own topics in the shared broker, 4 partitions, SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import StackConfig
from tests.reliability import support


@pytest.fixture
def stack(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[StackConfig]:
    """Topic names carry the module's ``STACK_NAME``; the topics are deleted afterwards."""
    name = getattr(request.module, "STACK_NAME", "reliability")
    stack = StackConfig(bootstrap=kafka_bootstrap, suffix=unique_name(name), data_dir=tmp_path, partitions=4,
                        database_url=f"sqlite:///{tmp_path / 'awards.db'}").create_topics()
    yield stack
    support.cleanup_topics(stack.bootstrap, stack.suffix)
