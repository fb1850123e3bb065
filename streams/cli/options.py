"""The command-line options several commands share, each declared once; ``streams.settings.settings_for``
reads them back into the settings."""

from __future__ import annotations

import argparse


def catalog(parser: argparse.ArgumentParser, *, required: bool = False,
            default: str = "BADGESTREAM_CATALOG_PATH") -> None:
    """``--catalog FILE``: the badge catalog YAML."""
    parser.add_argument("--catalog", required=required, default=None,
                        help="badge catalog YAML" + ("" if required else f" (default: {default})"))


def database_url(parser: argparse.ArgumentParser) -> None:
    """``--database-url URL``: the award database."""
    parser.add_argument("--database-url", default=None,
                        help="SQLAlchemy URL of the award database (default: BADGESTREAM_DATABASE_URL)")
