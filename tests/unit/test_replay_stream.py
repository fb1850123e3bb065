"""The replay's events-to-engine loop without a broker: what its collector setting relies on, and its evidence."""

from __future__ import annotations

import gc

import orjson

from evaluators.runner import plugin_engine
from schemas.catalog import load_catalog
from schemas.records import EventSource, trusted_record
from streams.devstack.simulate import simulate_events
from streams.replay.replay import REPLAY_GC_THRESHOLD, collector_for_growing_state, evaluate_stream
from streams.settings import DEMO_CATALOG


def test_a_replay_makes_no_reference_cycles_so_a_rare_collector_loses_nothing() -> None:
    """``collector_for_growing_state`` runs the collector rarely because replaying creates no cycles:
    with the collector off, a replay of the demo stream leaves nothing for it to find."""
    engine = plugin_engine(load_catalog(DEMO_CATALOG))
    messages = [(orjson.dumps(e), EventSource(topic="t", partition=0, offset=i), i * 1000)
                for i, e in enumerate(simulate_events(200, 4000, seed=21))]
    reference = evaluate_stream(engine, messages)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = evaluate_stream(engine, messages)
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()
    assert result.awards == reference.awards and len(result.awards) > 100


def test_the_collector_setting_is_put_back_after_a_replay() -> None:
    before = gc.get_threshold()
    with collector_for_growing_state():
        assert gc.get_threshold() == (max(before[0], REPLAY_GC_THRESHOLD), *before[1:])
    assert gc.get_threshold() == before


def test_the_evidence_read_from_kafka_equals_a_validated_one() -> None:
    source = trusted_record(EventSource, {"topic": "user-events", "partition": 3, "offset": 12})
    assert source == EventSource(topic="user-events", partition=3, offset=12)
    assert source.model_fields_set == {"topic", "partition", "offset"}
