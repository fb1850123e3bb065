"""Child processes that end with the process that started them, even when it is killed (Linux).

``badgestream up`` and the test fixtures start services (the broker, the worker, ...) that must not
outlive them: a ``kill -9`` of the parent runs no clean-up code, so the kernel has to deliver the
stop. ``PR_SET_PDEATHSIG`` asks it to send SIGTERM to the child when the parent dies (more exactly,
the parent's thread that started it: start such children from a thread that lives as long as the
process, e.g. the main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that has the child receive ``sig`` when this process
    dies; None where the kernel offers no such thing (not Linux).

    Everything is looked up here, before the fork: between fork and exec the child only makes the
    system call (another thread may hold a lock at the fork that the child could never take)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request was made
            os.kill(os.getpid(), sig)

    return preexec
