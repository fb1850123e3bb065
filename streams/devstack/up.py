"""``badgestream up``: the whole system on one machine, from an empty checkout to visible awards.

Starts (or reuses) a local Kafka broker, creates the topics, starts the worker, the sink and the
notifier as child processes (the notifier posts to a built-in receiver that prints each
notification), streams the demo events through the producer SDK, waits until the sink has
written every award, shows a leaderboard and a few users' badges, and keeps running until Ctrl-C,
SIGTERM or SIGHUP, then stops everything it started, whatever became of its stdout (``| tee`` dies
with the Ctrl-C). Children also end when ``up`` is killed outright (deploy/lifetime.py). With
``BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS`` / ``BADGESTREAM_DATABASE_URL`` set, the existing cluster and
database are used instead.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from deploy.lifetime import die_with_parent
from schemas.catalog import Catalog, load_catalog
from schemas.errors import ConfigurationError
from streams.devstack.receiver import WebhookReceiver, describe
from streams.devstack.terminal import keep_console_optional, log_to_file, stop_on_signals
from streams.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_EVENTS = REPO_ROOT / "deploy" / "demo" / "events.jsonl"


def say(message: str) -> None:
    print(f"[up] {message}", flush=True)


CHILD_STOP_MARGIN_S = 5.0
"""How much longer than a child's own grace period ``up`` waits before it kills the child."""


class Child:
    """A badgestream sub-command in its own process group, logging to a file, ending with ``up``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args], env=env, cwd=REPO_ROOT, stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        say(f"{name} started (pid {self.proc.pid}, log {self.log_path})")

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2500:]
            raise ConfigurationError(f"the {self.name} exited with {self.proc.returncode}; log tail:\n{tail}")

    def terminate(self) -> None:
        """SIGTERM to the child's whole process group (e.g. the read API's uvicorn workers)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait until ``deadline`` (time.monotonic) for the child to exit, then kill its process group."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop in time; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()
        say(f"{self.name} stopped")


def stop_children(children: list[Child], grace: float) -> None:
    """Ask every child to stop at once, then wait for each (each stops within its grace period)."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace + CHILD_STOP_MARGIN_S
    for child in reversed(children):
        child.finish(deadline)


@contextlib.contextmanager
def local_broker(settings: Settings, data_dir: Path) -> Iterator[str]:
    """Use the configured broker, or start the local one (and stop it afterwards)."""
    if os.environ.get("BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS"):
        from deploy.kafka.broker import metadata_ready

        if not metadata_ready(settings.kafka_bootstrap_servers, timeout=10):
            raise ConfigurationError(f"no broker answers at {settings.kafka_bootstrap_servers}")
        say(f"using the broker at {settings.kafka_bootstrap_servers}")
        yield settings.kafka_bootstrap_servers
        return
    from deploy.kafka.broker import DEFAULT_PORT, LocalBroker, free_port, port_open

    broker = LocalBroker(data_dir=data_dir / "kafka", tied_to_parent=True,
                         port=int(os.environ.get("BADGESTREAM_LOCAL_KAFKA_PORT", DEFAULT_PORT)))
    if broker.running_pid() is None and port_open(broker.port) and not broker.config_file.exists():
        broker.port = free_port()
        say(f"port {DEFAULT_PORT} is taken by something else; the local broker uses {broker.port}")
    started_here = broker.running_pid() is None
    try:
        broker.start()  # a Ctrl-C while it starts up stops it too
        yield broker.bootstrap
    finally:
        if started_here:
            broker.stop()


def wait_for_awards(database_url: str, expected: int, children: list[Child], timeout: float) -> int:
    """Poll the database until the sink has written ``expected`` awards; show progress."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    deadline = time.monotonic() + timeout
    seen = -1
    try:
        while time.monotonic() < deadline:
            for child in children:
                child.check()
            try:
                with engine.connect() as conn:
                    count = conn.execute(sa.text("SELECT COUNT(*) FROM user_badges")).scalar_one()
            except sa.exc.OperationalError:
                count = 0  # the sink has not created the schema yet
            if count != seen:
                say(f"awards in the database: {count}/{expected}")
                seen = count
            if count >= expected:
                return int(count)
            time.sleep(1.0)
    finally:
        engine.dispose()
    raise ConfigurationError(f"only {seen} of {expected} awards arrived within {timeout:.0f}s; see the logs")


def up_command(args: argparse.Namespace) -> int:
    keep_console_optional()
    stop_on_signals()
    settings = Settings()
    var = Path(args.state_dir).resolve()
    (var / "logs").mkdir(parents=True, exist_ok=True)
    log_to_file(var / "logs" / "up.log")
    catalog_path = Path(args.catalog) if args.catalog else settings.catalog_path
    events_path = Path(args.events) if args.events else DEMO_EVENTS
    catalog = load_catalog(catalog_path)  # refuse a bad catalog before starting anything
    say(f"catalog {catalog_path} (version {catalog.catalog_version}, {len(catalog.badges)} badges)")

    database_url = settings.database_url_value
    if not os.environ.get("BADGESTREAM_DATABASE_URL"):
        database_url = f"sqlite:///{var / 'badgestream.db'}"
    children: list[Child] = []
    receiver: WebhookReceiver | None = None
    try:
        with local_broker(settings, var) as bootstrap:
            try:
                env = {
                    **os.environ,
                    "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                    "BADGESTREAM_CATALOG_PATH": str(catalog_path),
                    "BADGESTREAM_DATABASE_URL": database_url,
                    "BADGESTREAM_DATA_DIR": str(var / "worker"),
                }
                settings = Settings(kafka_bootstrap_servers=bootstrap, catalog_path=catalog_path)
                # The read API's explain and what-if read the live engine state from the worker.
                env["BADGESTREAM_WORKER_URL"] = f"http://{settings.web_host}:{settings.web_port}"
                from streams.kafka import ensure_topics

                ensure_topics(settings)
                children.append(Child("worker", ["worker", "-l", "info"], env, var / "logs"))
                children.append(Child("sink", ["sink"], env, var / "logs"))
                receiver = console_notifications(catalog, env, var, children)
                api_url = start_api(settings, env, var / "logs", children)
                expected = stream_events(settings, events_path, catalog_path)
                wait_for_awards(database_url, expected, children, timeout=args.timeout)
                shown = show_results(database_url, args.show_users)
                say(f"worker metrics: http://{settings.web_host}:{settings.web_port}/metrics")
                show_api(api_url, shown)
                if args.once:
                    return 0
                say("running; press Ctrl-C to stop everything")
                while True:
                    for child in children:
                        child.check()
                    time.sleep(1.0)
            finally:
                say("stopping ...")
                stop_children(children, settings.shutdown_grace_s)
                if receiver is not None:
                    receiver.stop()
    except KeyboardInterrupt:
        return 0  # everything started has been stopped on the way out


