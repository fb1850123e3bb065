"""The worker's output producer coalesces progress: fewer records, the same rows in the sink."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.records import ProgressRecord, supersedes
from streams.settings import Settings
from streams.worker import output as output_module
from streams.worker.output import OutputProducer
from streams.worker.stored import ProgressChange

AT = datetime(2026, 3, 2, 10, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes | None, bytes]]:
    records: list[tuple[str, bytes | None, bytes]] = []

    def produce(_producer: Any, topic: str, key: bytes | None, value: bytes, _callback: Any,
                headers: Any = None) -> None:
        records.append((topic, key, value))

    monkeypatch.setattr(output_module, "produce", produce)
    return records


def producer(coalesce_s: float, clock: Clock) -> OutputProducer:
    return OutputProducer(Settings(worker_progress_coalesce_s=coalesce_s), clock=clock)


def change(user: str, badge: str, tier: str | None, progress: float, at: datetime) -> ProgressChange:
    """One event's changed progress of one (badge, tier), as the processor hands it on."""
    return ProgressChange(user, {(badge, tier): [progress, 1000, at, None]}, ((badge, tier),))


def shown(value: bytes) -> str:
    """``user badge tier progress`` of a sent progress record (a record the sink reads)."""
    record = ProgressRecord.model_validate_json(value)
    return f"{record.user_id} {record.badge_id} {record.tier} {record.progress:g}"


def test_the_newest_record_per_user_badge_and_tier_is_sent_once_the_window_ends(sent: list[Any]) -> None:
    clock = Clock()
    out = producer(1.0, clock)
    out.send_progress("p", b"u1", change("u1", "qm", "bronze", 1, AT))
    out.send_progress("p", b"u1", change("u1", "qm", "bronze", 2, AT + timedelta(seconds=1)))
    out.send_progress("p", b"u1", change("u1", "qm", "bronze", 3, AT))  # older: the sink would ignore it
    out.send_progress("p", b"u1", change("u1", "qm", "silver", 2, AT + timedelta(seconds=1)))
    out.send_progress("p", b"u2", change("u2", "qm", "bronze", 1, AT))
    out.send("a", b"u1", b"an award")  # awards are never held
    assert sent == [("a", b"u1", b"an award")] and out.held == 3
    clock.now = 0.5
    out.poll()
    assert out.held == 3  # within the window
    clock.now = 1.0
    out.poll()
    assert [shown(value) for _, _, value in sent[1:]] == ["u1 qm bronze 2", "u1 qm silver 2", "u2 qm bronze 1"]
    assert out.held == 0 and out.coalesced == 2


def test_a_tie_goes_to_the_later_record_as_in_the_sink(sent: list[Any]) -> None:
    out = producer(1.0, Clock())
    out.send_progress("p", b"u1", change("u1", "qm", None, 1, AT))
    out.send_progress("p", b"u1", change("u1", "qm", None, 2, AT))
    out.release()
    assert [shown(value) for _, _, value in sent] == ["u1 qm None 2"]


async def test_a_flush_sends_what_is_held_before_waiting_for_the_broker(sent: list[Any],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = producer(60.0, Clock())
    seen_at_flush: list[int] = []
    monkeypatch.setattr(out, "flush_blocking", lambda: seen_at_flush.append(len(sent)))
    out.send_progress("p", b"u1", change("u1", "qm", None, 1, AT))
    await out.flush()
    assert seen_at_flush == [1]  # produced before the flush that precedes every commit


def test_without_a_window_every_record_goes_out_at_once(sent: list[Any]) -> None:
    out = producer(0.0, Clock())
    out.send_progress("p", b"u1", change("u1", "qm", None, 1, AT))
    out.send_progress("p", b"u1", change("u1", "qm", None, 2, AT))
    assert len(sent) == 2 and out.held == 0


@pytest.mark.parametrize("seed", range(20))
def test_the_sink_ends_with_the_same_rows_whatever_is_coalesced(sent: list[Any], seed: int) -> None:
    """The sink keeps, per (user, badge, tier), the newest record (later wins a tie): from all the
    records, or from the coalesced ones, at any release points, it must keep the same."""
    rng = random.Random(seed)
    clock = Clock()
    out = producer(1.0, clock)
    everything: list[ProgressRecord] = []
    for n in range(300):
        user, badge = f"u{rng.randrange(4)}", rng.choice(["qm", "streak"])
        at = AT + timedelta(minutes=rng.randrange(30))  # out of order, with ties
        made = change(user, badge, None, n, at)  # the progress value names the record
        everything.extend(ProgressRecord.model_validate_json(value) for _, value in made.records())
        out.send_progress("p", user.encode(), made)
        clock.now += rng.random() * 0.3
        out.poll()
    out.release()

    def sink_rows(records: list[ProgressRecord]) -> dict[Any, float]:
        rows: dict[Any, ProgressRecord] = {}
        for record in records:
            slot = (record.user_id, record.badge_id, record.tier)
            if supersedes(record.updated_at, rows[slot].updated_at if slot in rows else None):
                rows[slot] = record
        return {slot: record.progress for slot, record in rows.items()}

    coalesced = [ProgressRecord.model_validate_json(value) for _, _, value in sent]
    assert sink_rows(coalesced) == sink_rows(everything)
    assert len(sent) < len(everything)


def test_what_is_held_for_a_user_outlives_the_map_it_came_from(sent: list[Any]) -> None:
    """Held entries are kept per (badge, tier), not as a reference to one map: a later change whose map
    no longer has them (read back after a rebalance) leaves them held."""
    out = producer(1.0, Clock())
    both = ProgressChange("u1", {("qm", None): [1, 10, AT, None], ("streak", None): [1, 7, AT, None]},
                          (("qm", None), ("streak", None)))
    out.send_progress("p", b"u1", both)
    out.send_progress("p", b"u1", change("u1", "qm", None, 2, AT + timedelta(seconds=1)))
    assert out.held == 2 and out.coalesced == 1
    out.release()
    assert sorted(shown(value) for _, _, value in sent) == ["u1 qm None 2", "u1 streak None 1"]
