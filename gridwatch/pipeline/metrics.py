"""Prometheus metrics of the running pipeline, beside ingest's, on one registry per process.

Names and what to alert on are in ``docs/operations.md``. Rates (readings/s) are
``rate()`` of the counters; the ``_per_second`` gauges are the same over the last status
interval, for humans reading ``/metrics`` or ``gridwatch status`` without a Prometheus.

The end-to-end latency histogram runs from the device timestamp of the reading that made
an alert fire to the moment its dispatch-queue item is claimable (the alert's commit, plus
the notification group's wait for yellow): what a dispatcher experiences.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gridwatch.domain import DeviceKind, Grade
from ingest.metrics import IngestMetrics

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds; the goal is p99 < 1 s for red, so the buckets are dense below 2 s."""
DETECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class PipelineMetrics:
    """Every metric of one pipeline process (ingest's included, as ``self.ingest``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "gridwatch_pipeline"
        self.ingest = IngestMetrics(r)
        self.detect_seconds = Histogram(
            f"{p}_detect_seconds",
            "detectors' time per micro-batch of one device kind",
            ["kind"],
            buckets=DETECT_BUCKETS,
            registry=r,
        )
        self.rules_seconds = Histogram(
            f"{p}_rules_seconds",
            "rules engine and alert persistence per micro-batch (the commit included)",
            buckets=DETECT_BUCKETS,
            registry=r,
        )
        self.detections = Counter(
            f"{p}_detections", "detections handed to the rules", ["kind"], registry=r
        )
        self.alerts = Counter(
            f"{p}_alerts",
            "alerts opened or upgraded (made durable), by grade and event",
            ["grade", "event"],
            registry=r,
        )
        self.alerts_cleared = Counter(
            f"{p}_alerts_cleared", "alerts cleared automatically (condition gone)", registry=r
        )
        self.latency = Histogram(
            f"{p}_alert_latency_seconds",
            "device timestamp of the reading that fired an alert -> its queue item claimable",
            ["grade"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.alert_write_failures = Counter(
            f"{p}_alert_write_failures", "alert batches the database refused (retried)", registry=r
        )
        self.stored = Counter(
            f"{p}_stored_readings", "readings committed to the database", registry=r
        )
        self.delayed = Counter(
            f"{p}_storage_delayed_readings",
            "readings sent to the local backlog because the database was behind "
            "(storage delayed first; alerts are not)",
            registry=r,
        )
        self.backlog_bytes = Gauge(
            f"{p}_storage_backlog_bytes", "local storage backlog on disk", registry=r
        )
        self.writer_rows = Gauge(
            f"{p}_storage_writer_rows", "readings held by the database writer", registry=r
        )
        self.detect_queue = Gauge(
            f"{p}_detect_queue_batches", "micro-batches waiting for the detectors", registry=r
        )
        self.dispatch_queue = Gauge(
            f"{p}_dispatch_queue_items",
            "dispatch-queue items by level and state (ready, claimed, waiting)",
            ["level", "state"],
            registry=r,
        )
        self.readings_per_s = Gauge(
            f"{p}_readings_per_second", "readings accepted per second (last interval)", registry=r
        )
        self.stored_per_s = Gauge(
            f"{p}_stored_readings_per_second",
            "readings stored per second (last interval)",
            registry=r,
        )
        self.checkpoints = Counter(
            f"{p}_checkpoints", "detector state checkpoints written", registry=r
        )
        self.checkpoint_seconds = Gauge(
            f"{p}_checkpoint_seconds", "duration of the last checkpoint", registry=r
        )
        self.device_lag = Gauge(
            f"{p}_device_lag_seconds",
            "wall clock minus the newest device timestamp processed (backlog in time)",
            registry=r,
        )
        self.up = Gauge(f"{p}_up", "1 while the pipeline runs", registry=r)
        for k in DeviceKind:
            self.detect_seconds.labels(k.value)
        for g in Grade:
            self.latency.labels(g.value)
            for ev in ("opened", "upgraded"):
                self.alerts.labels(g.value, ev)


def histogram_quantile(hist: Histogram, q: float, **labels: str) -> float | None:
    """The ``q`` quantile of a histogram (Prometheus' linear interpolation in a bucket).

    None while it has no observations. Good to a bucket's width: a summary for humans,
    the exact figures come from ``rate()`` of the buckets in Prometheus.
    """
    buckets: list[tuple[float, float]] = []
    for metric in hist.collect():
        for s in metric.samples:
            if not s.name.endswith("_bucket"):
                continue
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            buckets.append((float(s.labels["le"]), s.value))
    return quantile_of_buckets(buckets, q)


def quantile_of_buckets(buckets: list[tuple[float, float]], q: float) -> float | None:
    """``buckets`` = cumulative ``(upper bound, count)`` pairs (any order, ``+Inf`` last)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
