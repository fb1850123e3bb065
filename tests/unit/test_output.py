"""The worker's output producer coalesces progress: fewer records, the same rows in the sink."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.records import supersedes
from streams.settings import Settings
from streams.worker import output as output_module
from streams.worker.output import OutputProducer

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


def test_the_newest_record_per_user_badge_and_tier_is_sent_once_the_window_ends(sent: list[Any]) -> None:
    clock = Clock()
    out = producer(1.0, clock)
    out.send_progress("p", b"u1", b"u1 qm bronze 1", "qm", "bronze", AT)
    out.send_progress("p", b"u1", b"u1 qm bronze 2", "qm", "bronze", AT + timedelta(seconds=1))
    out.send_progress("p", b"u1", b"u1 qm bronze late", "qm", "bronze", AT)  # older: the sink would ignore it
    out.send_progress("p", b"u1", b"u1 qm silver 2", "qm", "silver", AT + timedelta(seconds=1))
    out.send_progress("p", b"u2", b"u2 qm bronze 1", "qm", "bronze", AT)
    out.send("a", b"u1", b"an award")  # awards are never held
    assert sent == [("a", b"u1", b"an award")] and out.held == 3
    clock.now = 0.5
    out.poll()
    assert out.held == 3  # within the window
    clock.now = 1.0
    out.poll()
    assert [value for _, _, value in sent[1:]] == [b"u1 qm bronze 2", b"u1 qm silver 2", b"u2 qm bronze 1"]
    assert out.held == 0 and out.coalesced == 2


def test_a_tie_goes_to_the_later_record_as_in_the_sink(sent: list[Any]) -> None:
    out = producer(1.0, Clock())
    out.send_progress("p", b"u1", b"first", "qm", None, AT)
    out.send_progress("p", b"u1", b"second", "qm", None, AT)
    out.release()
    assert [value for _, _, value in sent] == [b"second"]


async def test_a_flush_sends_what_is_held_before_waiting_for_the_broker(sent: list[Any],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = producer(60.0, Clock())
    seen_at_flush: list[int] = []
    monkeypatch.setattr(out, "flush_blocking", lambda: seen_at_flush.append(len(sent)))
    out.send_progress("p", b"u1", b"v", "qm", None, AT)
    await out.flush()
    assert seen_at_flush == [1]  # produced before the flush that precedes every commit


def test_without_a_window_every_record_goes_out_at_once(sent: list[Any]) -> None:
    out = producer(0.0, Clock())
    out.send_progress("p", b"u1", b"1", "qm", None, AT)
    out.send_progress("p", b"u1", b"2", "qm", None, AT)
    assert len(sent) == 2 and out.held == 0


@pytest.mark.parametrize("seed", range(20))
def test_the_sink_ends_with_the_same_rows_whatever_is_coalesced(sent: list[Any], seed: int) -> None:
    """The sink keeps, per (user, badge, tier), the newest record (later wins a tie): from all the
    records, or from the coalesced ones, at any release points, it must keep the same."""
    rng = random.Random(seed)
    clock = Clock()
    out = producer(1.0, clock)
    everything: list[tuple[tuple[bytes, str], datetime, bytes]] = []
    for n in range(300):
        slot = (f"u{rng.randrange(4)}".encode(), rng.choice(["qm", "streak"]))
        at = AT + timedelta(minutes=rng.randrange(30))  # out of order, with ties
        value = f"{slot[0].decode()} {slot[1]} {n}".encode()
        everything.append((slot, at, value))
        out.send_progress("p", slot[0], value, slot[1], None, at)
        clock.now += rng.random() * 0.3
        out.poll()
    out.release()

    def sink_rows(records: list[tuple[tuple[bytes, str], datetime, bytes]]) -> dict[Any, bytes]:
        rows: dict[Any, tuple[datetime, bytes]] = {}
        for slot, at, value in records:
            if supersedes(at, rows[slot][0] if slot in rows else None):
                rows[slot] = (at, value)
        return {slot: value for slot, (_, value) in rows.items()}

    when = {value: (slot, at) for slot, at, value in everything}
    coalesced = [(when[value][0], when[value][1], value) for _, _, value in sent]
    assert sink_rows(coalesced) == sink_rows(everything)
    assert len(sent) < len(everything)
