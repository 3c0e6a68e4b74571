"""Falling-object detector: ballistic tracks vs birds, leaves, insects and rain."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from detectors.config import DetectorConfig, load_config
from detectors.highfall import HighfallDetector, fit_tracks
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry
from tests.detectors.conftest import T0, batch

G = 9.81


def track(  # noqa: PLR0917
    reg: Registry,
    device: str,
    track_id: int,
    t_s: np.ndarray,
    h: np.ndarray,
    x: np.ndarray,
    *,
    start_ms: int = T0,
    end: bool = True,
) -> ReadingBatch:
    n = t_s.size
    e = np.zeros(n)
    if end:
        e[-1] = 1.0
    return batch(
        reg,
        DeviceKind.HIGHFALL,
        [device] * n,
        (start_ms + np.round(t_s * 1000)).astype(np.int64).tolist(),
        track_id=[track_id] * n,
        height_m=h.tolist(),
        horizontal_m=x.tolist(),
        end=e.tolist(),
    )


def drop(
    floor: int,
    *,
    fh: float = 3.0,
    frame_s: float = 0.05,
    first_s: float = 0.15,
    bottom_m: float = 1.0,
    seed: int = 0,
    toss_mps: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A flowerpot released from floor ``floor``'s window sill (1 m above its level)."""
    rng = np.random.default_rng(seed)
    h0 = (floor - 1) * fh + 1.0
    t = np.arange(first_s, 20, frame_s)
    h = h0 + toss_mps * t - G * t * t / 2
    keep = h >= bottom_m
    t, h = t[keep], h[keep]
    return t, h + rng.normal(0, 0.05, t.size), 12.0 + 0.5 * t + rng.normal(0, 0.05, t.size)


def falling(det: Detections) -> Detections:
    return det.take(np.flatnonzero(det.kind == DetectionKind.FALLING_OBJECT.code))


@pytest.fixture
def hf(tiny: Registry, cfg: DetectorConfig) -> HighfallDetector:
    return HighfallDetector(tiny, cfg.highfall)


@pytest.mark.parametrize("floor", [3, 7, 12, 20])
def test_dropped_object_is_found_with_its_origin_floor(
    hf: HighfallDetector, tiny: Registry, floor: int
) -> None:
    t, h, x = drop(floor, seed=floor)
    det = falling(hf.update(track(tiny, "hf1", 5, t, h, x)))
    assert len(det) == 1
    ev = det.rows()[0]["evidence"]
    assert ev["origin_floor"] == floor
    assert ev["release_height_m"] == pytest.approx((floor - 1) * 3.0 + 1.0, abs=0.5)
    assert ev["g_fit_mps2"] == pytest.approx(G, abs=0.5)
    assert ev["track_id"] == 5
    assert ev["facade_x_m"] == pytest.approx(12.0, abs=0.3)
    assert det.ts_ms[0] == T0 + round(t[-1] * 1000)  # with the last point: no wait
    assert hf.open_tracks == 0


def test_camera_that_misses_the_top_floors_back_extrapolates_the_release(
    hf: HighfallDetector, tiny: Registry
) -> None:
    t, h, x = drop(18, first_s=1.2, seed=1)  # first seen ~7 m below the sill
    ev = falling(hf.update(track(tiny, "hf1", 1, t, h, x))).rows()[0]["evidence"]
    assert abs(ev["origin_floor"] - 18) <= 1


def test_points_arrive_over_several_batches(hf: HighfallDetector, tiny: Registry) -> None:
    t, h, x = drop(9, seed=2)
    whole = track(tiny, "hf2", 77, t, h, x)
    cuts = [0, 3, 4, 11, t.size]
    dets = [hf.update(whole.take(np.arange(a, b))) for a, b in itertools.pairwise(cuts)]
    assert [len(falling(d)) for d in dets] == [0, 0, 0, 1]
    assert falling(dets[-1]).evidence["origin_floor"][0] == 9


def test_interleaved_tracks_of_two_cameras(hf: HighfallDetector, tiny: Registry) -> None:
    a = track(tiny, "hf1", 1, *drop(5, seed=3))
    b = track(tiny, "hf2", 1, *drop(15, seed=4))
    both = ReadingBatch.concat([a, b])
    order = np.argsort(both.ts_ms, kind="stable")
    det = falling(hf.update(both.take(order)))
    got = dict(
        zip(
            tiny.device_ids[det.device].tolist(), det.evidence["origin_floor"].tolist(), strict=True
        )
    )
    assert got == {"hf1": 5, "hf2": 15}


