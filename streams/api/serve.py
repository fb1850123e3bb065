"""``badgestream api``: serve the read API and the pages with uvicorn (127.0.0.1:8000 unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from types import FrameType

import uvicorn

from streams.settings import Settings
from streams.shutdown import StopDeadline

log = logging.getLogger(__name__)


class BoundedServer(uvicorn.Server):
    """uvicorn's server with a bounded stop: uvicorn waits for requests in flight, and a request
    blocked on a database that is gone (a sync endpoint's thread cannot be cancelled) would hold
    the process; past the deadline it exits anyway (the API writes nothing, so nothing is lost)."""

    def __init__(self, config: uvicorn.Config, deadline: StopDeadline) -> None:
        super().__init__(config)
        self.deadline = deadline

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.deadline.armed:  # a second signal: as in every other badgestream process
            self.deadline.exit_now(f"{name} received while stopping")
            return
        self.deadline.arm(f"{name} was received")
        super().handle_exit(sig, frame)


def api_command(args: argparse.Namespace) -> int:
    """Run uvicorn on ``create_app``; ``--workers N`` starts N processes, each building the app from the settings."""
    overrides = {name: value for name, value in (("api_host", args.host), ("api_port", args.port),
                                                 ("api_workers", args.workers)) if value is not None}
    settings = Settings(**overrides)
    # Worker processes build their own app from the environment: pass the command-line choices on.
    os.environ["BADGESTREAM_API_HOST"] = settings.api_host
    os.environ["BADGESTREAM_API_PORT"] = str(settings.api_port)
    if args.database_url:
        os.environ["BADGESTREAM_DATABASE_URL"] = args.database_url
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    auth = "bearer token required on /v1" if settings.api_token else "no token (include_hidden refused)"
    log.info("read API on http://%s:%d (database %s, %s, %d worker(s))", settings.api_host, settings.api_port,
             Settings().database_url_masked, auth, settings.api_workers)
    options = {"factory": True, "host": settings.api_host, "port": settings.api_port, "log_level": args.log_level,
               "access_log": args.access_log, "server_header": False,
               # Requests in flight get half the grace period; the app's shutdown, the rest.
               "timeout_graceful_shutdown": max(1, int(settings.shutdown_grace_s / 2))}
    if settings.api_workers > 1:
        # uvicorn's supervisor stops its worker processes, each under the same graceful timeout.
        uvicorn.run("streams.api.app:create_app", workers=settings.api_workers, **options)
        return 0
    server = BoundedServer(uvicorn.Config("streams.api.app:create_app", **options),
                           StopDeadline(settings.shutdown_grace_s))
    server.run()
    return 0 if server.started else 1
