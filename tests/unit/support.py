"""Small builders shared by the unit tests: literal events, catalogs from YAML text, a run over events."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from evaluators.engine import Engine, Evaluation
from evaluators.registry import EvaluatorRegistry
from evaluators.state import UserState
from schemas.catalog import Catalog, parse_catalog
from schemas.events import EventEnvelope
from schemas.records import AwardRecord

_counter = iter(range(10**9))


def event(type: str = "quiz_completed", at: str | datetime = "2026-03-02T10:00:00+00:00", *, user: str = "u1",
          tz: str = "UTC", event_id: str | None = None, **data: Any) -> EventEnvelope:
    return EventEnvelope(event_id=event_id or f"e{next(_counter)}", type=type, user_id=user, occurred_at=at,
                         tz=tz, data=data)


def catalog(body: str, version: str = "test") -> Catalog:
    return parse_catalog(f'catalog_version: "{version}"\n' + textwrap.dedent(body), source="test.yaml")


def engine(body: str, registry: EvaluatorRegistry | None = None) -> Engine:
    return Engine(catalog(body), registry)


def run(
    eng: Engine, events: Iterable[EventEnvelope], state: UserState | None = None
) -> tuple[UserState | None, list[Evaluation]]:
    results = []
    for ev in events:
        result = eng.evaluate(state, ev)
        state = result.state
        results.append(result)
    return state, results


def awards_of(results: Iterable[Evaluation]) -> list[AwardRecord]:
    return [award for result in results for award in result.awards]


def award_keys(results: Iterable[Evaluation]) -> set[tuple[str, str | None, int]]:
    return {(a.badge_id, a.tier, a.occurrence) for a in awards_of(results)}


class DeliveredMessage:
    """What librdkafka's delivery callback is told of a record: its topic, partition and offset."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]
