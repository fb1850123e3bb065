"""Not part of the suite (no ``test_`` file name): tests/integration/test_isolation.py runs it in a
pytest of its own, which starts the session's broker and PostgreSQL, reports where they are, and
waits to be stopped by a signal."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path


def test_hold_the_services(kafka_bootstrap: str, postgres_server_url: str) -> None:
    Path(os.environ["HELD_SERVICES_OUT"]).write_text(json.dumps({"kafka": kafka_bootstrap,
                                                                 "postgres": postgres_server_url}))
    signal.pause()  # the outer test's signal ends the run from here
