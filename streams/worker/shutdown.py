"""The worker's bounded stop: Faust's worker stops itself on SIGTERM and SIGINT (mode installs the
handlers), but then waits without limit for a broker that is gone, and ignores every further
signal; this worker class starts the :class:`streams.shutdown.StopDeadline` as its stop begins."""

from __future__ import annotations

from typing import Any

from streams.shutdown import StopDeadline


def bounded_stop(worker_class: Any, deadline: StopDeadline) -> Any:
    """``worker_class`` (a Faust/mode worker) whose stop, however it was started (a signal, a crash),
    arms ``deadline``. ``on_stop`` is mode's public hook, called first thing by ``Service.stop``."""

    class BoundedStopWorker(worker_class):  # type: ignore[misc]
        async def on_stop(self) -> None:
            deadline.arm("the worker began to stop")
            await super().on_stop()

    return BoundedStopWorker
