"""``python -m streams.cli``: the same as the ``badgestream`` command."""

from streams.cli.main import main

raise SystemExit(main())
