"""The notifier's outbox in PostgreSQL: shared by several notifiers; one killed for good, the other delivers all.

A real PostgreSQL server (a fresh database per test) and, for the second test, a real broker and
two ``badgestream notify`` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.devstack.receiver import Response, WebhookReceiver
from streams.notify.outbox import Outcomes
from streams.notify.outbox_postgres import PostgresOutbox
from tests.integration.test_notify import SECRET, Topics, records, wait_for

pytestmark = pytest.mark.postgres


def test_outbox_in_postgres_queues_once_leases_and_two_claimers_never_share_a_row(postgres_url: str) -> None:
    box, other = PostgresOutbox(postgres_url), PostgresOutbox(postgres_url)
    try:
        rows = [("e1", f"w{i:02d}", "badge.awarded", b"{}") for i in range(40)]
        assert box.add(rows, now=10.0) == 40
        assert other.add(rows[:5], now=11.0) == 0  # redelivered input: no second row
        first = box.claim("e1", now=10.0, limit=25, lease_until=20.0)
        second = other.claim("e1", now=10.0, limit=25, lease_until=20.0)
        assert len(first) == 25 and len(second) == 15
        assert not {r.webhook_id for r in first} & {r.webhook_id for r in second}
        assert box.claim("e1", now=19.0, limit=5, lease_until=30.0) == []  # all leased
        box.settle(Outcomes(done=[("e1", "w00")], retries=[(1, 40.0, "HTTP 500", "e1", "w01")],
                            released=[("e1", "w02")]))
        assert [r.webhook_id for r in other.claim("e1", now=19.0, limit=5, lease_until=30.0)] == ["w02"]
        assert other.next_due("e1") == 20.0 and other.next_due("e2") is None
        (retried,) = [r for r in box.claim("e1", now=40.0, limit=50, lease_until=50.0) if r.webhook_id == "w01"]
        assert (retried.attempts, retried.last_error, retried.queued_at, retried.body) == (1, "HTTP 500", 10.0, b"{}")
        backlog = box.backlog()["e1"]
        assert (backlog.pending, backlog.retrying, backlog.oldest_queued_at) == (39, 1, 10.0)
        assert box.endpoints() == ["e1"]
    finally:
        box.close()
        other.close()


@pytest.mark.kafka
def test_two_notifiers_share_the_outbox_and_one_killed_for_good_leaves_nothing_undelivered(
    postgres_url: str, kafka_bootstrap: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    count = 300
    topics = Topics(kafka_bootstrap, topic_factory, unique_name("notify"), tmp_path / "unused.sqlite")
    template = records()[0][0]
    ids = [f"pg-{i:04d}" for i in range(count)]
    for webhook_id in ids:
        topics.produce(topics.settings.awards_topic, webhook_id,
                       template.model_copy(update={"award_id": webhook_id, "user_id": webhook_id})
                       .model_dump_json().encode())
    topics.flush()
    receiver = WebhookReceiver(SECRET, respond=lambda *_: Response(200, delay=0.02)).start()
    s = topics.settings
    env = {**os.environ, "BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "BADGESTREAM_AWARDS_TOPIC":
           s.awards_topic, "BADGESTREAM_NUDGES_TOPIC": s.nudges_topic, "BADGESTREAM_NOTIFY_DLQ_TOPIC":
           s.notify_dlq_topic, "BADGESTREAM_NOTIFY_GROUP_ID": s.notify_group_id, "BADGESTREAM_DATABASE_URL":
           postgres_url, "BADGESTREAM_WEBHOOK_URLS": receiver.url(), "BADGESTREAM_WEBHOOK_SECRET": SECRET,
           "BADGESTREAM_NOTIFY_METRICS_PORT": "0", "BADGESTREAM_NOTIFY_CONCURRENCY": "2",
           "BADGESTREAM_NOTIFY_TIMEOUT_S": "1", "BADGESTREAM_SESSION_TIMEOUT_S": "6"}
    command = [sys.executable, "-m", "streams.cli", "notify"]
    log = (tmp_path / "notify.log").open("wb")
    doomed = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    survivor = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(receiver.delivered()) >= count // 4, 40, "a quarter of the deliveries")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        before_kill = len(receiver.delivered())
        assert before_kill < count, "the killed notifier left deliveries pending"
        # Its leased rows come due for the survivor when their lease (timeout + 5 s) ends; its
        # partitions move to the survivor once the group notices it is gone (session timeout).
        wait_for(lambda: {r.webhook_id for r in receiver.delivered()} == set(ids), 60, "every delivery")
        # Rows the killed one had delivered without writing the outcome go out once more, then the
        # outbox is empty.
        watcher = PostgresOutbox(postgres_url)
        try:
            wait_for(lambda: watcher.backlog() == {}, 30, "the shared outbox to empty")
        finally:
            watcher.close()
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(20) == 0
        if doomed.poll() is None:
            doomed.kill()
        receiver.stop()
    got = receiver.delivered()
    assert all(r.valid for r in got)
    duplicates = len(got) - len(Counter(r.webhook_id for r in got))
    # Re-sent: what the killed one had in flight (2 slots) and what it was answered in its last
    # round of outcomes not yet written; two notifiers claiming the same rows would show far more.
    assert duplicates <= 2 * 2 * 2, "more re-deliveries than the killed notifier had in flight or unwritten"
    print(f"\ntwo notifiers on PostgreSQL: {count} awards, {before_kill} delivered before one was killed, "
          f"{len(got)} received in all, {duplicates} duplicates by webhook-id")
