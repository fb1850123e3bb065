"""kill -9 at each step of a commit: the state table, its changelog and the input offsets stay exact.

A commit writes the users' states in steps (streams/worker/state_writer.py): changelog records sent,
then acknowledged together with the outputs, then one RocksDB write batch per partition with the
changelog offset, then the input offsets committed. The worker kills itself (SIGKILL, through
``BADGESTREAM_CRASH_AT``) at the first commit of a life, once at each step, while events keep
arriving; once, the local state is deleted after the crash as well, so the restarted worker has only
the changelog to recover from. Then a clean worker finishes the stream, and:

* the database holds exactly the awards and progress rows of a clean run, none twice;
* every user's stored value (badges, outbox, input marks, resend buckets) is the same read from
  RocksDB as rebuilt from the changelog alone, by a worker started on an empty state directory.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request

import orjson
import pytest

from tests.integration import harness
from tests.integration.harness import StackConfig
from tests.reliability import support

pytestmark = pytest.mark.kafka

STACK_NAME = "commitcrash"

LIVES = [  # (the step the worker dies at, whether its local state is lost with it)
    ("commit.sent", False),
    ("commit.flushed", True),
    ("commit.applied", False),
]


def test_kill9_at_each_step_of_a_commit_leaves_the_state_of_a_clean_run(stack: StackConfig) -> None:
    events_file = stack.data_dir / "events.jsonl"
    lines = support.write_simulated(events_file, users=30, events=12_000, seed=41)
    expected = support.expected_offline(events_file)
    users = sorted({orjson.loads(line)["user_id"] for line in lines})
    assert stack.database_url is not None
    state_dir = stack.data_dir / "worker"
    # Paced, so that every life has events to evaluate and commit (about 40 s of traffic).
    producing = threading.Thread(target=support.produce_paced, daemon=True,
                                 args=(stack.bootstrap, stack.input_topic, lines, 300.0))
    producing.start()
    sink = support.sink(stack).start()
    worker = None
    try:
        for number, (point, lose_state) in enumerate(LIVES, 1):
            worker = harness.worker(stack, f"worker-{number}", BADGESTREAM_CRASH_AT=f"{point}:1",
                                    **support.FAST_FAILOVER).start()
            harness.wait_until(lambda w=worker: not w.alive(), timeout=120, what=f"the worker's crash at {point}")
            assert f"crash point {point} reached" in worker.log(), worker.log()[-4000:]
            if lose_state:
                shutil.rmtree(state_dir)
        worker = harness.worker(stack, "worker-clean", **support.FAST_FAILOVER).start()
        support.wait_for_database(stack.database_url, expected, timeout=300, watch=[worker, sink])
        producing.join(timeout=60)
        stored = stored_values(worker, users)
        assert worker.stop() == 0

        # The same values, rebuilt from the changelog alone.
        shutil.rmtree(state_dir)
        worker = harness.worker(stack, "worker-recovered", **support.FAST_FAILOVER).start()
        # (Faust answers views while it recovers: wait until the table is whole, or time out and show.)
        recovered: list[dict[str, object] | None] = [None]

        def same() -> bool:
            recovered[0] = stored_values(worker, users)
            return recovered[0] == stored

        try:
            harness.wait_until(same, timeout=120, what="the recovered values")
        except AssertionError:
            assert recovered[0] == stored
    finally:
        if worker is not None:
            worker.stop()
        sink.stop()
    support.assert_same_result(support.read_database(stack.database_url), expected)


def stored_values(worker: harness.Process, users: list[str]) -> dict[str, object] | None:
    """Each user's stored value as the worker's ``/users/{id}/state`` view shows it; None while the
    worker does not answer (or has not recovered its table yet)."""
    port = int(worker.env["BADGESTREAM_WEB_PORT"])
    values = {}
    for user in users:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/users/{user}/state", timeout=5) as response:
                values[user] = json.loads(response.read())
        except OSError:
            return None
    return values
