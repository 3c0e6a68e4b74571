from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gridwatch.batch import ReadingBatch
from gridwatch.clock import SystemClock
from gridwatch.deadletter import DeadLetter
from gridwatch.domain import DeviceKind
from ingest.dispatch import Dispatcher, DispatcherStoppedError, Flush
from ingest.metrics import IngestMetrics


def _flush(seq: int, rows: int = 2, tokens: list[int] | None = None) -> Flush:
    batch = ReadingBatch(
        DeviceKind.SEWAGE,
        np.arange(rows, dtype=np.int32),
        np.full(rows, seq, dtype=np.int64),
        {"level_m": np.zeros(rows, np.float32)},
    )
    return Flush(seq, [batch], [], tokens if tokens is not None else [seq], 0, 1, 0.0)


class Recorder:
    def __init__(self, events: list[Any], name: str, fail_times: int = 0) -> None:
        self.events = events
        self.name = name
        self.fail_times = fail_times

    def write(self, batch: ReadingBatch) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError(f"{self.name} down")
        self.events.append((self.name, int(batch.ts_ms[0])))


class DurableRecorder(Recorder):
    def sync(self) -> None:
        self.events.append((self.name, "sync"))


class DeadRecorder:
    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def write_dead_letters(self, letters: Any) -> None:
        self.events.append(("dead", len(letters)))


def _dispatcher(sinks: list[Any], dead: Any = None, **kw: Any) -> tuple[Dispatcher, IngestMetrics]:
    metrics = IngestMetrics(CollectorRegistry())
    d = Dispatcher(sinks, dead, clock=SystemClock(), metrics=metrics, retry_max_s=0.05, **kw)
    return d, metrics


def test_sinks_then_dead_letters_then_ack_in_flush_order() -> None:
    events: list[Any] = []
    d, _ = _dispatcher(
        [Recorder(events, "a"), DurableRecorder(events, "b")], DeadRecorder(events), threaded=True
    )
    d.on_done = lambda f: events.append(("ack", f.tokens))
    d.start()
    for seq in range(3):
        f = _flush(seq)
        if seq == 1:
            f.dead_letters.append(DeadLetter.of("t", "not_json", b"x", 0))
        d.submit(f)
    assert d.stop(5)
    assert events == [
        ("a", 0), ("b", 0), ("b", "sync"), ("ack", [0]),
        ("a", 1), ("b", 1), ("b", "sync"), ("dead", 1), ("ack", [1]),
        ("a", 2), ("b", 2), ("b", "sync"), ("ack", [2]),
    ]  # fmt: skip


def test_a_failing_sink_is_retried_alone_and_nothing_is_acked_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Any] = []
    d, metrics = _dispatcher([Recorder(events, "ok"), Recorder(events, "flaky", 3)], threaded=False)
    d.on_done = lambda f: events.append(("ack", f.seq))
    d.submit(_flush(7))
    assert events == [("ok", 7), ("flaky", 7), ("ack", 7)]  # "ok" was not called again
    errors = metrics.registry.get_sample_value(
        "gridwatch_ingest_sink_errors_total", {"sink": "Recorder"}
    )
    assert errors == 3
    assert "sink failed; retrying" in caplog.text


def test_full_queue_blocks_the_producer_and_is_measured() -> None:
    gate = threading.Event()
    writing = threading.Event()
    events: list[Any] = []

    class Slow(Recorder):
        def write(self, batch: ReadingBatch) -> None:
            writing.set()
            gate.wait(10)
            super().write(batch)

    d, metrics = _dispatcher([Slow(events, "slow")], max_pending=1, threaded=True)
    d.start()
    d.submit(_flush(0))  # taken by the worker, which blocks on the gate
    assert writing.wait(5)
    d.submit(_flush(1))  # fills the queue
    blocked = threading.Thread(target=d.submit, args=(_flush(2),))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # back-pressure: the producer waits
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    assert d.stop(5)
    assert [e[1] for e in events] == [0, 1, 2]
    assert d.blocked_events == 1
    reg = metrics.registry
    assert (
        reg.get_sample_value("gridwatch_ingest_backpressure_events_total", {"queue": "handoff"})
        == 1
    )
    waited = reg.get_sample_value(
        "gridwatch_ingest_backpressure_seconds_total", {"queue": "handoff"}
    )
    assert waited is not None and waited > 0


def test_stop_abandons_a_flush_whose_sink_never_recovers() -> None:
    events: list[Any] = []
    d, _ = _dispatcher([Recorder(events, "down", 10**9)], threaded=True)
    d.on_done = lambda f: events.append(("ack", f.seq))
    d.start()
    d.submit(_flush(0))
    assert d.stop(timeout=0.3) is False
    assert events == []  # never acknowledged: the broker will redeliver
    with pytest.raises(DispatcherStoppedError):
        d.submit(_flush(1))
