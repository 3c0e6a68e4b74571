"""The detect stage: detectors -> rules -> durable alerts on its thread; device-time ticks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alerts.dispatch import Dispatcher, DispatchSettings
from detectors.detectorset import DetectorSet
from gridwatch.batch import ReadingBatch
from gridwatch.clock import ManualClock
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.pipeline.detect import DetectStage
from gridwatch.pipeline.metrics import PipelineMetrics
from gridwatch.registry import Registry
from rules.engine import RulesEngine
from rules.load import load_rules
from storage.testing import temp_storage

T0 = 1_780_000_000_000


@pytest.fixture
def stage(tmp_path: Path, small_registry: Registry):  # type: ignore[no-untyped-def]
    with temp_storage("sqlite", tmp_dir=tmp_path) as storage:
        storage.save_registry(small_registry)
        clock = ManualClock(T0 + 60_000)
        engine = RulesEngine(load_rules(registry=small_registry), small_registry, clock)
        disp = Dispatcher(storage, engine, clock=clock, settings=DispatchSettings(outbox=False))
        disp.start()
        st = DetectStage(
            DetectorSet(small_registry), disp, clock=clock, metrics=PipelineMetrics(),
            stream_grace_s=120,
        )  # fmt: skip
        yield st, storage, clock


def _sewage(reg: Registry, devs: np.ndarray, ts: np.ndarray, tilt: float) -> ReadingBatch:
    n = devs.size
    fields = {f.name: np.full(n, np.nan, dtype=f.dtype) for f in FIELDS[DeviceKind.SEWAGE]}
    fields["level_m"][:] = 0.3
    fields["tilt_deg"][:] = tilt
    return ReadingBatch(DeviceKind.SEWAGE, devs.astype(np.int32), ts.astype(np.int64), fields)


def test_a_displaced_cover_becomes_a_durable_red_alert_behind_the_barrier(stage, small_registry):  # type: ignore[no-untyped-def]
    st, storage, _clock = stage
    dev = small_registry.devices_of_kind(DeviceKind.SEWAGE)[:1]
    st.start()
    try:
        for k in range(4):
            st.sink.write(_sewage(small_registry, dev, np.array([T0 + k * 10_000]), 35.0))
        st.barrier.sync()  # returns once the detect thread made the alerts durable
        with storage.connection(readonly=True) as conn:
            rows = conn.execute("SELECT kind, grade, device_id FROM alerts").fetchall()
    finally:
        st.stop()
    assert ("cover_displaced", "red", str(small_registry.device_ids[dev[0]])) in rows
    assert st.totals.opened["red"] >= 1
    lat = st.metrics.registry.get_sample_value(
        "gridwatch_pipeline_alert_latency_seconds_count", {"grade": "red"}
    )
    assert lat >= 1


def test_tick_time_is_the_slowest_active_stream(stage, small_registry):  # type: ignore[no-untyped-def]
    st, _, clock = stage
    sew = small_registry.devices_of_kind(DeviceKind.SEWAGE)
    grids = small_registry.device_grid[sew]
    a = sew[grids == grids[0]][:3]
    b = sew[grids != grids[0]][:3]
    assert st.tick_now_ms() is None  # nothing heard: no device time yet
    st.process_batch(_sewage(small_registry, a, np.full(a.size, T0 + 50_000), 1.0))
    st.process_batch(_sewage(small_registry, b, np.full(b.size, T0 + 20_000), 1.0))
    assert st.tick_now_ms() == T0 + 20_000  # grid b's stream is behind: wait for it
    clock.advance(600)
    st.process_batch(_sewage(small_registry, a, np.full(a.size, T0 + 400_000), 1.0))
    # b is now 380 s behind a: a stalled gateway, no longer holding time back
    assert st.tick_now_ms() == T0 + 400_000


def test_tick_time_never_passes_the_wall_clock_nor_goes_back(stage, small_registry):  # type: ignore[no-untyped-def]
    st, _, clock = stage
    sew = small_registry.devices_of_kind(DeviceKind.SEWAGE)[:2]
    st.process_batch(_sewage(small_registry, sew, np.full(2, clock.now_ms() + 300_000), 1.0))
    assert st.tick_now_ms() == clock.now_ms()  # a device clock ahead does not move time
    st.totals.last_tick_ms = clock.now_ms() + 5
    assert st.tick_now_ms() == clock.now_ms() + 5


def test_timer_detections_are_limited_to_this_workers_devices(tmp_path, small_registry):  # type: ignore[no-untyped-def]
    with temp_storage("sqlite", tmp_dir=tmp_path) as storage:
        storage.save_registry(small_registry)
        clock = ManualClock(T0 + 3_600_000)
        engine = RulesEngine(load_rules(registry=small_registry), small_registry, clock)
        disp = Dispatcher(storage, engine, clock=clock, settings=DispatchSettings(outbox=False))
        disp.start()
        mine = small_registry.device_grid == 0
        st = DetectStage(
            DetectorSet(small_registry), disp, clock=clock, metrics=PipelineMetrics(), mine=mine
        )
        sew = small_registry.devices_of_kind(DeviceKind.SEWAGE)
        # one reading from every sewage device at T0, then silence for an hour of device time
        st.process_batch(_sewage(small_registry, sew, np.full(sew.size, T0), 1.0))
        st.process_batch(_sewage(small_registry, sew[:1], np.array([T0 + 3_600_000]), 1.0))
        seen: list[np.ndarray] = []
        st.collect = seen  # type: ignore[assignment]
        st.run_timers()
    offline = np.concatenate([d.device for d in seen]) if seen else np.zeros(0, int)
    assert offline.size > 0
    assert mine[offline].all()
