"""The worker's Faust agent driven in-process with Faust's test context, on each state store.

No broker: the app gets messages on the direct path (as the safe consumer's fetch loop hands them)
and through the agent's stream (``agent.test_context()``); the state table lives in
``memory://`` or ``rocksdb://`` (the same contract for both) and the output producer is replaced
by a recorder. What the agent must do: evaluate,
store the new state, produce awards and progress keyed by user, dead-letter bad input, and publish a
redelivered event's awards again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP, Message

from evaluators.state import UserState
from schemas.records import AwardRecord, DeadLetterRecord
from streams.kafka import partition_for
from streams.settings import Settings
from streams.worker import app as worker_app
from streams.worker import faust_seam
from streams.worker.state_cache import ids_key
from streams.worker.stored import ProgressChange, StoredUser
from tests.unit.support import DeliveredMessage, catalog

CATALOG = catalog("""
    badges:
      - {id: first_quiz, on: [quiz_completed], rule: {count: 1}}
      - {id: three_quizzes, on: [quiz_completed], rule: {count: 3}}
""")


def commit(app: Any) -> None:
    """What the consumer does around every commit: the pending states staged and their changelog
    records sent (before), then, once the producer flushed, written to the tables."""
    app.badgestream_states.write_all()
    app.badgestream_writer.send()
    app.badgestream_writer.apply()


class RecordingOutput:
    """Stands in for the librdkafka output producer: remembers what the agent sends."""

    sent: list[tuple[str, bytes | None, bytes]]
    changelog: list[tuple[str, int, bytes, bytes | None]]

    def __init__(self, settings: Settings) -> None:
        self.sent = []
        self.changelog = []
        RecordingOutput.last = self

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def send_to(self, topic: str, partition: int, key: bytes, value: bytes | None, on_delivery: Any) -> None:
        """A table's changelog record: acknowledged at once, at the partition's next offset."""
        self.changelog.append((topic, partition, key, value))
        offset = sum(1 for t, p, _, _ in self.changelog if (t, p) == (topic, partition)) - 1
        on_delivery(None, DeliveredMessage(topic, partition, offset))

    def send_progress(self, topic: str, key: bytes | None, change: ProgressChange) -> None:
        # no coalescing here: tests/unit/test_output.py has it
        self.sent.extend((topic, key, value) for _, value in change.records())

    def poll(self) -> None:
        pass

    def release_due(self) -> int:
        return 0

    async def flush(self) -> None:
        pass


def quiz(event_id: str) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "quiz_completed", "user_id": "u1",
                         "occurred_at": "2026-03-02T10:00:00+00:00"})


@pytest.fixture(params=["memory://", "rocksdb://"])
def app(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setattr(worker_app, "OutputProducer", RecordingOutput)
    settings = Settings(data_dir=tmp_path / "worker", app_id=f"agent-test-{tmp_path.name}")
    faust_app = worker_app.create_app(settings, CATALOG, store=request.param)
    faust_app.finalize()
    return faust_app


class Direct:
    """The direct path (the default): the safe consumer's fetch loop hands each input message to the
    app's handler; here the test hands them, as Faust's messages, with offsets in order."""

    def __init__(self, app: Any) -> None:
        self.handle = faust_seam.hooks_of(app).direct.handle
        self.offset = 0

    async def put(self, value: bytes, key: bytes, partition: int) -> None:
        self.offset += 1
        self.handle(Message("user-events", partition, self.offset, time.time(), 0, [], key, value, None))


@contextlib.asynccontextmanager
async def delivery(app: Any, path: str) -> AsyncIterator[Any]:
    """Faust's agent stream (its test context) or the direct path: both must do the same."""
    if path == "direct":
        yield Direct(app)
        return
    async with app.agents["evaluate"].test_context() as ctx:
        yield ctx


