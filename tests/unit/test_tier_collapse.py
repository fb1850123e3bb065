"""Only the lowest tier that moved is published; the sink derives the rest and ends with the same rows."""

from __future__ import annotations

import orjson
import pytest

from evaluators.runner import plugin_engine
from schemas.catalog import load_catalog
from schemas.events import parse_event
from schemas.records import ProgressRecord, expand_tiers, newest_progress
from streams.devstack.simulate import simulate_events
from streams.settings import DEMO_CATALOG

CATALOG = load_catalog(DEMO_CATALOG)


def progress_of(seed: int, *, collapse: bool = True) -> list[ProgressRecord]:
    engine = plugin_engine(CATALOG)
    if not collapse:
        # Switched off per compiled rule: compiled with mypyc, ``collapses_tiers`` is an instance
        # attribute, which a patched class attribute would not reach.
        for badge in CATALOG.badges:
            rule = engine.rule(badge.id)
            assert rule is not None
            rule.collapses_tiers = False
    states: dict[str, object] = {}
    records: list[ProgressRecord] = []
    for event in simulate_events(20, 3000, seed=seed):  # resends and late events included
        envelope = parse_event(orjson.dumps(event), CATALOG)
        result = engine.evaluate(states.get(envelope.user_id), envelope)  # type: ignore[arg-type]
        states[envelope.user_id] = result.state
        records.extend(result.progress)
    return records


def rows(records: list[ProgressRecord]) -> dict[tuple[str, str, str | None], tuple[float, float, object]]:
    newest = newest_progress(records, key=lambda r: (r.user_id, r.badge_id, r.tier))
    return {key: (r.progress, r.target, r.updated_at) for key, r in newest.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_sink_rows_are_those_of_every_tier_published(seed: int) -> None:
    collapsed = progress_of(seed)
    every_tier = progress_of(seed, collapse=False)
    assert CATALOG.tier_ladders()  # the demo catalog has a tiered badge
    tiered = {r.badge_id for r in every_tier if r.tier is not None}
    assert tiered and len(collapsed) < len(every_tier)
    ladders = CATALOG.tier_ladders()
    assert rows(expand_tiers(collapsed, ladders)) == rows(every_tier)
    assert rows(expand_tiers(every_tier, ladders)) == rows(every_tier)  # records from before expand alike
