"""The bounded stop (streams/shutdown.py) and how each process hooks it, without a broker."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import mode
import uvicorn

from streams.api.serve import BoundedServer
from streams.shutdown import EXIT_CUT_SHORT, StopDeadline, on_stop_signals, stop_handler
from streams.worker.shutdown import bounded_stop


class FakeExit:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def test_an_armed_deadline_exits_after_the_grace_period_and_not_before() -> None:
    exit = FakeExit()
    deadline = StopDeadline(0.3, exit=exit)
    assert not deadline.armed
    began = time.monotonic()
    deadline.arm("a test")
    deadline.arm("a second reason keeps the first deadline")
    assert not exit.called.wait(0.1)
    assert exit.called.wait(5)
    assert time.monotonic() - began >= 0.3
    assert exit.codes == [EXIT_CUT_SHORT]


def test_an_unarmed_deadline_never_exits() -> None:
    exit = FakeExit()
    StopDeadline(0.01, exit=exit)
    assert not exit.called.wait(0.1)


def test_the_first_stop_signal_stops_and_arms_the_second_exits_at_once() -> None:
    exit = FakeExit()
    deadline = StopDeadline(60, exit=exit)
    stops: list[int] = []
    handle = stop_handler(lambda: stops.append(1), deadline)
    handle(signal.SIGTERM)
    assert stops == [1] and deadline.armed and exit.codes == []
    handle(signal.SIGINT)
    assert stops == [1] and exit.codes == [EXIT_CUT_SHORT]


def test_a_real_signal_stops_arms_the_deadline_and_the_handlers_are_restored_after() -> None:
    exit = FakeExit()
    deadline = StopDeadline(60, exit=exit)
    stopped = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    restore = on_stop_signals(stopped.set, deadline)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.wait(5)
        assert deadline.armed and exit.codes == []
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_worker_arms_its_deadline_as_its_stop_begins() -> None:
    exit = FakeExit()
    deadline = StopDeadline(60, exit=exit)

    class Service(mode.Service):
        pass

    service = bounded_stop(Service, deadline)()

    async def start_and_stop() -> bool:
        await service.start()
        armed_while_running = deadline.armed
        await service.stop()
        return armed_while_running

    assert asyncio.run(start_and_stop()) is False
    assert deadline.armed and exit.codes == []


def test_the_read_api_arms_its_deadline_on_the_signal_uvicorn_captures_and_exits_on_the_second() -> None:
    exit = FakeExit()
    deadline = StopDeadline(60, exit=exit)
    server = BoundedServer(uvicorn.Config("streams.api.app:create_app", factory=True), deadline)
    server.handle_exit(signal.SIGTERM, None)
    assert deadline.armed and server.should_exit and exit.codes == []
    server.handle_exit(signal.SIGTERM, None)
    assert exit.codes == [EXIT_CUT_SHORT]
