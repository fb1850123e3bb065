"""The worker's metrics (``streams.worker.metrics``): the garbage collector's passes, timed without a lock."""

from __future__ import annotations

import gc

from streams.worker.app import WORKER_GC_THRESHOLDS, tune_collector
from streams.worker.metrics import CollectorPauses, WorkerMetrics


def gc_lines(metrics: WorkerMetrics) -> dict[str, float]:
    body = metrics.exposition()[0].decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines() if line.startswith("badgestream_gc_pause_seconds")}


def test_collector_passes_are_counted_in_their_bucket_and_one_timer_is_installed_per_process() -> None:
    before_thresholds, before_callbacks, enabled = gc.get_threshold(), list(gc.callbacks), gc.isenabled()
    first, second = WorkerMetrics({"quiz"}), WorkerMetrics({"quiz"})
    gc.disable()  # only the passes made here (gc.collect runs and reports all the same)
    try:
        tune_collector(first.gc_pauses)
        tune_collector(second.gc_pauses)  # a second app in the same process: its timer replaces the first
        assert gc.get_threshold() == WORKER_GC_THRESHOLDS
        assert [c for c in gc.callbacks if isinstance(c, CollectorPauses)] == [second.gc_pauses]
        counted = gc_lines(second)["badgestream_gc_pause_seconds_count"]
        gc.collect()
        gc.collect(0)
        lines = gc_lines(second)
        assert lines["badgestream_gc_pause_seconds_count"] == counted + 2
        assert lines['badgestream_gc_pause_seconds_bucket{le="+Inf"}'] == counted + 2
        assert 0 < lines["badgestream_gc_pause_seconds_sum"] < 60
        # The second start-up's own pass, timed by the first timer before the second replaced it.
        assert gc_lines(first)["badgestream_gc_pause_seconds_count"] == 1
    finally:
        gc.set_threshold(*before_thresholds)
        gc.callbacks[:] = before_callbacks
        gc.unfreeze()
        if enabled:
            gc.enable()


def test_a_pass_lands_in_the_first_bucket_it_fits() -> None:
    now = [0.0]
    pauses = CollectorPauses(clock=lambda: now[0])
    for seconds in (0.0005, 0.001, 0.003, 2.0):
        now[0] = 10.0
        pauses("start", {})
        now[0] = 10.0 + seconds
        pauses("stop", {})
    family = next(pauses.collect())
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 2 and buckets["0.005"] == 3 and buckets["1.0"] == 3 and buckets["+Inf"] == 4
    assert abs(pauses.total - 2.0045) < 1e-9