def console_notifications(catalog: Catalog, env: dict[str, str], var: Path,
                          children: list[Child]) -> WebhookReceiver | None:
    """Start the notifier; without configured endpoints, aimed at a receiver printing "ana earned ..." lines."""
    receiver = None
    if not (os.environ.get("BADGESTREAM_WEBHOOK_URLS") or os.environ.get("BADGESTREAM_WEBHOOK_CONFIG")):
        names = display_names(catalog)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        receiver = WebhookReceiver(secret, on_received=lambda item: say(f"webhook: {describe(item, names)}")).start()
        env.update({"BADGESTREAM_WEBHOOK_URLS": receiver.url("/console"), "BADGESTREAM_WEBHOOK_SECRET": secret})
    env.setdefault("BADGESTREAM_NOTIFY_OUTBOX", str(var / "notify-outbox.sqlite"))
    env.setdefault("BADGESTREAM_NOTIFY_METRICS_PORT", "0")  # a second local stack must not clash on a port
    children.append(Child("notifier", ["notify"], env, var / "logs"))
    return receiver


def display_names(catalog: Catalog) -> dict[str, str]:
    """What people read for each award's badge id: levels are awarded like badges, and "fay earned
    Rookie" says more than the level's id."""
    names = {badge.id: badge.display_name for badge in catalog.badges}
    names.update((level.id, level.display_name) for level in catalog.levels)
    return names


def stream_events(settings: Settings, events_path: Path, catalog_path: Path) -> int:
    """Send the demo file through the producer SDK; return how many awards it should earn."""
    from evaluators.runner import EngineRun, plugin_engine
    from streams.sdk.producer import BadgeEvents

    catalog = load_catalog(catalog_path)
    run = EngineRun(plugin_engine(catalog), with_progress=False)
    expected = 0
    lines = [line for line in events_path.read_bytes().splitlines() if line.strip()]
    with BadgeEvents(settings, catalog=catalog) as events:
        for number, line in enumerate(lines, 1):
            envelope, evaluation = run.read(line)
            expected += len(evaluation.awards)
            events.send(envelope)
            if number % 100 == 0 or number == len(lines):
                say(f"sent {number}/{len(lines)} events")
        events.flush()
    say(f"{len(lines)} demo events sent; {expected} awards expected")
    return expected


def start_api(settings: Settings, env: dict[str, str], log_dir: Path, children: list[Child]) -> str:
    """Start ``badgestream api`` (on BADGESTREAM_API_PORT, or a free port when that is taken); return its URL."""
    from deploy.kafka.broker import free_port, port_open

    port = settings.api_port
    if port_open(port):
        port = free_port()
        say(f"port {settings.api_port} is taken; the read API uses {port}")
    children.append(Child("api", ["api", "--host", settings.api_host, "--port", str(port)], env, log_dir))
    return f"http://{settings.api_host}:{port}"


def show_api(api_url: str, users: list[str]) -> None:
    """Wait for the read API to answer, then print where to look: a demo user's profile and the leaderboard."""
    from urllib.parse import quote

    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/healthz", timeout=2).status_code == 200:
                break
        time.sleep(0.5)
    else:
        say(f"the read API at {api_url} does not answer yet; see var/logs/api.log")
    if users:
        user = quote(users[0], safe="")
        say(f"profile page of {users[0]}: {api_url}/users/{user}")
        say(f"why {users[0]} holds quiz_master or not: {api_url}/v1/users/{user}/badges/quiz_master/explain")
        event = orjson.dumps({"event_id": "what-if-1", "type": "quiz_completed", "user_id": users[0],
                              "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "data": {"quiz_id": "q-new", "score": 9, "total_questions": 10}}).decode()
        say(f"what one more quiz would do: curl -s -X POST {api_url}/v1/users/{user}/what-if "
            f"-H 'content-type: application/json' -d '{event}'")
    say(f"leaderboard and badges: {api_url}/  (JSON: {api_url}/v1/leaderboard, API docs: {api_url}/docs)")


def show_results(database_url: str, users: int) -> list[str]:
    """The leaderboard and the top users' badges and progress, as ``badgestream user`` prints them;
    returns the users shown, best first."""
    from streams import db
    from streams.cli import user_report

    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            ranking = db.leaderboard(conn, limit=10)
            print("\nLeaderboard (users by badges held)")
            print(user_report.render_leaderboard(ranking))
            for user_id, _count in ranking[:users]:
                print()
                print(user_report.render_text(user_report.build_report(conn, user_id)))
    finally:
        engine.dispose()
    print(flush=True)
    return [user_id for user_id, _count in ranking[:users]]
