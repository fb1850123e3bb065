"""Prometheus metrics of the notifier, on ``/metrics`` at ``BADGESTREAM_NOTIFY_METRICS_PORT``.

The endpoint label is the URL without its query string (which may carry a token).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.notify.outbox import EndpointBacklog


def endpoint_label(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


class NotifyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter("badgestream_notify_deliveries_total",
                                  "Delivery attempts by endpoint and outcome (delivered, retried, dead_lettered)",
                                  ["endpoint", "outcome"], registry=self.registry)
        self.pending = Gauge("badgestream_notify_pending", "Deliveries not yet done, per endpoint",
                             ["endpoint"], registry=self.registry)
        self.retry_depth = Gauge("badgestream_notify_retry_queue_depth",
                                 "Pending deliveries that failed at least once, per endpoint", ["endpoint"],
                                 registry=self.registry)
        self.oldest = Gauge("badgestream_notify_oldest_pending_seconds",
                            "Age of the oldest pending delivery, per endpoint (0: none)", ["endpoint"],
                            registry=self.registry)
        self.attempt_seconds = Histogram("badgestream_notify_attempt_seconds", "Duration of one HTTP attempt",
                                         ["endpoint"], registry=self.registry,
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.delivery_seconds = Histogram("badgestream_notify_delivery_seconds",
                                          "From queued to delivered, retries included", ["endpoint"],
                                          registry=self.registry,
                                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
                                                   3600))
        self.circuit_state = Gauge("badgestream_notify_circuit_state",
                                   "Circuit breaker per endpoint: 0 closed, 1 half-open (one probe), 2 open",
                                   ["endpoint"], registry=self.registry)
        self.circuit_opened = Counter("badgestream_notify_circuit_opened_total",
                                      "Times the circuit breaker of an endpoint opened", ["endpoint"],
                                      registry=self.registry)
        self.input_records = Counter("badgestream_notify_input_records_total",
                                     "Records read from the award and nudge topics, by outcome",
                                     ["outcome"], registry=self.registry)

    def backlog(self, urls: list[str], backlog: dict[str, EndpointBacklog], now: float) -> None:
        for url in urls:
            label = endpoint_label(url)
            entry = backlog.get(url)
            self.pending.labels(label).set(entry.pending if entry else 0)
            self.retry_depth.labels(label).set(entry.retrying if entry else 0)
            oldest = entry.oldest_queued_at if entry else None
            self.oldest.labels(label).set(max(0.0, now - oldest) if oldest is not None else 0.0)
