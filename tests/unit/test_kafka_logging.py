"""Every librdkafka client of the project logs through Python logging: its lines are formatted,
levelled and filtered like the rest, never printed raw on stderr (``%4|...|GETPID|...``)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from streams.kafka import LIBRDKAFKA_LOG, client_config
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CLIENTS = {"Producer", "Consumer", "AdminClient"}


def constructions(root: Path) -> list[tuple[str, int, str]]:
    """(file, line, source of the function around it) of every librdkafka client built under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        scopes = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CLIENTS):
                continue
            around = [s for s in scopes if s.lineno <= node.lineno <= (s.end_lineno or s.lineno)]
            scope = min(around, key=lambda s: (s.end_lineno or s.lineno) - s.lineno) if around else tree
            found.append((str(path.relative_to(REPO)), node.lineno, ast.unparse(scope)))
    return found


def test_every_client_of_streams_and_deploy_is_configured_with_the_logger() -> None:
    found = constructions(REPO / "streams") + constructions(REPO / "deploy")
    # (and the tests' shared helpers; single tests and benchmarks may print librdkafka's lines raw)
    found += [item for item in constructions(REPO / "tests")
              if item[0] in ("tests/conftest.py", "tests/integration/harness.py", "tests/reliability/support.py")]
    assert len(found) >= 12  # the scan sees the clients (sink, notifier, worker output, SDK, replay, admin ...)
    unlogged = [f"{file}:{line}" for file, line, source in found
                if "client_config(" not in source and "'logger'" not in source]
    assert unlogged == [], "librdkafka clients without a Python logger (use streams.kafka.client_config)"


def test_client_config_hands_librdkafka_the_python_logger() -> None:
    config = client_config(Settings())
    assert config["logger"] is LIBRDKAFKA_LOG
    assert isinstance(LIBRDKAFKA_LOG, logging.Logger)
