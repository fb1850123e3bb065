"""``badgestream sink`` that dies like ``kill -9`` right after a batch's database commit, before the
batch's Kafka offsets are committed: the window test_sink_crash.py aims at.

``CRASH_AFTER_BATCHES=n``: the n-th batch is written and committed to the database, then the process
ends with ``os._exit(137)`` (no clean-up, no offset commit, no consumer close).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from streams.cli.main import main
from streams.sink import award_sink


def crash_after(batches: int) -> None:
    commit_offsets = award_sink.AwardSink._commit
    written = 0

    def commit(self: award_sink.AwardSink, offsets: Any) -> bool:
        nonlocal written
        written += 1  # _commit runs only after the batch's transaction committed
        if written >= batches:
            print(f"crashing_sink: batch {written} is in the database; dying before its offset commit", flush=True)
            os._exit(137)
        return commit_offsets(self, offsets)

    award_sink.AwardSink._commit = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    crash_after(int(os.environ["CRASH_AFTER_BATCHES"]))
    sys.exit(main(["sink", *sys.argv[1:]]))
