"""Children started with ``die_with_parent`` (deploy/lifetime.py) end when their parent is killed
outright, as ``up``'s children and the test broker must."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from deploy.kafka.broker import _pid_alive

PARENT = """
import subprocess, sys
from deploy.lifetime import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent(),
                         start_new_session=True)
print(child.pid, flush=True)
sys.stdin.read()  # until the test kills us
"""


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_child_in_its_own_session_ends_when_its_parent_is_killed() -> None:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=repo, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": repo})
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _pid_alive(child)
        parent.kill()  # SIGKILL: no clean-up code of the parent runs
        parent.wait(timeout=10)
        assert _wait_for(lambda: not _pid_alive(child), timeout=10), "the child outlived its killed parent"
    finally:
        if _pid_alive(child):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
        parent.communicate()