def test_bird_track_is_rejected(hf: HighfallDetector, tiny: Registry) -> None:
    t = np.arange(0, 3, 0.05)
    x = 5 + 9.0 * t  # flying along the facade at 9 m/s
    h = 30 - 2.0 * t + 0.2 * np.sin(2 * np.pi * 4 * t)  # gliding down, wings flapping
    assert len(falling(hf.update(track(tiny, "hf1", 2, t, h, x)))) == 0


def test_bird_diving_steeply_is_rejected(hf: HighfallDetector, tiny: Registry) -> None:
    t = np.arange(0, 1.5, 0.05)
    h = 40 - 6.0 * t - 4.9 * t * t  # curved like a fall...
    x = 10 + 8.0 * t  # ...but moving 8 m/s sideways
    assert len(falling(hf.update(track(tiny, "hf1", 3, t, h, x)))) == 0


def test_leaf_fluttering_down_is_rejected(hf: HighfallDetector, tiny: Registry) -> None:
    t = np.arange(0, 6, 0.05)
    h = 20 - 1.2 * t + 0.2 * np.sin(4 * t)
    x = 8 + 1.0 * np.sin(2 * t)
    assert len(falling(hf.update(track(tiny, "hf1", 4, t, h, x)))) == 0


def test_rain_streak_at_constant_speed_is_rejected(hf: HighfallDetector, tiny: Registry) -> None:
    rng = np.random.default_rng(5)
    t = np.arange(0, 0.6, 0.04)
    h = 25 - 8.0 * t + rng.normal(0, 0.05, t.size)
    x = 4 + 0.2 * t
    assert len(falling(hf.update(track(tiny, "hf1", 5, t, h, x)))) == 0


def test_insect_jitter_is_rejected(hf: HighfallDetector, tiny: Registry) -> None:
    rng = np.random.default_rng(6)
    t = np.arange(0, 0.8, 0.05)
    h = 10 + np.cumsum(rng.normal(0, 0.4, t.size))
    x = 3 + np.cumsum(rng.normal(0, 0.4, t.size))
    assert len(falling(hf.update(track(tiny, "hf1", 6, t, h, x)))) == 0


def test_track_without_end_closes_on_the_timer(hf: HighfallDetector, tiny: Registry) -> None:
    t, h, x = drop(6, seed=7)
    assert len(hf.update(track(tiny, "hf1", 8, t, h, x, end=False))) == 0
    assert hf.open_tracks == 1
    last = T0 + round(t[-1] * 1000)
    assert len(hf.tick(last + 1_000)) == 0  # track_timeout_s = 2 s
    det = falling(hf.tick(last + 2_001))
    assert det.evidence["origin_floor"].tolist() == [6]
    assert hf.open_tracks == 0


def test_heartbeats_and_nan_points_are_ignored(hf: HighfallDetector, tiny: Registry) -> None:
    nan = float("nan")
    b = batch(
        tiny,
        DeviceKind.HIGHFALL,
        ["hf1", "hf2", "hf1"],
        [T0, T0, T0 + 100],
        track_id=[0, 0, 9],
        height_m=[nan, nan, nan],
        horizontal_m=[nan, nan, nan],
        end=[nan, nan, nan],
    )
    assert len(hf.update(b)) == 0
    assert hf.open_tracks == 0


def test_long_track_keeps_its_first_points(tiny: Registry) -> None:
    cfg = load_config(overrides={"highfall": {"max_points": 16}})
    hf = HighfallDetector(tiny, cfg.highfall)
    t, h, x = drop(20, frame_s=0.04, seed=8)  # ~85 points
    det = falling(hf.update(track(tiny, "hf1", 1, t, h, x)))
    assert det.evidence["points_count"].tolist() == [16]
    assert det.evidence["origin_floor"].tolist() == [20]


def test_pool_beyond_max_tracks_closes_the_oldest(tiny: Registry) -> None:
    cfg = load_config(overrides={"highfall": {"max_tracks": 16}})
    hf = HighfallDetector(tiny, cfg.highfall)
    for k in range(20):
        t, h, x = drop(6, seed=k)
        hf.update(track(tiny, "hf1", k + 1, t, h, x, start_ms=T0 + k * 10_000, end=False))
    assert hf.open_tracks == 16
    assert sorted((hf.state()["key_"] & 0xFFFFFFFF).tolist()) == list(range(5, 21))


