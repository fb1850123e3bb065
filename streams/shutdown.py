"""Bounded shutdown of badgestream's long-running processes (worker, sink, notifier, read API).

Asked to stop (SIGTERM, SIGINT, SIGHUP), a process gets ``BADGESTREAM_SHUTDOWN_GRACE_S`` seconds to
finish its batch, flush and commit; then it exits anyway, as a crash would. That loses nothing:
offsets are committed only after what they cover is durable, so whatever could not be committed
(the broker or the database being gone) is delivered again to the next process. A second stop
signal ends the process at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import suppress

log = logging.getLogger("badgestream.shutdown")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_CUT_SHORT = 3
"""Exit status of a process that the deadline (or a second stop signal) ended before its shutdown finished."""


class StopDeadline:
    """Once :meth:`arm` ed, the process has ``grace`` seconds left; then ``exit`` (``os._exit``) ends it.

    A thread, not the event loop, keeps the time: what outlasts the grace period is typically a
    blocked call (a flush or a close waiting for a broker that is gone) or a non-daemon thread the
    interpreter would join at exit.
    """

    def __init__(self, grace: float, *, exit: Callable[[int], object] = os._exit) -> None:
        self.grace = grace
        self._exit = exit
        self._thread: threading.Thread | None = None
        self._why = ""

    @property
    def armed(self) -> bool:
        return self._thread is not None

    def arm(self, why: str) -> None:
        """Start the countdown (once; later calls keep the first deadline). Safe in a signal handler."""
        if self._thread is not None:
            return
        self._why = why
        self._thread = threading.Thread(target=self._expire, name="stop-deadline", daemon=True)
        self._thread.start()

    def exit_now(self, why: str) -> None:
        log.warning("%s: exiting now; what was not committed will be delivered again", why)
        _flush_output()
        self._exit(EXIT_CUT_SHORT)

    def _expire(self) -> None:
        threading.Event().wait(self.grace)
        self.exit_now(f"still stopping {self.grace:g}s after {self._why}")


def _flush_output() -> None:
    for handler in logging.getLogger().handlers:
        with suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()


def stop_handler(stop: Callable[[], object], deadline: StopDeadline) -> Callable[[int], None]:
    """What a stop signal does: the first calls ``stop`` and arms ``deadline``, a second exits at once."""

    def handle(signum: int) -> None:
        name = signal.Signals(signum).name
        if deadline.armed:
            deadline.exit_now(f"{name} received while stopping")
            return
        log.info("%s received: stopping (at most %gs)", name, deadline.grace)
        deadline.arm(f"{name} was received")
        stop()

    return handle


def on_stop_signals(stop: Callable[[], object], deadline: StopDeadline) -> Callable[[], None]:
    """Route SIGTERM, SIGINT and SIGHUP to :func:`stop_handler` (Python signal handlers, for a
    process without an event loop); returns what puts the previous handlers back."""
    handle = stop_handler(stop, deadline)
    previous = {sig: signal.signal(sig, lambda signum, _frame: handle(signum)) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
