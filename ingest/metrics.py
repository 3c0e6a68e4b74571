"""Prometheus metrics of the ingest stage, on a registry the caller owns.

Nothing registers on prometheus-client's global default registry: the process that runs
the pipeline creates one ``CollectorRegistry``, passes it to every stage and serves it
(``gridwatch ingest --metrics-port``). Rates (messages/s, readings/s) are ``rate()`` of
the counters. The per-message path never touches a metric (a labelled ``inc`` takes a
lock); the collector adds its plain-int tallies once per flush.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gridwatch.domain import DeviceKind
from ingest.reasons import ALL_REASONS

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROW_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000)


class IngestMetrics:
    """Every ingest metric, created on ``registry`` (a fresh one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "gridwatch_ingest"):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        p = prefix
        self.messages = Counter(
            f"{p}_messages", "MQTT/in-process messages received", ["path"], registry=r
        )
        self.bytes = Counter(f"{p}_payload_bytes", "payload bytes received", registry=r)
        self.readings = Counter(
            f"{p}_readings", "readings accepted and handed on", ["kind"], registry=r
        )
        self.rejected = Counter(
            f"{p}_rejected_readings",
            "readings (or whole messages) refused, by dead-letter reason",
            ["reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{p}_dead_letters", "dead-letter records written, by reason", ["reason"], registry=r
        )
        self.ignored_keys = Counter(
            f"{p}_ignored_key_rows",
            "per-device readings carrying keys that are not fields of their kind",
            registry=r,
        )
        self.late = Counter(
            f"{p}_late_readings",
            "readings accepted after a newer one of the same device (QoS 1 redelivery, "
            "broker restarts); sinks receive them in time order within a batch only",
            registry=r,
        )
        self.flushes = Counter(f"{p}_flushes", "micro-batches handed on", registry=r)
        self.flush_rows = Histogram(
            f"{p}_flush_rows", "accepted rows per flush", buckets=_ROW_BUCKETS, registry=r
        )
        self.batch_latency = Histogram(
            f"{p}_batch_latency_seconds",
            "oldest message of a flush: receipt to every sink done",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pending_rows = Gauge(
            f"{p}_pending_rows", "rows waiting for the next flush", registry=r
        )
        self.queue_depth = Gauge(
            f"{p}_queue_depth", "flushes waiting for the sinks (hand-off queue)", registry=r
        )
        self.unacked = Gauge(
            f"{p}_unacked_messages", "messages received but not yet acknowledged", registry=r
        )
        self.backpressure_seconds = Counter(
            f"{p}_backpressure_seconds",
            "time a transport was blocked because a bounded queue was full",
            ["queue"],
            registry=r,
        )
        self.backpressure_events = Counter(
            f"{p}_backpressure_events",
            "times a transport found a queue full",
            ["queue"],
            registry=r,
        )
        self.inproc_depth = Gauge(
            f"{p}_inprocess_queue_depth", "messages waiting in the in-process transport", registry=r
        )
        self.sink_errors = Counter(
            f"{p}_sink_errors", "sink calls that raised (then retried)", ["sink"], registry=r
        )
        self.acks = Counter(f"{p}_acks", "QoS 1 messages acknowledged to the broker", registry=r)
        self.stale_acks = Counter(
            f"{p}_stale_acks",
            "acknowledgements dropped because the connection they belong to is gone "
            "(the broker redelivers those messages)",
            registry=r,
        )
        self.reconnects = Counter(f"{p}_reconnects", "MQTT reconnections", registry=r)
        self.connected = Gauge(f"{p}_connected", "1 while connected to the broker", registry=r)
        for reason in ALL_REASONS:
            self.rejected.labels(reason)
            self.dead_letters.labels(reason)
        for kind in DeviceKind:
            self.readings.labels(kind.value)
        for path in ("device", "batch"):
            self.messages.labels(path)
        for q in ("handoff", "inprocess"):
            self.backpressure_seconds.labels(q)
            self.backpressure_events.labels(q)
