"""The worker's processor delivers exactly the engine's award set, whatever Kafka and upstream do.

A user's events, each at an input position (partition, offset) and reaching the evaluation directly
or through the re-key topic, arrive as Kafka would hand them over: each path in offset order, the
paths interleaved at random, stretches delivered again (after a crash or a rebalance, however
long ago), plus upstream resends of some events in new messages within the resend window, spread
over more than a year. The award set (badge, tier, occurrence) must be that of the events in any
order with every resend absorbed (``EngineRun``), each award made once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluators.runner import EngineRun
from schemas.events import EventEnvelope
from streams.worker.processor import EventProcessor
from streams.worker.stored import Origin
from tests.unit.test_properties import ORDER_FREE, ZONES

PROCESSOR = EventProcessor(ORDER_FREE.catalog, ORDER_FREE)
START = datetime(2025, 1, 6, tzinfo=UTC)
Award = tuple[str, str | None, int]


@st.composite
def histories(draw: st.DrawFn) -> list[EventEnvelope]:
    """Up to 40 events of one user over about 14 months: logins and quizzes for streaks and counts."""
    events = []
    for i in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["quiz", "login", "login", "referral"]))
        day = draw(st.integers(0, 420)) if draw(st.booleans()) else draw(st.integers(0, 12))
        at = START + timedelta(days=day, minutes=draw(st.integers(0, 1439)))
        data: dict[str, Any] = {}
        if kind == "quiz":
            data = {"quiz_id": draw(st.sampled_from(["q1", "q2", "q3"])), "score": draw(st.integers(0, 10))}
        events.append(EventEnvelope(event_id=f"e{i}", type=kind, user_id="u1", occurred_at=at,
                                    tz=draw(st.sampled_from(ZONES)), data=data))
    return events


def engine_awards(events: list[EventEnvelope]) -> set[Award]:
    run = EngineRun(ORDER_FREE)
    awards = [(a.badge_id, a.tier, a.occurrence) for event in events for a in run.evaluate(event).awards]
    assert len(awards) == len(set(awards))
    return set(awards)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_any_delivery_of_a_users_events_gives_the_engines_award_set(events: list[EventEnvelope],
                                                                      data: st.DataObject) -> None:
    # Messages: every event once, plus resends of some (new messages, within 23 hours of record time).
    resent = data.draw(st.lists(st.integers(0, len(events) - 1), max_size=4))
    messages = [(event, n * 1000) for n, event in enumerate(events)]
    messages += [(events[i], 23 * 3600 * 1000 + n) for n, i in enumerate(resent)]
    # Each message at a position: a partition and a path; offsets in order within each partition.
    paths: dict[tuple[int, bool], list[tuple[Origin, EventEnvelope, int]]] = {}
    next_offset: dict[int, int] = {}
    for event, record_ms in messages:
        partition = data.draw(st.integers(0, 2))
        rekeyed = data.draw(st.booleans())
        offset = next_offset.get(partition, 0)
        next_offset[partition] = offset + 1
        paths.setdefault((partition, rekeyed), []).append((Origin("in", partition, offset, rekeyed), event,
                                                           record_ms))
    # Delivery: paths interleaved at random, each in offset order; now and then a path is read again
    # from an earlier message (a redelivery after a crash, however far back).
    state: dict[str, Any] = {"user": None, "seen": None, "rekey_offset": 0}
    granted: list[Award] = []

    def deliver(origin: Origin, event: EventEnvelope, record_ms: int) -> None:
        if origin.rekeyed:  # read from the re-key topic, at the next offset there
            state["rekey_offset"] += 1
            read_at = ("by-user", 0, state["rekey_offset"])
        else:
            read_at = (origin.topic, origin.partition, origin.offset)
        outcome = PROCESSOR.evaluate_user(event, state["user"], read_at, origin=origin, record_ms=record_ms,
                                          seen=state["seen"])
        if outcome.status == "processed":
            granted.extend((a.badge_id, a.tier, a.occurrence) for a in outcome.granted)
        state["user"] = outcome.new_user or state["user"]
        state["seen"] = outcome.seen or state["seen"]

    # Delivery: paths interleaved at random, each in offset order; now and then a path is read again
    # from an earlier message (a redelivery after a crash, however far back).
    read = {path: 0 for path in paths}
    for _ in range(4 * len(messages)):
        open_paths = sorted(path for path, at in read.items() if at < len(paths[path]))
        if not open_paths:
            break
        path = data.draw(st.sampled_from(open_paths))
        if read[path] and data.draw(st.integers(0, 9)) == 0:
            read[path] = data.draw(st.integers(0, read[path] - 1))
        deliver(*paths[path][read[path]])
        read[path] += 1
    for path, at in read.items():  # whatever the random walk left unread arrives in the end
        for message in paths[path][at:]:
            deliver(*message)
    assert len(granted) == len(set(granted)), "an award was made twice"
    assert set(granted) == engine_awards(events)
