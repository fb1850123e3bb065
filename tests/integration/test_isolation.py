"""The test suite shares the machine: with a dev stack (``make run``) and with itself. No test binds
a fixed port or 0.0.0.0, so a dev stack holding the default ports does not break the smoke tier;
and a test run stopped half-way (a CI timeout's SIGTERM, a Ctrl-C) leaves no broker or PostgreSQL
of its fixtures behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from deploy.kafka import broker
from deploy.postgres import server as postgres
from streams.settings import Settings
from tests.integration import harness

pytestmark = pytest.mark.kafka


def dev_stack_ports() -> list[int]:
    """The ports a dev stack (``badgestream up`` on defaults, the local PostgreSQL) listens on."""
    defaults = Settings.model_fields
    return [int(defaults[name].default) for name in ("web_port", "api_port", "notify_metrics_port")] + [
        broker.DEFAULT_PORT, postgres.DEFAULT_PORT]


@contextlib.contextmanager
def held(ports: list[int]) -> Iterator[list[int]]:
    """Listen on each port (loopback; that refuses a wildcard bind too) that is free; a port already
    taken is held by whatever took it, a real dev stack perhaps, which serves as well."""
    with contextlib.ExitStack() as stack:
        holding = []
        for port in ports:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            sock.listen()
            holding.append(port)
        yield holding


def test_the_smoke_tier_passes_beside_a_dev_stack(kafka_bootstrap: str, postgres_server_url: str,
                                                   tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(harness.REPO), "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "BADGESTREAM_TEST_POSTGRES_URL": postgres_server_url}
    with held(dev_stack_ports()):
        result = subprocess.run([sys.executable, "-m", "pytest", "tests/integration/test_smoke.py", "-q",
                                 "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "smoke")],
                                cwd=harness.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_test_run_stopped_half_way_stops_its_broker_and_postgres(stop: signal.Signals, tmp_path: Path) -> None:
    own_tmp = tmp_path / "tmp"  # the services' data directories: whatever runs from there is theirs
    own_tmp.mkdir()
    where = tmp_path / "held.json"
    env = {name: value for name, value in os.environ.items()
           if name not in ("BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS", "BADGESTREAM_TEST_POSTGRES_URL")}
    env.update(PYTHONPATH=str(harness.REPO), TMPDIR=str(own_tmp), HELD_SERVICES_OUT=str(where))
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "pytest", "tests/integration/held_services.py", "-q",
                                "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base")],
                               cwd=harness.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        harness.wait_until(lambda: where.exists() or run.poll() is not None, timeout=120,
                           what="the run to start its services", interval=0.2)
        assert run.poll() is None, log_path.read_text()[-4000:]
        services = json.loads(where.read_text())
        kafka_port = int(services["kafka"].rsplit(":", 1)[1])
        assert broker.port_open(kafka_port)
        engine = sa.create_engine(services["postgres"])
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        engine.dispose()
        postgres_port = sa.make_url(services["postgres"]).port

        os.kill(run.pid, stop)
        assert run.wait(timeout=90) == pytest.ExitCode.INTERRUPTED, log_path.read_text()[-4000:]
        assert harness.processes_mentioning(str(own_tmp)) == [], "a service of the run is still running"
        assert not broker.port_open(kafka_port) and not broker.port_open(postgres_port)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        for pid in harness.processes_mentioning(str(own_tmp)):  # what a failed run left behind
            os.kill(pid, signal.SIGKILL)
