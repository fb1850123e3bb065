"""Security plumbing: Kafka SASL/TLS settings reach every client the project creates, and database
credentials never show in logs or error messages.

Kafka clients are checked by constructing each one with SASL_SSL settings and recording the
configuration it was given (confluent-kafka hides it once built); the Faust worker by its
credentials object and app configuration. Database secrets are checked end to end: the
``sink``, ``user`` and ``db upgrade`` commands are run against PostgreSQL URLs with a distinctive
password (wrong password, unreachable port) and all their output is searched for it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streams.settings import Settings
from tests.integration import harness

SECRET = "Sesame-9f3b-xyzzy"
SASL = {
    "kafka_bootstrap_servers": "127.0.0.1:1",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "badger",
    "kafka_sasl_password": SECRET,
}


@pytest.fixture
def sasl_settings(tmp_path: Path) -> Settings:
    cafile = tmp_path / "ca.pem"
    cafile.write_text("not a real CA: the clients are never connected\n")
    return Settings(**SASL, kafka_ssl_cafile=cafile, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")


class Recorded(Exception):
    """Raised by a recording client constructor where a real client would start connecting."""


class Recorder:
    """Stands in for a confluent-kafka client class; remembers every configuration it was given."""

    def __init__(self, raise_on_build: bool = False) -> None:
        self.configs: list[dict[str, Any]] = []
        self.raise_on_build = raise_on_build

    def __call__(self, config: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.configs.append(dict(config))
        if self.raise_on_build:
            raise Recorded
        return _FakeClient()


class _FakeClient:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: 0


def assert_secure(config: dict[str, Any], settings: Settings) -> None:
    assert config["bootstrap.servers"] == settings.kafka_bootstrap_servers
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "badger"
    assert config["sasl.password"] == SECRET
    assert config["ssl.ca.location"] == str(settings.kafka_ssl_cafile)


def test_topic_admin_gets_the_security_settings(monkeypatch: pytest.MonkeyPatch, sasl_settings: Settings) -> None:
    from streams import kafka as topics

    admin = Recorder(raise_on_build=True)
    monkeypatch.setattr(topics, "AdminClient", admin)
    with pytest.raises(Recorded):
        topics.ensure_topics(sasl_settings)
    assert_secure(admin.configs[0], sasl_settings)


def test_sink_consumer_and_dead_letter_producer_get_the_security_settings(
    monkeypatch: pytest.MonkeyPatch, sasl_settings: Settings
) -> None:
    from streams.sink import award_sink

    consumer, producer = Recorder(), Recorder()
    monkeypatch.setattr(award_sink, "Consumer", consumer)
    monkeypatch.setattr(award_sink, "Producer", producer)
    monkeypatch.setattr(award_sink.AwardSink, "_ensure_topics", lambda self: None)  # the admin: test above
    sink = award_sink.AwardSink(sasl_settings)
    try:
        sink.start()
    finally:
        sink.engine.dispose()
    assert len(consumer.configs) == 1 and len(producer.configs) == 1
    for config in consumer.configs + producer.configs:
        assert_secure(config, sasl_settings)


def test_producer_sdk_gets_the_security_settings(monkeypatch: pytest.MonkeyPatch, sasl_settings: Settings) -> None:
    from streams.sdk import producer as sdk

    recorder = Recorder()
    monkeypatch.setattr(sdk, "Producer", recorder)
    events = sdk.BadgeEvents(sasl_settings)
    events._poller_stop.set()
    events._closed = True
    assert_secure(recorder.configs[0], sasl_settings)


def test_replay_reader_and_publisher_get_the_security_settings(
    monkeypatch: pytest.MonkeyPatch, sasl_settings: Settings
) -> None:
    from streams import db
    from streams.replay import replay

    consumer, producer = Recorder(raise_on_build=True), Recorder(raise_on_build=True)
    monkeypatch.setattr(replay, "Consumer", consumer)
    monkeypatch.setattr(replay, "Producer", producer)
    with pytest.raises(Recorded):
        list(replay.read_input(sasl_settings, show_progress=False))
    found = replay.ReplayDiff(added=[], no_longer_qualifying=[], changed=[], reinstatable=[])
    awards_db = db.make_engine(sasl_settings.database_url_value)
    db.upgrade(awards_db)
    try:
        with pytest.raises(Recorded):
            replay.apply_diff(sasl_settings, awards_db, found, add=True, revoke=False)
    finally:
        awards_db.dispose()
    assert consumer.configs and producer.configs
    for config in consumer.configs + producer.configs:
        assert_secure(config, sasl_settings)


def test_worker_output_producer_gets_the_security_settings(
    monkeypatch: pytest.MonkeyPatch, sasl_settings: Settings
) -> None:
    from streams.worker import output

    recorder = Recorder()
    monkeypatch.setattr(output, "Producer", recorder)
    output.OutputProducer(sasl_settings)
    assert_secure(recorder.configs[0], sasl_settings)


def test_faust_worker_gets_sasl_and_tls_credentials(
    monkeypatch: pytest.MonkeyPatch, sasl_settings: Settings, tmp_path: Path
) -> None:
    import ssl

    from streams.worker import output

    monkeypatch.setattr(output, "Producer", Recorder())  # its own test above; no connection attempts here

    from faust.auth import SASLCredentials

    from streams.kafka import faust_credentials
    from streams.worker.app import create_app

    settings = sasl_settings.model_copy(update={"kafka_ssl_cafile": None, "data_dir": tmp_path / "worker"})
    credentials = faust_credentials(settings)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.username == "badger" and credentials.password == SECRET
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert SECRET not in repr(credentials), "the credentials' repr shows the password"
    app = create_app(settings)
    assert app.conf.broker_credentials is credentials or (
        app.conf.broker_credentials.username == "badger" and app.conf.broker_credentials.password == SECRET)
    assert [str(url) for url in app.conf.broker] == ["kafka://127.0.0.1:1"]
    plaintext = faust_credentials(settings.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"}))
    assert isinstance(plaintext, SASLCredentials) and plaintext.ssl_context is None


def test_sasl_against_a_plaintext_broker_fails_with_a_handshake_error(kafka_bootstrap: str) -> None:
    """The settings are really applied: a SASL client cannot talk to our PLAINTEXT broker."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    settings = Settings(**{**SASL, "kafka_security_protocol": "SASL_PLAINTEXT",
                           "kafka_sasl_mechanism": "PLAIN", "kafka_bootstrap_servers": kafka_bootstrap})
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    logger = logging.getLogger(f"sasl-probe-{time.monotonic_ns()}")
    logger.addHandler(Collect())
    logger.propagate = False
    from streams.kafka import client_config

    admin = AdminClient(client_config(settings, error_cb=lambda err: errors.append(str(err)), logger=logger))
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    admin.poll(0.5)
    text = " ".join(errors).lower()
    assert any(word in text for word in ("sasl", "authentication", "handshake", "disconnected")), errors
    assert SECRET not in text