def test_pool_grows_past_its_initial_size(tiny: Registry, cfg: DetectorConfig) -> None:
    hf = HighfallDetector(tiny, cfg.highfall)
    t, h, x = drop(4, seed=1)
    parts = [track(tiny, "hf1", k + 1, t, h, x, end=False) for k in range(300)]
    hf.update(ReadingBatch.concat(parts))
    assert hf.open_tracks == 300
    det = falling(hf.tick(T0 + 60_000))
    assert len(det) == 300
    assert set(det.evidence["origin_floor"].tolist()) == {4}


def test_fit_matches_numpy_polyfit() -> None:
    rng = np.random.default_rng(11)
    m, p = 50, 40
    n = rng.integers(5, p + 1, m)
    t = np.sort(rng.uniform(0, 3, (m, p)), axis=1)
    h = 80 + rng.normal(0, 2, (m, 1)) * t - rng.uniform(2, 6, (m, 1)) * t**2
    h += rng.normal(0, 0.1, (m, p))
    x = 5 + rng.normal(0, 1, (m, 1)) * t + rng.normal(0, 0.1, (m, p))
    w = (np.arange(p)[None, :] < n[:, None]).astype(float)
    res = fit_tracks(t, h, x, w)
    for i in range(m):
        k = int(n[i])
        c2, _, _ = np.polyfit(t[i, :k], h[i, :k], 2)
        e1, _ = np.polyfit(t[i, :k], x[i, :k], 1)
        assert res["g_mps2"][i] == pytest.approx(-2 * c2, rel=1e-8)
        assert res["horizontal_speed_mps"][i] == pytest.approx(e1, rel=1e-8)
        assert res["duration_s"][i] == pytest.approx(t[i, k - 1] - t[i, 0])


def test_a_track_with_points_in_the_batch_is_never_the_one_evicted(tiny: Registry) -> None:
    cfg = load_config(overrides={"highfall": {"max_tracks": 16}})
    hf = HighfallDetector(tiny, cfg.highfall)
    t, h, x = drop(8, seed=3)
    half = t.size // 2
    first = T0 - 100_000  # track 1 (camera hf1) is the least recently seen...
    hf.update(track(tiny, "hf1", 1, t[:half], h[:half], x[:half], start_ms=first, end=False))
    for k in range(2, 17):  # ...the 15 others (camera hf2) came later
        hf.update(
            track(tiny, "hf2", k, t[:half], h[:half], x[:half], start_ms=T0 + k * 1000, end=False)
        )
    assert hf.open_tracks == 16
    rest = track(tiny, "hf1", 1, t[half:], h[half:], x[half:], start_ms=first)
    newcomer = track(
        tiny, "hf1", 99, t[:3], h[:3], x[:3], start_ms=int(rest.ts_ms[-1]) + 1, end=False
    )
    det = falling(hf.update(ReadingBatch.concat([rest, newcomer])))
    # track 2, the oldest without points in the batch, made room; track 1 ended whole
    assert sorted(det.evidence["track_id"].tolist()) == [1, 2]
    whole = det.take(np.flatnonzero(det.evidence["track_id"] == 1))
    assert whole.evidence["points_count"].tolist() == [t.size]
    assert whole.evidence["origin_floor"].tolist() == [8]


def test_one_camera_tracking_two_objects_at_once(tiny: Registry, cfg: DetectorConfig) -> None:
    # two drops seen by one camera, rows interleaved in time, over several batches: the
    # camera's slot cache keeps missing, and each row must still find its own track
    a = track(tiny, "hf1", 5, *drop(6, seed=5))
    b = track(tiny, "hf1", 6, *drop(14, seed=6), start_ms=T0 + 120)
    both = ReadingBatch.concat([a, b])
    both = both.take(np.argsort(both.ts_ms, kind="stable"))
    hf = HighfallDetector(tiny, cfg.highfall)
    cuts = np.linspace(0, len(both), 5).astype(int)
    det = falling(
        Detections.concat(
            [hf.update(both.take(np.arange(lo, hi))) for lo, hi in itertools.pairwise(cuts)]
        )
    )
    ev = {k: det.evidence[k].tolist() for k in ("track_id", "origin_floor", "points_count")}
    assert dict(zip(ev["track_id"], ev["origin_floor"], strict=True)) == {5.0: 6.0, 6.0: 14.0}
    assert dict(zip(ev["track_id"], ev["points_count"], strict=True)) == {5.0: len(a), 6.0: len(b)}
    assert hf.open_tracks == 0


