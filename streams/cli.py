"""The ``badgestream`` command line: one sub-command per operation, each importing its heavy modules lazily."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from schemas.errors import BadgestreamError

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

    # --- offline: the pure engine over files ----------------------------------------------
    evaluate = sub.add_parser("evaluate", help="run the badge engine over a JSON-lines file of events, offline")
    evaluate.add_argument("--catalog", required=True, help="badge catalog YAML")
    evaluate.add_argument("events", help="JSON-lines file of events ('-' for stdin)")
    evaluate.set_defaults(func=_lazy("streams.offline:evaluate_command"))

    catalog = sub.add_parser("catalog", help="badge catalog tools")
    catalog_actions = catalog.add_subparsers(dest="catalog_action", required=True, metavar="ACTION")
    catalog_validate = catalog_actions.add_parser("validate", help="check a catalog and explain every error")
    catalog_validate.add_argument("file", help="badge catalog YAML")
    catalog_validate.set_defaults(func=_lazy("streams.offline:catalog_validate_command"))

    # --- award sink and database ----------------------------------------------------------
    sink = sub.add_parser("sink", help="write awards and progress from Kafka into the database")
    sink.add_argument("--database-url", default=None, help="default: BADGESTREAM_DATABASE_URL")
    sink.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (default: run)")
    sink.set_defaults(func=_lazy("streams.award_sink:run_sink"))

    db = sub.add_parser("db", help="database schema: migrate with Alembic")
    db.add_argument("action", choices=["upgrade"], help="upgrade: bring the schema to the latest migration")
    db.add_argument("--database-url", default=None, help="default: BADGESTREAM_DATABASE_URL")
    db.set_defaults(func=_lazy("streams.user_report:db_command"))

    user = sub.add_parser("user", help="a user's badges and progress, from the database")
    user.add_argument("user_id")
    user.add_argument("--json", action="store_true", help="machine-readable output")
    user.add_argument("--database-url", default=None, help="default: BADGESTREAM_DATABASE_URL")
    user.set_defaults(func=_lazy("streams.user_report:user_command"))

    leaderboard = sub.add_parser("leaderboard", help="users by number of badges held")
    leaderboard.add_argument("--limit", type=int, default=10)
    leaderboard.add_argument("--json", action="store_true", help="machine-readable output")
    leaderboard.add_argument("--database-url", default=None, help="default: BADGESTREAM_DATABASE_URL")
    leaderboard.set_defaults(func=_lazy("streams.user_report:leaderboard_command"))

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