# --- database credentials ---------------------------------------------------------------------

def _run(args: list[str], env: dict[str, str], seconds: float) -> tuple[int | None, str]:
    """Run a badgestream command; SIGTERM it after ``seconds`` if it is still running (the sink
    waits out a database outage forever). Returns (exit code, all output)."""
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env=env, cwd=harness.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    return proc.returncode, out.decode(errors="replace")


def _secret_forms() -> list[str]:
    return [SECRET, SECRET.replace("-", "%2D"), "Sesame-9f3b"]


@pytest.mark.postgres
def test_database_password_never_appears_in_output(postgres_server_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from deploy.kafka.broker import free_port

    real = make_url(postgres_server_url)
    wrong_password = real.set(password=SECRET).render_as_string(hide_password=False)
    unreachable = real.set(password=SECRET, port=free_port()).render_as_string(hide_password=False)
    assert SECRET in wrong_password and SECRET in unreachable
    env = {**os.environ, "PYTHONPATH": str(harness.REPO), "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "BADGESTREAM_CATALOG_PATH": str(harness.DEMO_CATALOG)}
    runs: list[tuple[str, int | None, str]] = []
    began = time.monotonic()
    for label, url in (("wrong password", wrong_password), ("unreachable", unreachable)):
        for args, seconds in ((["db", "upgrade"], 60), (["user", "u-1"], 60), (["user", "u-1", "--json"], 60),
                              (["leaderboard"], 60), (["sink"], 6)):
            code, out = _run(args, {**env, "BADGESTREAM_DATABASE_URL": url}, seconds)
            runs.append((f"{' '.join(args)} ({label})", code, out))
        code, out = _run(["db", "upgrade", "--database-url", url], env, 60)
        runs.append((f"db upgrade --database-url ({label})", code, out))
    for what, code, out in runs:
        assert out.strip(), f"{what} said nothing"
        for form in _secret_forms():
            assert form not in out, f"{what} printed the password:\n{out[-2000:]}"
        if not what.startswith("sink"):
            assert code not in (0, None), f"{what} exited {code}:\n{out[-1000:]}"
    sink_out = next(out for what, _, out in runs if what == "sink (unreachable)")
    assert "***" in sink_out, "the sink should say which database it waits for, password masked"
    print(f"database secrets: {len(runs)} runs in {time.monotonic() - began:.0f}s, password never shown")
