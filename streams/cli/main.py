"""The ``badgestream`` command line: one sub-command per operation, each importing its heavy modules lazily."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from schemas.errors import BadgestreamError
from streams.cli import options

Handler = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Handler:
    """Point a sub-command at ``module:function`` without importing Faust for ``--help``."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        module_name, func_name = target.split(":")
        func: Handler = getattr(importlib.import_module(module_name), func_name)
        return func(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="badgestream",
        description="Event-driven badge engine: events in, awards out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- local infrastructure ------------------------------------------------------------
    kafka = sub.add_parser("kafka", help="start/stop the local single-node KRaft broker")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default 9092)")
    kafka.add_argument("--data-dir", default=None, help="broker state directory")
    kafka.set_defaults(func=_lazy("deploy.kafka.broker:cli"))

    postgres = sub.add_parser("postgres", help="start/stop a throwaway local PostgreSQL")
    postgres.add_argument("action", choices=["start", "stop", "status"])
    postgres.add_argument("--port", type=int, default=None, help="port (default 55432)")
    postgres.add_argument("--data-dir", default=None, help="cluster directory")
    postgres.set_defaults(func=_lazy("deploy.postgres.server:cli"))

    # --- stream processing ---------------------------------------------------------------
    worker = sub.add_parser("worker", help="run the Faust worker: events in, awards out")
    options.catalog(worker)
    worker.add_argument("-l", "--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"])
    worker.set_defaults(func=_lazy("streams.worker.app:worker_command"))

    replay = sub.add_parser("replay", help="recompute awards from the input topics and diff against the database")
    options.catalog(replay)
    options.database_url(replay)
    replay.add_argument("--apply", action="store_true", help="write the missing awards (flagged backfill)")
    replay.add_argument("--revoke", action="store_true", help="revoke awards that no longer qualify")
    replay.add_argument("--json", action="store_true", help="print the whole diff as JSON")
    replay.add_argument("--show", type=int, default=20, help="rows shown per section")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=_lazy("streams.replay.replay:replay_command"))

    emit = sub.add_parser("emit", help="send one event, or a JSON-lines file of events")
    emit.add_argument("type", nargs="?", help="event type, e.g. quiz_completed")
    emit.add_argument("--user", help="user_id")
    emit.add_argument("--data", help="event data as a JSON object")
    emit.add_argument("--event-id", default=None, help="default: a fresh unique id")
    emit.add_argument("--occurred-at", default=None, help="ISO-8601 with offset (default: now)")
    emit.add_argument("--tz", default="UTC", help="IANA time zone of the user")
    emit.add_argument("--file", help="JSON-lines file of events to send instead")
    emit.add_argument("--topic", default=None, help="default: the first input topic")
    emit.add_argument("--no-catalog-checks", action="store_true", help="skip the catalog's per-type data checks")
    emit.set_defaults(func=_lazy("streams.sdk.producer:emit_command"))

    simulate = sub.add_parser("simulate", help="a realistic synthetic event stream, reproducible by seed")
    simulate.add_argument("--users", type=int, default=1000)
    simulate.add_argument("--events", type=int, default=100_000)
    simulate.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--start", default=None, help="first day, YYYY-MM-DD (default 2026-05-01)")
    simulate.add_argument("--output", default=None, help="write JSON lines to this file instead of sending")
    simulate.set_defaults(func=_lazy("streams.devstack.simulate:simulate_command"))

    schema = sub.add_parser("schema", help="JSON Schemas of every wire model, for upstream teams")
    schema.add_argument("action", choices=["export"])
    schema.add_argument("directory", help="where to write the *.schema.json files")
    schema.set_defaults(func=_lazy("streams.sdk.producer:schema_command"))

    up = sub.add_parser("up", help="the whole stack locally: broker, worker, sink, demo events, awards shown")
    options.catalog(up, default="the demo catalog")
    up.add_argument("--events", default=None, help="JSON-lines events to stream (default: the demo events)")
    up.add_argument("--state-dir", default="var", help="where broker, worker state, database and logs live")
    up.add_argument("--show-users", type=int, default=3, help="how many users' badges to print")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every award")
    up.add_argument("--once", action="store_true", help="stop everything after showing the results")
    up.set_defaults(func=_lazy("streams.devstack.up:up_command"))

    notify = sub.add_parser("notify", help="deliver awards, revocations and nudges to webhooks (Standard Webhooks)")
    notify.set_defaults(func=_lazy("streams.notify.notifier:notify_command"))

    # --- offline: the pure engine over files ----------------------------------------------
    evaluate = sub.add_parser("evaluate", help="run the badge engine over a JSON-lines file of events, offline")
    options.catalog(evaluate, required=True)
    evaluate.add_argument("events", help="JSON-lines file of events ('-' for stdin)")
    evaluate.add_argument("--nudges", action="store_true", help="print the nudges too (badge-nudges records)")
    evaluate.add_argument("--explain", nargs="+", metavar="ID",
                          help="USER [BADGE]: instead of the awards, explain the user's badge (every badge and level "
                               "without BADGE) as of their last event; put it after EVENTS")
    evaluate.add_argument("--json", action="store_true", help="with --explain: the explanation as JSON")
    evaluate.set_defaults(func=_lazy("streams.cli.offline:evaluate_command"))

    explain = sub.add_parser("explain", help="why a user holds a badge, or what is still missing")
    explain.add_argument("user_id")
    explain.add_argument("badge_id", help="a badge or level id")
    explain.add_argument("--tz", default="UTC", help="the user's IANA time zone, for the badge's window")
    explain.add_argument("--json", action="store_true", help="the API's JSON answer")
    options.catalog(explain)
    options.database_url(explain)
    explain.set_defaults(func=_lazy("streams.cli.explain:explain_command"))

    what_if = sub.add_parser("what-if", help="dry-run one event on a user's live state: what it would award, and why")
    what_if.add_argument("user_id")
    what_if.add_argument("event", help="a JSON file with one event ('-' for stdin)")
    what_if.add_argument("--json", action="store_true", help="the API's JSON answer")
    options.catalog(what_if)
    options.database_url(what_if)
    what_if.set_defaults(func=_lazy("streams.cli.explain:what_if_command"))

    catalog = sub.add_parser("catalog", help="badge catalog tools")
    catalog_actions = catalog.add_subparsers(dest="catalog_action", required=True, metavar="ACTION")
    catalog_validate = catalog_actions.add_parser("validate", help="check a catalog and explain every error")
    catalog_validate.add_argument("file", help="badge catalog YAML")
    catalog_validate.set_defaults(func=_lazy("streams.cli.offline:catalog_validate_command"))

    # --- award sink and database ----------------------------------------------------------
    sink = sub.add_parser("sink", help="write awards and progress from Kafka into the database")
    options.database_url(sink)
    sink.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (default: run)")
    sink.set_defaults(func=_lazy("streams.sink.command:run_sink"))

    db = sub.add_parser("db", help="database schema: migrate with Alembic")
    db.add_argument("action", choices=["upgrade"], help="upgrade: bring the schema to the latest migration")
    options.database_url(db)
    db.set_defaults(func=_lazy("streams.cli.user_report:db_command"))

    user = sub.add_parser("user", help="a user's badges and progress, from the database")
    user.add_argument("user_id")
    user.add_argument("--json", action="store_true", help="machine-readable output")
    options.database_url(user)
    user.set_defaults(func=_lazy("streams.cli.user_report:user_command"))

    leaderboard = sub.add_parser("leaderboard", help="users by number of badges held")
    leaderboard.add_argument("--limit", type=int, default=10)
    leaderboard.add_argument("--json", action="store_true", help="machine-readable output")
    options.database_url(leaderboard)
    leaderboard.set_defaults(func=_lazy("streams.cli.user_report:leaderboard_command"))

    api = sub.add_parser("api", help="the read API and profile pages over the award database (HTTP)")
    api.add_argument("--host", default=None, help="bind address (default: BADGESTREAM_API_HOST, 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default: BADGESTREAM_API_PORT, 8000)")
    api.add_argument("--workers", type=int, default=None, help="uvicorn processes (default: BADGESTREAM_API_WORKERS)")
    options.database_url(api)
    api.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    api.add_argument("--access-log", action="store_true", help="log every request")
    api.set_defaults(func=_lazy("streams.api.serve:api_command"))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BadgestreamError as exc:
        print(f"badgestream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
