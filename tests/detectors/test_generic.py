"""Generic checks: plausible range, stuck channels, offline on the timer, anomaly score."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.config import DetectorConfig, load_config
from detectors.generic import GenericDetector, evidence_name, split_unit
from gridwatch.batch import Detections
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry
from tests.detectors.conftest import T0, assert_identical_detections, batch

K = DetectionKind


def of_kind(det: Detections, kind: DetectionKind) -> Detections:
    return det.take(np.flatnonzero(det.kind == kind.code))


def sewage(reg: Registry, devices: list[str], ts: list[int], level: list[float], tilt: list[float]):
    return batch(reg, DeviceKind.SEWAGE, devices, ts, level_m=level, tilt_deg=tilt)


def test_evidence_names_keep_the_unit_last() -> None:
    assert split_unit("vibration_mps2") == ("vibration", "mps2")
    assert evidence_name("level_m", "max") == "level_max_m"
    assert evidence_name("occupancy", "max") == "occupancy_max"


def test_out_of_range_against_the_registry_depth(tiny: Registry, cfg: DetectorConfig) -> None:
    g = GenericDetector(tiny, DeviceKind.SEWAGE, cfg.generic)
    # sw1 is 4.0 m deep: hi = depth + 0.5 = 4.5 m; lo = -0.2 m
    det = of_kind(
        g.update(
            sewage(tiny, ["sw1"] * 3, [T0, T0 + 10_000, T0 + 20_000], [1.0, 4.7, -0.3], [1, 1, 1])
        ),
        K.OUT_OF_RANGE,
    )
    assert det.evidence["level_m"].tolist() == pytest.approx([4.7, -0.3])
    assert det.evidence["level_max_m"].tolist() == [4.5, 4.5]
    assert det.evidence["level_min_m"].tolist() == [-0.2, -0.2]


def test_elevator_position_above_the_shaft(tiny: Registry, cfg: DetectorConfig) -> None:
    g = GenericDetector(tiny, DeviceKind.ELEVATOR, cfg.generic)
    b = batch(
        tiny,
        DeviceKind.ELEVATOR,
        ["el1", "el1"],
        [T0, T0 + 1000],
        position_m=[27.0, 29.0],
        speed_mps=[0, 0],
        vibration_mps2=[0.1, 0.11],
        door_open=[0, 0],
        occupancy=[0, 0],
    )
    # 10 floors of 3 m: top landing 27 m, + 1.5 m margin
    det = of_kind(g.update(b), K.OUT_OF_RANGE)
    assert det.evidence["position_m"].tolist() == [29.0]
    assert det.evidence["position_max_m"].tolist() == [28.5]


def test_stuck_channel_needs_repeats_and_time(tiny: Registry, cfg: DetectorConfig) -> None:
    g = GenericDetector(tiny, DeviceKind.SEWAGE, cfg.generic)
    ts = [T0 + i * 10_000 for i in range(8)]
    tilt = [1.1, 1.2, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3]  # 1.3 from t = 20 s
    det = of_kind(
        g.update(sewage(tiny, ["sw2"] * 8, ts, [0.5 + i / 100 for i in range(8)], tilt)), K.STUCK
    )
    # 6 identical over >= 50 s: from 20 s, the 6th is at 70 s
    assert det.ts_ms.tolist() == [T0 + 70_000]
    assert det.evidence["repeats_count"].tolist() == [6.0]
    assert det.evidence["stuck_s"].tolist() == [50.0]


def test_offline_on_the_timer_for_every_device_of_the_kind(
    tiny: Registry, cfg: DetectorConfig
) -> None:
    g = GenericDetector(tiny, DeviceKind.SEWAGE, cfg.generic)
    g.update(sewage(tiny, ["sw1", "sw2", "sw3", "sw4"], [T0] * 4, [0.5] * 4, [1.0] * 4))
    g.update(sewage(tiny, ["sw1"], [T0 + 25_000], [0.5], [1.0]))
    assert len(g.tick(T0 + 30_000)) == 0  # 3 x 10 s
    det = g.tick(T0 + 31_000)
    assert sorted(tiny.device_ids[det.device].tolist()) == ["sw2", "sw3", "sw4"]
    assert det.evidence["silent_s"].tolist() == [31.0, 31.0, 31.0]
    assert det.evidence["interval_s"].tolist() == [10.0] * 3
    # a device that reports again is no longer offline
    g.update(sewage(tiny, ["sw2"], [T0 + 40_000], [0.5], [1.0]))
    det = g.tick(T0 + 41_000)
    assert sorted(tiny.device_ids[det.device].tolist()) == ["sw3", "sw4"]


def test_never_seen_devices_are_offline_after_start_up(tiny: Registry) -> None:
    on = GenericDetector(tiny, DeviceKind.HIGHFALL, load_config().generic)
    off = GenericDetector(
        tiny,
        DeviceKind.HIGHFALL,
        load_config(overrides={"generic": {"offline_never_seen": False}}).generic,
    )
    for g in (on, off):
        assert len(g.tick(T0)) == 0  # start-up
    assert len(off.tick(T0 + 91_000)) == 0
    det = on.tick(T0 + 91_000)  # 3 x 30 s
    assert len(det) == 2
    assert np.isnan(det.evidence["last_seen_ms"]).all()


def test_anomaly_score_after_warm_up_only(tiny: Registry, cfg: DetectorConfig) -> None:
    g = GenericDetector(tiny, DeviceKind.SEWAGE, cfg.generic)
    rng = np.random.default_rng(1)
    n = 60
    level = (0.5 + 0.003 * rng.standard_normal(n)).tolist()
    level[3] = 2.5  # during warm-up: no score
    level[50] = 2.5  # after: a clear anomaly
    ts = [T0 + i * 10_000 for i in range(n)]
    det, scores = g.update_scores(sewage(tiny, ["sw1"] * n, ts, level, [1.0] * n))
    s = scores["level_m"]
    assert s[3] == 0.0
    assert s[50] == 1.0
    assert np.all(s[np.r_[0:3, 4:50, 51:n]] < 0.5)
    hits = of_kind(det, K.ANOMALY_SCORE)
    assert hits.ts_ms.tolist() == [ts[50]]
    assert hits.evidence["level_expected_m"][0] == pytest.approx(0.5, abs=0.01)
    assert hits.evidence["z_sigmas"][0] > 10


def test_nan_in_a_channel_is_skipped(tiny: Registry, cfg: DetectorConfig) -> None:
    g = GenericDetector(tiny, DeviceKind.SEWAGE, cfg.generic)
    nan = float("nan")
    det, scores = g.update_scores(
        sewage(tiny, ["sw1", "sw1"], [T0, T0 + 10_000], [nan, 0.5], [nan, 1.0])
    )
    assert len(det) == 0
    assert np.isnan(scores["level_m"][0])
    assert scores["level_m"][1] == 0.0
    assert g.last_seen_ms_[g.index.local_of[tiny.index("sw1")]] == T0 + 10_000


def test_channel_config_rejects_unknown_fields() -> None:
    from gridwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="sewage has no field 'depth'"):
        load_config(
            overrides={
                "generic": {"channels": {"sewage": {"depth": {"score": True, "min_scale": 1.0}}}}
            }
        )
    with pytest.raises(ConfigError, match="only float fields"):
        load_config(
            overrides={
                "generic": {
                    "channels": {"highfall": {"track_id": {"score": True, "min_scale": 1.0}}}
                }
            }
        )


@pytest.mark.parametrize("kind", [DeviceKind.SEWAGE, DeviceKind.ELEVATOR])
def test_chunked_checks_equal_unchunked(
    kind: DeviceKind, cfg: DetectorConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rounds are processed in chunks of CHUNK_ROWS rows: any chunking must give the same
    # detections in the same order, the same per-row scores and the same state.
    from detectors import generic
    from gridwatch.batch import ReadingBatch
    from sim.engine import FleetSim, SimSpec
    from sim.fleet import FleetSpec, build_fleet

    reg = build_fleet(FleetSpec(n_devices=600, seed=3))
    sim = FleetSim(reg, SimSpec(seed=4, warmup_s=0, fault_scale=300))
    batches = []
    for _ in range(40):
        parts = [b for b in sim.advance(sim.now_ms + 10_000) if b.kind == kind]
        batches.append(ReadingBatch.concat(parts))
    rng = np.random.default_rng(0)
    field = {DeviceKind.SEWAGE: "level_m", DeviceKind.ELEVATOR: "position_m"}[kind]
    stuck = {DeviceKind.SEWAGE: "tilt_deg", DeviceKind.ELEVATOR: "vibration_mps2"}[kind]
    frozen = np.unique(batches[0].device)[::10]
    for i, b in enumerate(batches):
        b.fields[stuck][np.isin(b.device, frozen)] = 1.25  # stuck sensors
        if i >= 25:  # past warm-up: spikes (anomaly scores) and impossible values (range)
            b.fields[field][rng.random(len(b)) < 0.03] *= 50
            b.fields[field][rng.random(len(b)) < 0.01] = -5
        if i % 3 == 0:  # NaN readings take the finite-rows path of a chunk
            for v in b.fields.values():
                if v.dtype.kind == "f":
                    v[rng.random(v.size) < 0.05] = np.nan

    def run(chunk: int) -> tuple[list[Detections], list[dict], dict]:
        monkeypatch.setattr(generic, "CHUNK_ROWS", chunk)
        g = GenericDetector(reg, kind, cfg.generic)
        out = [g.update_scores(b) for b in batches]
        return [d for d, _ in out], [s for _, s in out], g.state()

    whole, whole_scores, whole_state = run(1 << 30)
    assert sum(len(d) for d in whole) > 0
    kinds = {DetectionKind.from_code(int(k)) for d in whole for k in d.kind}
    scored = {K.ANOMALY_SCORE} if kind is DeviceKind.SEWAGE else set()  # elevator: none
    assert kinds == {K.OUT_OF_RANGE, K.STUCK} | scored
    chunked, chunked_scores, chunked_state = run(7)
    for a, b in zip(whole, chunked, strict=True):
        assert_identical_detections(a, b)
    for a, b in zip(whole_scores, chunked_scores, strict=True):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k, v in whole_state.items():
        np.testing.assert_array_equal(v, chunked_state[k], err_msg=k)
