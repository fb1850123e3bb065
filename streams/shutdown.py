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
    received: list[str] = []

    def handle(signum: int) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) > 1:
            deadline.exit_now(f"{name} received while stopping")
            return
        log.info("%s received: stopping (at most %gs)", name, deadline.grace)
        deadline.arm(f"{name} was received")
        stop()

    return handle


def on_stop_signals(stop: Callable[[], object], deadline: StopDeadline) -> Callable[[], None]:
    """Route SIGTERM, SIGINT and SIGHUP to :func:`stop_handler` (Python signal handlers, for a
    process without an event loop); returns what puts the previous handlers back.

    Python runs a signal handler only once the main thread is back in Python code, and a blocking
    librdkafka call (``list_topics`` waiting out its timeout for a broker that is gone) may hold it
    for longer than the grace period. So the deadline is also armed from a thread that reads the
    signal numbers Python's C-level handler writes to the wakeup descriptor at once."""
    handle = stop_handler(stop, deadline)
    previous = {sig: signal.signal(sig, lambda signum, _frame: handle(signum)) for sig in STOP_SIGNALS}
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        while data := os.read(read_end, 64):
            for signum in data:
                if signum in STOP_SIGNALS:
                    deadline.arm(f"{signal.Signals(signum).name} was received")
        os.close(read_end)

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()

    def restore() -> None:
        signal.set_wakeup_fd(previous_wakeup)
        os.close(write_end)  # the watcher reads the end of the pipe and stops
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
