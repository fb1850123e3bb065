"""Two workers share the input partitions; one is killed with ``kill -9`` mid-run and stays dead.

The survivor takes over the dead worker's partitions. It has never held their state, and its own
RocksDB directory holds nothing for them, so it must rebuild that state from the table's changelog
topic before it goes on. The database must end up with exactly the clean run's awards and
progress rows, with no duplicate row.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from tests.integration import harness
from tests.integration.harness import StackConfig
from tests.reliability import support

pytestmark = pytest.mark.kafka

STACK_NAME = "failover"  # topic names of this module's stacks (tests/reliability/conftest.py)


def group_members(bootstrap: str, group: str) -> tuple[int, ConsumerGroupState | None]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:  # the group coordinator is not ready yet, or the group does not exist yet
        return 0, None
    return len(description.members), description.state


def test_the_survivor_takes_over_a_killed_workers_partitions_and_state(stack: StackConfig) -> None:
    rng = random.Random(34)
    events_file = stack.data_dir / "events.jsonl"
    lines = support.write_simulated(events_file, users=300, events=5_000, seed=34)
    expected = support.expected_offline(events_file)
    assert stack.database_url is not None
    record = support.CrashLog("worker_failover", events=len(lines), users=expected.users)
    workers = {name: harness.worker(stack, name=f"worker-{name}", BADGESTREAM_DATA_DIR=str(stack.data_dir / name),
                                    **support.FAST_FAILOVER) for name in ("a", "b")}
    for worker in workers.values():
        worker.start()
    sink = support.sink(stack).start()
    watch = support.OutputWatch(stack.bootstrap, stack.progress_topic)
    try:
        harness.wait_until(lambda: group_members(stack.bootstrap, stack.app_id) == (2, ConsumerGroupState.STABLE),
                           timeout=90, what="both workers in the group", interval=0.5)
        producing = threading.Thread(target=support.produce_paced, daemon=True,
                                     args=(stack.bootstrap, stack.input_topic, lines, 300.0))
        producing.start()
        point = int(expected.progress_records * rng.uniform(0.2, 0.5))
        harness.wait_until(lambda: watch.produced() >= point, timeout=120, what=f"{point} progress records")
        # Both are still running, in the group and ready, when one dies.
        for name, worker in workers.items():
            assert worker.alive(), f"worker {name} died on its own:\n{worker.log()[-4000:]}"
            assert "award " in worker.log() or "Worker ready" in worker.log()
        survivor = workers["b"]
        log_before = len(survivor.log())
        workers["a"].kill9()
        killed_at = time.monotonic()
        record.crash("kill -9 of worker a (not restarted)", watch.produced(), expected.progress_records)
        harness.wait_until(lambda: group_members(stack.bootstrap, stack.app_id) == (1, ConsumerGroupState.STABLE),
                           timeout=60, what="the group without the dead worker", interval=0.5)
        record.notes.append(f"group settled on one member {time.monotonic() - killed_at:.1f}s after the kill")
        producing.join(timeout=300)
        support.wait_for_database(stack.database_url, expected, timeout=300, watch=[survivor, sink])
    finally:
        watch.close()
        for worker in workers.values():
            worker.stop()
        sink.stop()
    takeover = survivor.log()[log_before:]
    got = support.read_database(stack.database_url)
    record.report(awards_expected=len(expected.awards), awards_in_db=got.rows, progress_rows=len(got.progress),
                  duplicates=got.duplicates)
    assert survivor.starts == 1 and workers["a"].starts == 1
    # The survivor rebuilt the dead worker's share of the table from the changelog.
    assert "Restoring state from changelog topics" in takeover, takeover[-4000:]
    support.assert_same_result(got, expected)
