"""``make run``'s path end to end: ``badgestream up`` starts its own broker, worker and sink, streams
the demo events, shows the awards, and on Ctrl-C stops everything it started, even once the reader
of its output is gone (``make run | tee run.log``, where the Ctrl-C kills ``tee`` too)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.kafka.broker import _pid_alive, free_port
from tests.integration import harness

pytestmark = pytest.mark.kafka


def up_env() -> dict[str, str]:
    """The environment of an ``up`` that starts its own broker, on free ports (a dev stack may be running)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS", "BADGESTREAM_DATABASE_URL")}
    env.update(PYTHONPATH=str(harness.REPO), BADGESTREAM_WEB_PORT=str(free_port()),
               BADGESTREAM_API_PORT=str(free_port()), BADGESTREAM_LOCAL_KAFKA_PORT=str(free_port()))
    return env


def test_up_shows_awards_and_ctrl_c_leaves_nothing_running(tmp_path: Path) -> None:
    env = up_env()
    state = tmp_path / "state"
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--state-dir", str(state)], env=env,
                              cwd=harness.REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        harness.wait_until(lambda: "press Ctrl-C" in log_path.read_text() or up.poll() is not None,
                           timeout=400, what="the stack to show its results")
        output = log_path.read_text()
        assert up.poll() is None, output[-4000:]
        expected = len(harness.offline_awards(harness.DEMO_EVENTS))
        assert f"awards in the database: {expected}/{expected}" in output
        assert "Leaderboard" in output
        # the notifier's built-in console receiver, as the demo events streamed in
        nudged = re.compile(r"webhook: \S+: 1 to go for Daily Warrior")
        harness.wait_until(lambda: nudged.search(log_path.read_text()) is not None
                           and "earned Quiz Master (silver)" in log_path.read_text(), timeout=60,
                           what="notifications on the console")
        # The read API runs too: the printed profile page answers with the user's badges.
        profile = re.search(r"profile page of (\S+): (http://\S+)", output)
        assert profile and re.search(r"leaderboard and badges: http://\S+/ ", output), output[-3000:]
        page = httpx.get(profile.group(2), timeout=10)
        assert page.status_code == 200 and "Earned" in page.text
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(timeout=120) == 0, log_path.read_text()[-4000:]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    output = log_path.read_text()
    pids = [int(p) for p in re.findall(r"(?:worker|sink|api) started \(pid (\d+)", output)]
    broker_pid = re.search(r"starting broker pid (\d+)", output)
    assert len(pids) == 3 and broker_pid, output[-3000:]
    pids.append(int(broker_pid.group(1)))
    time.sleep(0.5)
    assert [p for p in pids if _pid_alive(p)] == [], "a process of the stack is still running"
    assert "[kafka] stopped" in output

    # The awards are in the SQLite default database, readable with `badgestream user`.
    top = re.search(r"^1\s+(\S+)\s+(\d+)$", output, re.MULTILINE)
    assert top, output[-3000:]
    report = subprocess.run([sys.executable, "-m", "streams.cli", "user", top.group(1), "--json"],
                            env={**env, "BADGESTREAM_DATABASE_URL": f"sqlite:///{state / 'badgestream.db'}"},
                            cwd=harness.REPO, capture_output=True, text=True, check=True)
    badges = json.loads(report.stdout)["badges"]
    assert len(badges) == int(top.group(2))


def test_ctrl_c_stops_everything_after_the_reader_of_ups_output_died(tmp_path: Path) -> None:
    """``make run 2>&1 | tee run.log``, then Ctrl-C: ``tee`` dies first, so every message ``up`` writes
    while stopping fails (EPIPE); still no process of the stack may be left."""
    state = tmp_path / "state"
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(harness.read_events()[:40]) + b"\n")  # a short run: the stop is the point
    seen = tmp_path / "seen.log"
    seen.touch()
    up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--state-dir", str(state), "--events",
                           str(events)], env=up_env(), cwd=harness.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True)
    assert up.stdout is not None
    tee = subprocess.Popen(["tee", str(seen)], stdin=up.stdout, stdout=subprocess.DEVNULL)
    up.stdout.close()  # tee holds the only reading end
    try:
        harness.wait_until(lambda: "press Ctrl-C" in seen.read_text() or up.poll() is not None,
                           timeout=240, what="the stack to show its results")
        assert up.poll() is None, seen.read_text()[-4000:]
        tee.kill()
        tee.wait(timeout=10)
        os.kill(up.pid, signal.SIGINT)
        assert up.wait(timeout=60) == 0, seen.read_text()[-4000:]
        output = seen.read_text()
        pids = [int(p) for p in re.findall(r"(?:worker|sink|notifier|api) started \(pid (\d+)", output)]
        broker_pid = re.search(r"starting broker pid (\d+)", output)
        assert len(pids) == 4 and broker_pid, output[-3000:]
        pids.append(int(broker_pid.group(1)))
        assert [p for p in pids if _pid_alive(p)] == [], "a process of the stack is still running"
        assert harness.processes_mentioning(str(state)) == []
        assert "stopping" not in output  # it was said into the broken pipe, after tee was gone
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for pid in harness.processes_mentioning(str(state)):  # what a failed run left behind
            os.kill(pid, signal.SIGKILL)
        up.wait()
