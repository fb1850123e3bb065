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
