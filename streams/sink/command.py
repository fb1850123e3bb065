"""``badgestream sink``: the award sink as a long-running command that stops within its grace period."""

from __future__ import annotations

import argparse
import logging

from schemas.errors import SinkStopped
from streams.settings import settings_for
from streams.shutdown import StopDeadline, on_stop_signals
from streams.sink.award_sink import AwardSink

log = logging.getLogger("streams.sink.award_sink")  # the sink's own log name, as before


def run_sink(args: argparse.Namespace) -> int:
    """``badgestream sink``: run until SIGTERM/SIGINT/SIGHUP, then finish the current batch, commit and close
    (within ``shutdown_grace_s``)."""
    settings = settings_for(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sink = AwardSink(settings)
    # A stop finishes the current batch; with the broker or the database gone, the deadline ends
    # the wait and the uncommitted batch is redelivered to the next sink.
    restore_signals = on_stop_signals(sink.stop, StopDeadline(settings.shutdown_grace_s))
    try:
        stats = sink.run(max_batches=getattr(args, "max_batches", None))
    except SinkStopped:
        log.warning("stopped before the database became available")
        return 0
    finally:
        sink.close()
        restore_signals()
    log.info("sink stopped after %d batches, %d messages, %d dead letters",
             stats.batches, stats.messages, stats.dead_letters)
    return 0