@pytest.mark.parametrize("path", ["direct", "stream"])
async def test_the_agent_evaluates_stores_state_and_produces_keyed_by_user(app: Any, path: str) -> None:
    (chain,) = [task for task in app._app_tasks if task.__name__ == "chain_output_flush"]
    await chain()  # the start-up task that lets the agent produce (the others are timers)
    table = app.tables[worker_app.STATE_TABLE]
    partition = partition_for(b"u1", Settings().topic_partitions)
    out = RecordingOutput.last
    async with delivery(app, path) as ctx:
        await ctx.put(quiz("e1"), key=b"u1", partition=partition)
        assert table.get(b"u1") is None and len(app.badgestream_states) == 1  # pending until a commit
        commit(app)
        stored = table.get(b"u1")
        assert stored is not None  # the new state is stored
        # and the event's id, in the second table, under the user's key and the bucket the value lists
        (bucket,) = StoredUser.from_bytes(stored).id_buckets
        assert app.tables[worker_app.RESEND_TABLE].get(ids_key(b"u1", bucket))
        awards = [AwardRecord.model_validate_json(v) for t, k, v in out.sent if t == "badge-awards"]
        assert [(a.badge_id, a.user_id) for a in awards] == [("first_quiz", "u1")]
        assert {k for _, k, _ in out.sent} == {b"u1"}
        assert {t for t, _, _ in out.sent} == {"badge-awards", "badge-progress"}

        out.sent.clear()
        if path == "direct":
            ctx.offset -= 1  # the same message read again
        # Again: the same message (direct), or the same event at the test context's next offset (an
        # upstream resend): either way the same award again, and no state write.
        await ctx.put(quiz("e1"), key=b"u1", partition=partition)
        again = [AwardRecord.model_validate_json(v) for t, _, v in out.sent if t == "badge-awards"]
        assert [a.award_id for a in again] == [a.award_id for a in awards]
        assert table.get(b"u1") == stored  # a duplicate writes nothing

        out.sent.clear()
        app.badgestream_states.resume()  # forget what is in memory: the next event reads the table
        await ctx.put(quiz("e2"), key=b"u1", partition=partition)  # read back from the store: progress 2 of 3
        progress = [orjson.loads(v) for t, _, v in out.sent if t == "badge-progress"]
        assert [(p["badge_id"], p["progress"]) for p in progress] == [("three_quizzes", 2)]

        out.sent.clear()
        await ctx.put(b"{not json", key=b"u1", partition=partition)
        (letter,) = [DeadLetterRecord.model_validate_json(v) for t, _, v in out.sent if t == "badge-events-dlq"]
        assert letter.error_code == "invalid_json" and letter.original_value() == b"{not json"


def quiz_of(user_id: str, event_id: str) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "quiz_completed", "user_id": user_id,
                         "occurred_at": "2026-03-02T10:00:00+00:00"})


async def test_states_written_at_commit_go_to_each_users_own_partition(app: Any) -> None:
    (chain,) = [task for task in app._app_tasks if task.__name__ == "chain_output_flush"]
    await chain()
    agent = app.agents["evaluate"]
    table = app.tables[worker_app.STATE_TABLE]
    partitions = Settings().topic_partitions
    users = {}
    for n in range(40):  # users on every partition
        users.setdefault(partition_for(f"u{n}".encode(), partitions), f"u{n}")
    assert len(users) == partitions
    changelog = RecordingOutput.last.changelog
    state_changelog = table.changelog_topic.get_topic_name()
    async with agent.test_context() as ctx:
        for round_ in range(3):  # interleaved: the last event put is of the last partition's user
            for partition, user_id in sorted(users.items()):
                await ctx.put(quiz_of(user_id, f"{user_id}-{round_}"), key=user_id.encode(), partition=partition)
        assert changelog == []  # nothing written per event
        commit(app)
        # one write per user, each under its own partition (not that of the last event handed over)
        assert sorted((p, k) for t, p, k, _ in changelog if t == state_changelog) == sorted(
            (p, u.encode()) for p, u in users.items())
        if hasattr(table.data, "_dbs"):  # rocksdb://: each value sits in its partition's database
            for partition, user_id in users.items():
                assert table.data._dbs[partition].get(user_id.encode()) is not None
                others = [db for p, db in table.data._dbs.items() if p != partition]
                assert all(db.get(user_id.encode()) is None for db in others)
                # with the changelog offset Faust's recovery starts from, in the same write batch
                sent = [k for t, p, k, _ in changelog if (t, p) == (state_changelog, partition)]
                assert table.data.persisted_offset(TP(state_changelog, partition)) == len(sent) - 1


async def test_a_commit_writes_its_states_in_slices_and_a_rebalance_between_them_stops_it(app: Any) -> None:
    states, writer = app.badgestream_states, app.badgestream_writer
    before_commit = faust_seam.hooks_of(app).before_commit
    event = SimpleNamespace(message=SimpleNamespace(partition=0))
    users = worker_app.WRITE_SLICE * 2 + 5
    for n in range(users):
        states.put(f"u{n}".encode(), StoredUser(UserState.empty(f"u{n}")), event)
    assert await before_commit() is True  # all of them, slice by slice
    assert len(states) == 0 and writer.in_flight == 1 and len(RecordingOutput.last.changelog) == users

    for n in range(users):
        states.put(f"v{n}".encode(), StoredUser(UserState.empty(f"v{n}")), event)
    commit_task = asyncio.ensure_future(before_commit())
    await asyncio.sleep(0)  # the first slice is written; the commit lets the loop run
    assert not commit_task.done() and len(states) == users - worker_app.WRITE_SLICE
    faust_seam.hooks_of(app).on_revoke()  # a rebalance begins
    assert await commit_task is False  # commit nothing: the rest was dropped, its events are read again
    assert len(RecordingOutput.last.changelog) == users  # and nothing of this commit was sent
