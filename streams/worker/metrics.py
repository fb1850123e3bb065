"""Prometheus metrics of the worker, served on its web port at ``/metrics``.

Each app gets its own registry (tests run several apps in one process). Event-type labels are
limited to the types the catalog knows, plus ``_other``: hostile input must not be able to create
unbounded label values.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString


class CollectorPauses:
    """The garbage collector's passes in this process, as the histogram ``badgestream_gc_pause_seconds``
    (every generation; the event loop stands still meanwhile). A ``gc.callbacks`` entry: it takes no
    lock, since a pass can begin inside any allocation, also one made while a metric holds its own.
    Passes never overlap (the collector runs one at a time), so plain counters suffice."""

    BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)  # the last: over the largest bucket
        self.total = 0.0
        self._clock = clock
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        seconds = self._clock() - self._started
        self.counts[bisect_left(self.BUCKETS, seconds)] += 1
        self.total += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("badgestream_gc_pause_seconds",
                                       "Garbage collector passes in the worker process, every generation")
        cumulative, buckets = 0, []
        for bound, count in zip((*map(floatToGoString, self.BUCKETS), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([], buckets, self.total)
        yield family


class WorkerMetrics:
    def __init__(self, known_types: set[str]) -> None:
        self.known_types = set(known_types)
        self._event_children: dict[tuple[str, str], Any] = {}
        self._award_children: dict[str, Any] = {}
        self.registry = CollectorRegistry()
        self.events = Counter("badgestream_events_total", "Input events by type and outcome",
                              ["type", "outcome"], registry=self.registry)
        self.awards = Counter("badgestream_awards_total", "Awards granted, by badge", ["badge"],
                              registry=self.registry)
        self.dead_letters = Counter("badgestream_dead_letters_total", "Dead-lettered inputs, by reason code",
                                    ["reason"], registry=self.registry)
        self.evaluator_errors = Counter("badgestream_evaluator_errors_total",
                                        "Isolated rule/evaluator failures", ["badge", "kind"], registry=self.registry)
        self.latency = Histogram("badgestream_processing_seconds", "Time to process one input event",
                                 buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25, 1.0), registry=self.registry)
        self.input_rewinds = Counter("badgestream_input_rewinds_total",
                                     "Times an input partition was read again instead of skipping records "
                                     "(streams/worker/faust_seam.py)", ["topic", "partition"], registry=self.registry)
        self.commit_seconds = Histogram(
            "badgestream_commit_seconds", "Offset commits: writing pending states, flushing the producers, committing",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=self.registry)
        self.state_flush_seconds = Histogram(
            "badgestream_state_flush_seconds", "Writing the pending user states at a commit, from the first "
            "slice to the changelog records sent (the fetch loop runs between slices)",
            buckets=(0.0001, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry)
        self.state_write_slice_seconds = Histogram(
            "badgestream_state_write_slice_seconds", "One slice of a commit's state writes: the time the "
            "event loop waits for it", buckets=(0.0001, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry)
        self.state_writes = Counter("badgestream_state_writes_total", "User states written to the table",
                                    registry=self.registry)
        self.gc_pauses = CollectorPauses()
        self.registry.register(self.gc_pauses)
        self.consumer_lag = Gauge("badgestream_consumer_lag", "Messages not yet committed, per input partition",
                                  ["topic", "partition"], registry=self.registry)

    def _type_label(self, event_type: str) -> str:
        return event_type if event_type in self.known_types or event_type.startswith("_") else "_other"

    def observe(self, event_type: str, outcome: str, seconds: float) -> None:
        # Once per event: each labelled child is looked up once (keyed by label, so hostile types
        # cannot grow the cache either).
        labels = (self._type_label(event_type), outcome)
        child = self._event_children.get(labels)
        if child is None:
            child = self._event_children[labels] = self.events.labels(*labels)
        child.inc()
        self.latency.observe(seconds)

    def award(self, badge_id: str) -> None:
        # Badge ids come from the catalog, so the cache of children stays as small as it is.
        child = self._award_children.get(badge_id)
        if child is None:
            child = self._award_children[badge_id] = self.awards.labels(badge_id)
        child.inc()

    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason).inc()

    def evaluator_error(self, badge_id: str, kind: str) -> None:
        self.evaluator_errors.labels(badge_id, kind).inc()

    def input_rewind(self, topic: str, partition: int) -> None:
        self.input_rewinds.labels(topic, str(partition)).inc()

    def lag(self, topic: str, partition: int, value: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(value)

    def exposition(self) -> tuple[bytes, str]:
        # aiohttp takes the charset apart from the content type; the text format is UTF-8 anyway.
        content_type = "; ".join(p.strip() for p in CONTENT_TYPE_LATEST.split(";") if "charset" not in p)
        return generate_latest(self.registry), content_type
