"""Sewage detector: forecast arithmetic, rain vs blockage, cover, flat-line, ring exactness."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.config import DetectorConfig, load_config
from detectors.sewage import SewageDetector
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry
from tests.detectors.conftest import T0, assert_identical_detections, batch

K = DetectionKind
NAN = float("nan")


def series(
    reg: Registry,
    device: str,
    times_s: np.ndarray,
    level_m: np.ndarray,
    *,
    tilt_deg: float | np.ndarray = 1.0,
    rain_mmph: float | np.ndarray = NAN,
) -> ReadingBatch:
    n = times_s.size
    return batch(
        reg,
        DeviceKind.SEWAGE,
        [device] * n,
        (T0 + (times_s * 1000).astype(np.int64)).tolist(),
        level_m=level_m.tolist(),
        tilt_deg=np.broadcast_to(tilt_deg, (n,)).tolist(),
        rain_mmph=np.broadcast_to(rain_mmph, (n,)).tolist(),
    )


def of_kind(det: Detections, kind: DetectionKind) -> Detections:
    return det.take(np.flatnonzero(det.kind == kind.code))


def noise(n: int, seed: int = 0, sigma: float = 0.003) -> np.ndarray:
    return sigma * np.random.default_rng(seed).standard_normal(n)


@pytest.fixture
def sw(tiny: Registry, cfg: DetectorConfig) -> SewageDetector:
    return SewageDetector(tiny, cfg.sewage)


def test_linear_rise_gives_the_true_time_to_overflow(sw: SewageDetector, tiny: Registry) -> None:
    # 0.4 m, rising 2 mm/s from t = 600 s: reaches 3.95 m at t = 600 + 3.55 / 0.002 = 2375 s
    t = np.arange(0, 2300, 10.0)
    level = 0.4 + np.clip(t - 600, 0, None) * 0.002
    det = of_kind(sw.update(series(tiny, "sw1", t, level)), K.OVERFLOW_FORECAST)
    assert len(det) > 0
    overflow_at = det.evidence["overflow_at_ms"]
    late = det.ts_ms >= T0 + 1_000_000  # window fully on the ramp
    assert overflow_at[late] == pytest.approx(T0 + 2_375_000, abs=1_000)
    tto = det.evidence["time_to_overflow_s"][late]
    assert tto == pytest.approx(2375 - (det.ts_ms[late] - T0) / 1000, abs=1.0)
    assert det.evidence["slope_m_per_h"][late] == pytest.approx(7.2, rel=1e-3)
    # first warning: within the horizon (2400 s) once the level is >= 30 % of 3.95 m
    first_s = (det.ts_ms.min() - T0) / 1000
    assert first_s == pytest.approx(600 + (0.3 * 3.95 - 0.4) / 0.002, abs=20)


def test_rain_driven_rise_is_neither_blockage_nor_overflow(
    sw: SewageDetector, tiny: Registry
) -> None:
    # 40 min dry at 0.4 m, then a storm: rain at the gauge and a 0.8 m rise over 30 min
    t = np.arange(0, 3 * 3600, 10.0)
    storm = (t >= 2400) & (t < 6000)
    rain = np.where(storm, 20.0, 0.0)
    rise = 0.8 * np.clip((t - 2500) / 1800, 0, 1) * np.where(t > 6500, np.exp(-(t - 6500) / 900), 1)
    level = 0.4 + rise + noise(t.size)
    det = sw.update(series(tiny, "sw1", t, level, rain_mmph=rain))
    assert len(of_kind(det, K.BLOCKAGE)) == 0
    assert len(of_kind(det, K.OVERFLOW_FORECAST)) == 0


def test_dry_weather_rise_is_a_blockage(sw: SewageDetector, tiny: Registry) -> None:
    t = np.arange(0, 3 * 3600, 10.0)
    level = 0.4 + 0.5 * np.clip((t - 2400) / 7200, 0, 1) + noise(t.size, 1)  # 0.25 m/h
    det = of_kind(sw.update(series(tiny, "sw1", t, level, rain_mmph=0.0)), K.BLOCKAGE)
    assert len(det) > 0
    first = det.rows()[0]
    assert first["evidence"]["dry_baseline_m"] == pytest.approx(0.4, abs=0.02)
    assert first["evidence"]["rise_m"] >= 0.1
    t_first = (first["ts_ms"] - T0) / 1000
    assert 2400 < t_first < 2400 + 0.15 / 0.25 * 3600 + 600


def test_a_gauge_in_the_same_grid_makes_it_wet_for_a_manhole_without_one(
    sw: SewageDetector, tiny: Registry
) -> None:
    # sw2 has no gauge; sw1 (same grid g1) reports the rain; sw3 (grid g2) rises dry
    t = np.arange(0, 3 * 3600, 10.0)
    rain = np.where((t >= 2400) & (t < 9000), 15.0, 0.0)
    rise = 0.6 * np.clip((t - 2500) / 3600, 0, 1)
    sw.update(series(tiny, "sw1", t, 0.5 + noise(t.size, 2), rain_mmph=rain))
    wet = sw.update(series(tiny, "sw2", t, 0.4 + rise + noise(t.size, 3)))
    dry = sw.update(series(tiny, "sw3", t, 0.4 + rise + noise(t.size, 4)))
    assert len(of_kind(wet, K.BLOCKAGE)) == 0
    assert len(of_kind(dry, K.BLOCKAGE)) > 0


def test_slow_daily_cycle_is_not_a_blockage(sw: SewageDetector, tiny: Registry) -> None:
    # a deep manhole's dry-weather flow: +-0.2 m over 24 h (0.05 m/h at its steepest)
    t = np.arange(0, 8 * 3600, 10.0)
    level = 0.8 + 0.2 * np.sin(2 * np.pi * t / 86400) + noise(t.size, 5)
    det = sw.update(series(tiny, "sw1", t, level, rain_mmph=0.0))
    assert len(of_kind(det, K.BLOCKAGE)) == 0


def test_level_high_reports_the_highest_fraction_crossed(
    sw: SewageDetector, tiny: Registry
) -> None:
    t = np.array([0.0, 10.0, 20.0])
    det = of_kind(sw.update(series(tiny, "sw1", t, np.array([2.0, 3.2, 3.8]))), K.LEVEL_HIGH)
    assert det.evidence["threshold_fraction"].tolist() == [0.8, 0.95]
    assert det.evidence["level_fraction"].tolist() == pytest.approx([3.2 / 3.95, 3.8 / 3.95])


def test_cover_displaced_is_tilt(sw: SewageDetector, tiny: Registry) -> None:
    t = np.array([0.0, 10.0, 20.0])
    det = of_kind(
        sw.update(
            series(tiny, "sw1", t, np.array([0.5, 0.5, 0.5]), tilt_deg=np.array([1, 25, 40.0]))
        ),
        K.COVER_DISPLACED,
    )
    assert det.evidence["tilt_deg"].tolist() == [25.0, 40.0]


def test_flat_lined_level_is_stuck(sw: SewageDetector, tiny: Registry) -> None:
    t = np.arange(0, 200, 10.0)
    level = np.where(t < 60, 0.5 + noise(t.size, 6), np.float32(0.4321))
    det = of_kind(sw.update(series(tiny, "sw1", t, level)), K.STUCK)
    assert len(det) > 0
    first = det.rows()[0]
    # flat from t = 60 s: 6 readings over >= 50 s -> first at 110 s
    assert first["ts_ms"] == T0 + 110_000
    assert first["evidence"]["stuck_s"] == pytest.approx(50.0)


def test_nan_level_is_skipped_and_tilt_still_checked(sw: SewageDetector, tiny: Registry) -> None:
    t = np.arange(0, 100, 10.0)
    level = np.full(t.size, np.nan)
    det = sw.update(series(tiny, "sw1", t, level, tilt_deg=30.0))
    assert set(det.kind.tolist()) == {K.COVER_DISPLACED.code}
    assert int(sw.n_seen_[sw.index.local_of[tiny.index("sw1")]]) == 0


def test_first_reading_can_be_an_anomaly(sw: SewageDetector, tiny: Registry) -> None:
    det = sw.update(series(tiny, "sw4", np.array([0.0]), np.array([3.9]), tilt_deg=50.0))
    got = {DetectionKind.from_code(int(k)) for k in det.kind}
    assert got == {K.LEVEL_HIGH, K.COVER_DISPLACED}


def test_ring_holds_the_last_window_and_fits_like_polyfit(tiny: Registry) -> None:
    cfg = load_config(
        overrides={"sewage": {"window_readings": 8, "min_fit_readings": 4, "flat_readings": 4}}
    )
    sw = SewageDetector(tiny, cfg.sewage)
    rng = np.random.default_rng(9)
    t = np.cumsum(rng.uniform(5, 15, 500))
    level = 1.0 + 0.001 * t + 0.01 * rng.standard_normal(t.size)
    b = series(tiny, "sw1", t, level)
    for i in range(0, t.size, 37):  # odd batch sizes: wraps land anywhere
        sw.update(b.take(np.arange(i, min(i + 37, t.size))))
    li = sw.index.local_of[tiny.index("sw1")]
    yy = b.fields["level_m"][-8:]
    assert sorted(sw.ring_[li].imag.tolist()) == sorted(yy.tolist())
    slope, _, my, count, _ = sw._fit(np.array([li], np.intp))
    tt = (b.ts_ms[-8:] - sw.epoch_ms_[0]) / 1000.0
    assert count[0] == 8
    assert my[0] == pytest.approx(yy.astype(np.float64).mean(), rel=1e-12)
    # ring times are float32 seconds: millisecond resolution, hence the tolerance
    assert slope[0] == pytest.approx(np.polyfit(tt, yy.astype(np.float64), 1)[0], rel=1e-4)


def test_ring_times_are_rebased_before_they_lose_precision(
    tiny: Registry, cfg: DetectorConfig
) -> None:
    sw = SewageDetector(tiny, cfg.sewage)
    t = np.arange(0, 600, 10.0)
    sw.update(series(tiny, "sw1", t, 0.5 + noise(t.size, 7)))
    later = 40 * 86400 + np.arange(0, 2400, 10.0)  # 40 days on: beyond float32's comfort
    level = 0.4 + np.clip(later - later[0] - 600, 0, None) * 0.002
    det = of_kind(sw.update(series(tiny, "sw1", later, level)), K.OVERFLOW_FORECAST)
    assert sw.epoch_ms_[0] > T0 + 20 * 86_400_000
    li = sw.index.local_of[tiny.index("sw1")]
    assert float(sw.ring_[li].real.max()) < 3 * 2**19
    assert det.evidence["slope_m_per_h"][-1] == pytest.approx(7.2, rel=1e-3)


def test_flat_line_count_saturates_instead_of_wrapping(sw: SewageDetector, tiny: Registry) -> None:
    t = np.arange(0, 100, 10.0)
    level = np.full(t.size, np.float32(0.4321))
    sw.update(series(tiny, "sw1", t, level))
    li = sw.index.local_of[tiny.index("sw1")]
    sw.flat_n_[li] = np.iinfo(np.int16).max - 1  # flat for ~91 hours at 10 s
    det = of_kind(sw.update(series(tiny, "sw1", t + 100, level)), K.STUCK)
    assert int(sw.flat_n_[li]) == np.iinfo(np.int16).max
    assert len(det) == t.size  # still stuck, every reading


def test_chunked_rounds_equal_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    # a round is processed in chunks of CHUNK_ROWS manholes (state through views for runs
    # of consecutive ones): any chunking gives the same detections, in the same order,
    # and the same state
    from detectors import sewage as sewage_mod
    from sim.engine import FleetSim, SimSpec
    from sim.fleet import FleetSpec, build_fleet

    reg = build_fleet(FleetSpec(n_devices=800, seed=6))
    sim = FleetSim(reg, SimSpec(seed=7, warmup_s=0, fault_scale=300))
    batches = []
    for _ in range(60):
        parts = [b for b in sim.advance(sim.now_ms + 10_000) if b.kind == DeviceKind.SEWAGE]
        batches.append(ReadingBatch.concat(parts))
    rng = np.random.default_rng(1)
    frozen = np.unique(batches[0].device)[::9]
    for i, b in enumerate(batches):
        b.fields["level_m"][np.isin(b.device, frozen)] = 0.5  # flat-lined sensors
        if i % 4 == 0:
            b.fields["level_m"][rng.random(len(b)) < 0.05] = np.nan
        b.fields["tilt_deg"][rng.random(len(b)) < 0.01] = 40.0  # covers knocked off

    def run(chunk: int) -> tuple[list[Detections], dict]:
        monkeypatch.setattr(sewage_mod, "CHUNK_ROWS", chunk)
        d = SewageDetector(reg, load_config().sewage)
        return [d.update(b) for b in batches], d.state()

    whole, whole_state = run(1 << 30)
    kinds = {int(k) for d in whole for k in d.kind}
    assert len(kinds) >= 3, kinds
    chunked, chunked_state = run(5)
    for a, b in zip(whole, chunked, strict=True):
        assert_identical_detections(a, b)
    for k, v in whole_state.items():
        np.testing.assert_array_equal(v, chunked_state[k], err_msg=k)
