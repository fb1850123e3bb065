"""Shared fixtures: a real Kafka broker, unique topics, and databases (SQLite and PostgreSQL).

Broker, in order: ``BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka when a
Docker engine answers; else the local JVM broker from deploy/kafka, started for the session and
stopped afterwards. PostgreSQL: ``BADGESTREAM_TEST_POSTGRES_URL`` if set, else a throwaway cluster
from deploy/postgres. Those services are stopped however the run ends: SIGTERM (a CI timeout) and
SIGHUP end it as Ctrl-C does, through pytest's teardown, and the broker dies with the test process
even if it is killed outright. With ``CI`` set, every skip is turned into a failure: a test that
could not run in CI did not pass.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="run the long variants of the reliability tests")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, _frame: object) -> None:
    """The first stop signal ends the run as Ctrl-C does (pytest tears the session fixtures down,
    stopping the broker and PostgreSQL they started); later ones are ignored, so that the teardown
    itself is not cut short."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda _signum, _frame: None)
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def pytest_configure(config: pytest.Config) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long variants (marker ``slow``) run only with ``--long``; otherwise they are deselected, not
    skipped, so a skip always means something that should have run did not."""
    if config.getoption("--long"):
        return
    long_variants = [item for item in items if "slow" in item.keywords]
    if long_variants:
        config.hook.pytest_deselected(items=long_variants)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


def unavailable(what: str) -> None:
    """Skip locally, fail loudly in CI."""
    if IN_CI:
        pytest.fail(f"{what} is not available in CI", pytrace=False)
    pytest.skip(f"{what} is not available")


def _started_or_unavailable(service: contextlib.AbstractContextManager[str], what: str) -> Iterator[str]:
    """Yield what starting ``service`` gives (stopping it afterwards), or skip/fail when it cannot start."""
    from schemas.errors import ConfigurationError

    with contextlib.ExitStack() as stack:
        try:
            address = stack.enter_context(service)
        except ConfigurationError as exc:
            unavailable(f"{what} ({exc})")
        yield address


# --- Kafka ------------------------------------------------------------------------------------

def _docker_answers() -> bool:
    """A Docker engine answers a ping. Without DOCKER_HOST or the default socket we do not ask:
    docker-py's failed connect leaves an unclosed socket behind, and its ResourceWarning, raised
    whenever the garbage collector gets to it, failed an unrelated test (filterwarnings = error)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    client = None
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False
    finally:
        if client is not None:
            client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker for the whole session."""
    configured = os.environ.get("BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        from deploy.kafka.broker import metadata_ready

        if not metadata_ready(configured, timeout=10):
            unavailable(f"the broker at BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS={configured}")
        yield configured
        return
    if _docker_answers():  # pragma: no cover - no Docker engine on our CI machines
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from deploy.kafka.broker import throwaway_broker

    yield from _started_or_unavailable(throwaway_broker(), "the local Kafka broker")


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics (deleted afterwards): ``topic_factory("events", partitions=2)``."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.kafka import LIBRDKAFKA_LOG

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "logger": LIBRDKAFKA_LOG})
    created: list[str] = []

    def create(base: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{base}-{uuid.uuid4().hex[:10]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield create
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Unique names for consumer groups, Faust app ids and the like."""
    return lambda base: f"{base}-{uuid.uuid4().hex[:10]}"


# --- databases --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server for the session (maintenance database ``badgestream``)."""
    configured = os.environ.get("BADGESTREAM_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    from deploy.postgres.server import throwaway_postgres

    yield from _started_or_unavailable(throwaway_postgres(), "PostgreSQL")


def _fresh_postgres_database(server_url: str) -> Iterator[str]:
    import sqlalchemy as sa

    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'badgestream.db'}"
        return
    server_url = request.getfixturevalue("postgres_server_url")
    yield from _fresh_postgres_database(server_url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'badgestream.db'}"


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    yield from _fresh_postgres_database(postgres_server_url)