@pytest.mark.parametrize("cuts", [[16], [10, 16, 17], [15, 40], [3, 30]])
def test_long_track_over_batches_keeps_the_same_first_points(tiny: Registry, cuts: list) -> None:
    # a batch may end exactly at max_points, or cross it, or arrive after it: the sums
    # (added point by point in track order) and the verdict equal one batch's, bit for bit
    cfg = load_config(overrides={"highfall": {"max_points": 16}})
    t, h, x = drop(20, frame_s=0.04, seed=8)  # ~85 points
    whole = track(tiny, "hf1", 1, t, h, x)
    one = HighfallDetector(tiny, cfg.highfall)
    expected = falling(one.update(whole))
    many = HighfallDetector(tiny, cfg.highfall)
    parts = []
    for lo, hi in itertools.pairwise([0, *cuts, len(whole)]):
        part = whole.take(np.arange(lo, hi))
        if hi < len(whole):
            shadow = HighfallDetector(tiny, cfg.highfall)  # state so far, from one batch
            shadow.update(whole.take(np.arange(0, hi)))
            parts.append(many.update(part))
            for k, v in shadow.state().items():
                np.testing.assert_array_equal(v, many.state()[k], err_msg=k)
        else:
            parts.append(many.update(part))
    got = falling(Detections.concat(parts))
    assert len(expected) == len(got) == 1
    assert got.evidence["points_count"].tolist() == [16]
    for k, v in expected.evidence.items():
        np.testing.assert_array_equal(v, got.evidence[k], err_msg=k)
    # the duration ends at the 16th point, not at the last point seen
    assert got.evidence["duration_s"][0] == pytest.approx(t[15] - t[0], abs=1e-3)


def version_2_state(t_s: np.ndarray, h: np.ndarray, x: np.ndarray, key: int, p: int) -> dict:
    """What a version-2 detector saved for one open track: its first points, padded."""
    n = min(t_s.size, p)
    pad = np.zeros((1, p), np.float32)
    tt, hh, xx = pad.copy(), pad.copy(), pad.copy()
    tt[0, :n], hh[0, :n], xx[0, :n] = t_s[:n] - t_s[0], h[:n], x[:n]
    return {
        "key_": np.array([key], np.int64),
        "n_points_": np.array([n], np.int32),
        "t0_ms_": np.array([T0 + round(t_s[0] * 1000)], np.int64),
        "last_ms_": np.array([T0 + round(t_s[t_s.size - 1] * 1000)], np.int64),
        "t_s_": tt,
        "height_m_": hh,
        "horizontal_m_": xx,
    }


def test_version_2_point_state_converts_to_the_same_track(
    tiny: Registry, cfg: DetectorConfig
) -> None:
    from detectors.highfall import state_from_points

    t, h, x = drop(12, seed=9)
    half = t.size // 2
    whole = track(tiny, "hf2", 4, t, h, x)
    live = HighfallDetector(tiny, cfg.highfall)
    live.update(whole.take(np.arange(half)))
    key = int(tiny.index_of(np.array(["hf2"]))[0]) << 32 | 4
    # the points as float32 seconds (as version 2 kept them), rounded to frames in ms
    t_ms = np.round(t[:half] * 1000) / 1000
    old = version_2_state(t_ms, h[:half], x[:half], key, cfg.highfall.max_points)
    restored = HighfallDetector(tiny, cfg.highfall)
    with pytest.raises(ValueError, match="version 2 checkpoint"):
        restored.load_state(old)  # not silently: the layout differs
    restored.load_state(state_from_points(old, cfg.highfall.max_points))
    a, b = live.state(), restored.state()
    for k in ("key_", "n_points_", "t0_ms_", "last_ms_", "full_ms_"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_allclose(a["moments_"], b["moments_"], rtol=1e-5)
    rest = whole.take(np.arange(half, len(whole)))
    da, db = falling(live.update(rest)), falling(restored.update(rest))
    assert len(da) == len(db) == 1
    assert db.evidence["origin_floor"].tolist() == da.evidence["origin_floor"].tolist() == [12]
    assert db.evidence["g_fit_mps2"][0] == pytest.approx(da.evidence["g_fit_mps2"][0], rel=1e-4)
