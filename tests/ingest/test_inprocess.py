from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from ingest_testkit import assert_same_readings, expected_readings

from gridwatch.batch import ReadingBatch
from gridwatch.clock import ManualClock
from gridwatch.contract import telemetry_topic
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.config import IngestConfig
from ingest.inprocess import InProcessTransport
from ingest.sinks import MemoryDeadLetters, MemorySink
from sim.engine import FleetSim, SimSpec
from sim.publish import PayloadFormat
from sim.replay import Replay, ReplaySpec


@pytest.mark.parametrize("fmt", list(PayloadFormat))
def test_sim_replay_in_process_arrives_as_published(
    small_registry: Registry, fmt: PayloadFormat
) -> None:
    reg = small_registry
    start = time.time_ns() // 1_000_000 - 300_000
    sink, dead = MemorySink(), MemoryDeadLetters()
    transport = InProcessTransport(
        Collector(reg, sinks=[sink], dead_letters=dead), max_messages=500
    )
    transport.start()
    sent: list[tuple[str, bytes]] = []

    def tee(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))
        transport(topic, payload)

    sink_type: Callable[[str, bytes], None] = transport  # the simulator's sink shape
    assert callable(sink_type)
    stats = Replay(
        FleetSim(reg, SimSpec(start_ms=start, seed=5)),
        tee,
        ReplaySpec(speed=None, duration_s=120, fmt=fmt),
    ).run()
    assert transport.sync(30)
    assert transport.alive
    assert transport.stop(30)
    assert not transport.alive
    expected = expected_readings(reg, sent, "gw")
    assert sum(len(b) for b in expected.values()) == stats.total_readings > 1000
    for kind in DeviceKind:
        assert_same_readings(sink.of_kind(kind), expected[kind])
    assert dead.letters == []
    assert transport.delivered == len(sent)


def test_full_queue_blocks_the_producer_and_counts_it(small_registry: Registry) -> None:
    reg = small_registry
    gate = threading.Event()

    class SlowSink:
        def write(self, batch: ReadingBatch) -> None:
            gate.wait(10)

    c = Collector(
        reg, sinks=[SlowSink()], config=IngestConfig(flush_messages=1, max_pending_flushes=1)
    )
    transport = InProcessTransport(c, max_messages=2)
    transport.start()
    d = int(reg.devices_of_kind(DeviceKind.SEWAGE)[0])
    topic = telemetry_topic(reg.grid_of(d), "sewage", str(reg.device_ids[d]))
    now = time.time_ns() // 1_000_000

    def produce() -> None:
        for k in range(8):
            transport(topic, orjson.dumps({"ts": now + k, "values": {"level_m": 1, "tilt_deg": 1}}))

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(0.5)
    assert producer.is_alive()  # 1 in the sink + 1 queued flush + 1 being flushed + 2 queued
    gate.set()
    producer.join(10)
    assert not producer.is_alive()
    assert transport.blocked_events >= 1
    assert transport.blocked_s > 0
    value = c.metrics.registry.get_sample_value(
        "gridwatch_ingest_backpressure_events_total", {"queue": "inprocess"}
    )
    assert value == transport.blocked_events
    assert transport.stop(10)
    assert c.accepted == 8


def test_unthreaded_transport_runs_in_the_callers_thread(small_registry: Registry) -> None:
    reg = small_registry
    clock = ManualClock()
    sink = MemorySink()
    c = Collector(reg, sinks=[sink], clock=clock, threaded=False)
    transport = InProcessTransport(c, threaded=False)
    d = int(reg.devices_of_kind(DeviceKind.SEWAGE)[0])
    topic = telemetry_topic(reg.grid_of(d), "sewage", str(reg.device_ids[d]))
    transport(topic, orjson.dumps({"ts": clock.now_ms(), "values": {"level_m": 1, "tilt_deg": 1}}))
    assert sink.rows() == 0
    clock.advance(0.05)
    transport(topic, orjson.dumps({"ts": clock.now_ms(), "values": {"level_m": 2, "tilt_deg": 1}}))
    assert sink.rows() == 2  # the time-based flush ran inside the call
    assert np.array_equal(sink.of_kind(DeviceKind.SEWAGE).fields["level_m"], [1, 2])


def test_calling_before_start_is_an_error(small_registry: Registry) -> None:
    transport = InProcessTransport(Collector(small_registry))
    with pytest.raises(RuntimeError, match="start"):
        transport("t", b"")
    with pytest.raises(ValueError, match="max_messages"):
        InProcessTransport(Collector(small_registry), max_messages=0)
