"""``badgestream api``: serve the read API and the pages with uvicorn (127.0.0.1:8000 unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import os

from streams.settings import Settings

log = logging.getLogger(__name__)


def api_command(args: argparse.Namespace) -> int:
    """Run uvicorn on ``create_app``; ``--workers N`` starts N processes, each building the app from the settings."""
    import uvicorn

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
    uvicorn.run("streams.api.app:create_app", factory=True, host=settings.api_host, port=settings.api_port,
                workers=settings.api_workers, log_level=args.log_level, access_log=args.access_log,
                server_header=False)
    return 0
