"""Crash points, for the reliability tests: ``BADGESTREAM_CRASH_AT=<point>:<n>`` kills the worker with
SIGKILL (as ``kill -9`` does: no clean-up, nothing flushed) the n-th time it reaches ``<point>``.

The points are the steps of a commit (streams/worker/state_writer.py), where a crash leaves the
state table, its changelog and the committed input offsets furthest apart:

* ``commit.sent``: the changelog records of the pending states are produced, none acknowledged;
* ``commit.flushed``: every output and changelog record is acknowledged, RocksDB not written yet;
* ``commit.applied``: RocksDB written with the changelog offsets, input offsets not committed yet.

Unset (always, outside the tests) every check is a no-op. Not a setting: nothing in production should
ever set it.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("badgestream.worker")

POINTS = ("commit.sent", "commit.flushed", "commit.applied")
ENV = "BADGESTREAM_CRASH_AT"


class CrashPoints:
    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.at = 0
        self.reached = 0
        if not spec:
            return
        point, _, count = spec.partition(":")
        if point not in POINTS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}={spec!r}: expected <point>:<n> with a point of {', '.join(POINTS)} and n >= 1")
        self.point, self.at = point, int(count)

    @classmethod
    def from_env(cls) -> CrashPoints:
        return cls(os.environ.get(ENV))

    def reach(self, point: str) -> None:
        if point != self.point:
            return
        self.reached += 1
        if self.reached == self.at:
            log.warning("%s: crash point %s reached the %d. time: SIGKILL", ENV, point, self.at)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
