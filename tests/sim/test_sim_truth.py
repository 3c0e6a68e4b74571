"""The ground truth lines up with the readings.

For every injected fault kind, the readings inside each labelled window show the
physical signature the label claims; and outside the labels no reading shows it (so a
detector that fires outside a label is wrong, not the simulator).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gridwatch.domain import DeviceKind
from sim.faults import FaultKind, FaultLabel

SimRun = Any  # tests/sim/conftest.py: SimRun (conftest modules cannot be imported)

EL, SW, HF = DeviceKind.ELEVATOR, DeviceKind.SEWAGE, DeviceKind.HIGHFALL


def _inside(run: SimRun, kind: DeviceKind, fault: FaultKind) -> np.ndarray:
    """Mask of ``kind`` readings that fall inside a label of ``fault`` on their device."""
    b = run.readings[kind]
    mask = np.zeros(len(b), bool)
    for lb in run.of(fault.value):
        mask |= (b.device == lb.device) & (b.ts_ms >= lb.start_ms) & (b.ts_ms <= lb.end_ms)
    return mask


def _quiet(run: SimRun, device: int, ts: np.ndarray) -> np.ndarray:
    """Mask of ``ts`` outside every label of ``device``."""
    quiet = np.ones(ts.size, bool)
    for lb in run.labels:
        if lb.device == device:
            quiet &= ~((ts >= lb.start_ms) & (ts <= lb.end_ms))
    return quiet


def _observed(run: SimRun, fault: FaultKind, at_least: int = 3) -> list[FaultLabel]:
    labels = [lb for lb in run.of(fault.value) if lb.extra["observable_ms"] <= run.end_ms]
    assert len(labels) >= at_least, f"only {len(labels)} observable {fault} labels"
    return labels


def test_every_kind_is_injected(sim_run: SimRun) -> None:
    kinds = {lb.kind for lb in sim_run.labels}
    assert kinds == {k.value for k in FaultKind}


def test_labels_are_well_formed(sim_run: SimRun) -> None:
    reg = sim_run.registry
    for lb in sim_run.labels:
        assert lb.start_ms <= lb.end_ms, lb
        assert reg.device_ids[lb.device] == lb.device_id
        assert "observable_ms" in lb.extra
        assert lb.start_ms >= sim_run.sim.spec.start_ms
        if lb.is_fault:
            assert lb.start_ms >= sim_run.sim.spec.start_ms + 600_000, "fault inside warm-up"


def test_entrapment(sim_run: SimRun) -> None:
    variants = set()
    for lb in _observed(sim_run, FaultKind.ENTRAPMENT):
        ts, f = sim_run.rows(EL, lb.device)
        first = ts[ts >= lb.start_ms][0]
        assert first - lb.start_ms <= 1000, "a stop is reported at once"
        m = (ts >= lb.start_ms) & (ts < min(lb.extra["rescue_ms"], sim_run.end_ms))
        assert m.sum() >= (5 if lb.extra["rescue_ms"] < sim_run.end_ms else 1)
        assert (f["speed_mps"][m] == 0).all()
        assert (f["door_open"][m] == 0).all()
        assert (f["occupancy"][m] >= 1).all()
        assert len(np.unique(f["vibration_mps2"][m])) > 1, "a live sensor, not a stuck one"
        fh = float(sim_run.registry.floor_height_m[lb.device])
        pos = f["position_m"][m]
        off = np.abs(pos - np.round(pos / fh) * fh)
        variants.add(lb.extra["variant"])
        if lb.extra["variant"] == "between_floors":
            assert (off >= 0.3).all()
        else:
            assert (off < 0.05).all()
        assert lb.extra["rescue_ms"] - lb.start_ms >= 5 * 60_000
        if lb.end_ms < sim_run.end_ms - 2000:
            after = ts >= lb.end_ms
            assert f["door_open"][after][0] == 1 and f["occupancy"][after][0] == 0
    assert variants == {"between_floors", "doors_fail_at_landing"}


def test_nothing_else_looks_like_an_entrapment(sim_run: SimRun) -> None:
    b = sim_run.readings[EL]
    fh = sim_run.registry.floor_height_m[b.device]
    pos = b.fields["position_m"]
    off = np.abs(pos - np.round(pos / fh) * fh)
    trapped_like = (
        (b.fields["speed_mps"] == 0)
        & (b.fields["door_open"] == 0)
        & (b.fields["occupancy"] >= 1)
        & (off >= 0.3)
    )
    explained = _inside(sim_run, EL, FaultKind.ENTRAPMENT) | _inside(
        sim_run, EL, FaultKind.STUCK_SENSOR
    )
    assert trapped_like.sum() > 100
    assert not (trapped_like & ~explained).any()


def test_inspection_stop_is_empty_and_between_floors(sim_run: SimRun) -> None:
    for lb in _observed(sim_run, FaultKind.INSPECTION_STOP):
        ts, f = sim_run.rows(EL, lb.device)
        m = (ts >= lb.start_ms) & (ts < lb.end_ms)
        assert m.sum() >= (3 if lb.end_ms < sim_run.end_ms else 1)
        assert (f["speed_mps"][m] == 0).all() and (f["door_open"][m] == 0).all()
        assert (f["occupancy"][m] == 0).all()
        assert lb.extra["offset_from_landing_m"] >= 0.3


def test_door_held_is_open_and_still(sim_run: SimRun) -> None:
    for lb in _observed(sim_run, FaultKind.DOOR_HELD):
        ts, f = sim_run.rows(EL, lb.device)
        m = (ts >= lb.start_ms) & (ts < lb.end_ms)
        assert lb.end_ms - lb.start_ms >= 30_000
        assert m.sum() >= (3 if lb.end_ms < sim_run.end_ms else 1)
        assert (f["door_open"][m] == 1).all() and (f["speed_mps"][m] == 0).all()


def test_door_fault(sim_run: SimRun) -> None:
    variants = set()
    for lb in _observed(sim_run, FaultKind.DOOR_FAULT):
        ts, f = sim_run.rows(EL, lb.device)
        m = (ts >= lb.start_ms) & (ts <= lb.end_ms)
        door, speed = f["door_open"][m], f["speed_mps"][m]
        variants.add(lb.extra["variant"])
        if lb.extra["variant"] == "open_while_moving":
            assert ((door == 1) & (np.abs(speed) > 0.1)).sum() >= 2
        else:
            assert (np.diff(door) > 0).sum() >= 3, "the door re-opens again and again"
    assert variants == {"open_while_moving", "reopen_cycles"}


def test_door_never_open_while_moving_outside_labels(sim_run: SimRun) -> None:
    b = sim_run.readings[EL]
    bad = (b.fields["door_open"] == 1) & (np.abs(b.fields["speed_mps"]) > 0.05)
    bad &= ~_inside(sim_run, EL, FaultKind.DOOR_FAULT) & ~_inside(
        sim_run, EL, FaultKind.STUCK_SENSOR
    )
    assert not bad.any()


def test_overspeed(sim_run: SimRun) -> None:
    for lb in _observed(sim_run, FaultKind.OVERSPEED):
        ts, f = sim_run.rows(EL, lb.device)
        m = (ts >= lb.start_ms) & (ts <= lb.end_ms)
        rated = lb.extra["rated_speed_mps"]
        assert rated == pytest.approx(float(sim_run.registry.rated_speed_mps[lb.device]))
        assert (np.abs(f["speed_mps"][m]) > 1.15 * rated).sum() >= 2
    b = sim_run.readings[EL]
    over = np.abs(b.fields["speed_mps"]) > 1.15 * sim_run.registry.rated_speed_mps[b.device]
    explained = _inside(sim_run, EL, FaultKind.OVERSPEED) | _inside(
        sim_run, EL, FaultKind.STUCK_SENSOR
    )
    assert over.sum() > 10
    assert not (over & ~explained).any()


def _norm_vibration(run: SimRun, device: int) -> tuple[np.ndarray, np.ndarray]:
    ts, f = run.rows(EL, device)
    vr = float(run.registry.rated_speed_mps[device])
    return ts, f["vibration_mps2"] / (0.25 + 0.75 * np.abs(f["speed_mps"]) / vr)


def test_vibration_wear_ramps_up(sim_run: SimRun) -> None:
    for lb in _observed(sim_run, FaultKind.VIBRATION_WEAR):
        ts, v = _norm_vibration(sim_run, lb.device)
        before = np.median(v[(ts < lb.start_ms) & _quiet(sim_run, lb.device, ts)])
        assert before == pytest.approx(lb.extra["baseline_mps2"], rel=0.1)
        late = min(lb.extra["ramp_end_ms"], sim_run.end_ms)
        now = np.median(v[(ts > late - 600_000) & (ts <= late)])
        frac = (late - lb.start_ms) / (lb.extra["ramp_end_ms"] - lb.start_ms)
        expected = 1 + (lb.extra["peak_factor"] - 1) * frac
        assert now / before == pytest.approx(expected, rel=0.15)
        assert now / before >= 1.4


def test_no_vibration_rise_outside_labels(sim_run: SimRun) -> None:
    worn = {lb.device for lb in sim_run.of("vibration_wear") + sim_run.of("stuck_sensor")}
    b = sim_run.readings[EL]
    for dev in np.unique(b.device)[:200].tolist():
        if dev in worn:
            continue
        ts, v = _norm_vibration(sim_run, dev)
        half = ts < ts[0] + (ts[-1] - ts[0]) / 2
        assert np.median(v[~half]) / np.median(v[half]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("kind", [EL, SW])
def test_stuck_sensor_is_exactly_flat(sim_run: SimRun, kind: DeviceKind) -> None:
    labels = [
        lb
        for lb in _observed(sim_run, FaultKind.STUCK_SENSOR, at_least=1)
        if sim_run.registry.kind_of(lb.device) is kind
    ]
    assert len(labels) >= 2
    for lb in labels:
        ts, f = sim_run.rows(kind, lb.device)
        m = (ts >= lb.start_ms) & (ts < lb.end_ms)
        assert m.sum() >= 5
        rows = np.stack([np.nan_to_num(v[m], nan=-1.0) for v in f.values()], axis=1)
        assert (rows == rows[0]).all(), "every value repeats exactly"
        assert (
            m.sum() <= (lb.end_ms - lb.start_ms) / 1000 / sim_run.registry.interval_s[lb.device] + 1
        ), "a stuck sensor reports at its interval only"


def test_no_flat_lines_outside_stuck_labels(sim_run: SimRun) -> None:
    for kind, name in ((SW, "level_m"), (EL, "vibration_mps2")):
        b = sim_run.readings[kind]
        order = np.lexsort((b.ts_ms, b.device))
        dev, val = b.device[order], b.fields[name][order]
        same = (dev[2:] == dev[:-2]) & (val[2:] == val[1:-1]) & (val[1:-1] == val[:-2])
        stuck = _inside(sim_run, kind, FaultKind.STUCK_SENSOR)[order][2:]
        assert same.sum() > 0
        assert not (same & ~stuck).any(), f"{kind}: three equal {name} outside a stuck label"


@pytest.mark.parametrize("kind", list(DeviceKind))
def test_offline_gaps_only_in_offline_labels(sim_run: SimRun, kind: DeviceKind) -> None:
    labels = [
        lb
        for lb in sim_run.of("offline")
        if sim_run.registry.kind_of(lb.device) is kind and lb.end_ms < sim_run.end_ms
    ]
    assert labels
    b = sim_run.readings[kind]
    for lb in labels:
        ts, _ = sim_run.rows(kind, lb.device)
        assert not ((ts >= lb.start_ms) & (ts < lb.end_ms)).any()
        assert (ts < lb.start_ms).any() and (ts >= lb.end_ms).any()
    order = np.lexsort((b.ts_ms, b.device))
    dev, ts = b.device[order], b.ts_ms[order]
    gap = np.diff(ts)
    same = dev[1:] == dev[:-1]
    interval = sim_run.registry.interval_s[dev[1:]] * 1000
    long_gap = same & (gap > interval + 1000)
    offline = {lb.device for lb in labels} | {lb.device for lb in sim_run.of("offline")}
    for i in np.flatnonzero(long_gap).tolist():
        assert int(dev[i]) in offline, f"device {dev[i]} silent {gap[i]} ms without a label"


def test_overflow_reaches_the_level_at_the_labelled_time(sim_run: SimRun) -> None:
    checked = 0
    for lb in _observed(sim_run, FaultKind.OVERFLOW):
        ts, f = sim_run.rows(SW, lb.device)
        level = f["level_m"]
        o, top = lb.extra["overflow_ms"], lb.extra["overflow_level_m"]
        assert top == pytest.approx(float(sim_run.registry.overflow_level_m[lb.device]))
        assert 20 * 60_000 <= o - lb.start_ms <= 60 * 60_000
        assert level[(ts < lb.start_ms) & _quiet(sim_run, lb.device, ts)].max() < 0.6 * top
        rising = (ts >= lb.start_ms) & (ts < min(o, sim_run.end_ms))
        assert np.corrcoef(ts[rising], level[rising])[0, 1] > 0.98, "a steady rise"
        assert (level[rising] < top + 0.015).all()
        if o + 60_000 < sim_run.end_ms:
            checked += 1
            assert (level[(ts >= o) & (ts < o + 60_000)] >= top - 0.015).all()
    assert checked >= 3


def test_no_overflow_without_a_label(sim_run: SimRun) -> None:
    b = sim_run.readings[SW]
    high = b.fields["level_m"] >= sim_run.registry.overflow_level_m[b.device] - 0.015
    assert high.sum() > 0
    assert not (high & ~_inside(sim_run, SW, FaultKind.OVERFLOW)).any()
    frac = b.fields["level_m"] / sim_run.registry.overflow_level_m[b.device]
    outside = ~_inside(sim_run, SW, FaultKind.OVERFLOW) & ~_inside(sim_run, SW, FaultKind.BLOCKAGE)
    assert frac[outside].max() < 0.6, "rain alone never brings a manhole near overflow"


def test_rain_lifts_the_manholes_of_its_street(sim_run: SimRun) -> None:
    b = sim_run.readings[SW]
    rain = b.fields["rain_mmph"]
    wet = rain > 5
    assert wet.sum() > 100 and (rain == 0).sum() > 100
    street = sim_run.sim.device_street[b.device]
    s = int(np.bincount(street[wet]).argmax())
    on = street == s
    rel = b.fields["level_m"] / sim_run.registry.overflow_level_m[b.device]
    dry_rel = np.median(rel[on & (rain == 0)])
    wet_rel = np.median(rel[on & (rain > 5)])
    assert wet_rel > dry_rel * 1.2


def test_blockage_rises_in_dry_weather(sim_run: SimRun) -> None:
    for lb in _observed(sim_run, FaultKind.BLOCKAGE):
        ts, f = sim_run.rows(SW, lb.device)
        # dry for an hour from the start (a later storm may add its own rise)
        end = min(lb.extra["rise_end_ms"], sim_run.end_ms, lb.start_ms + 3_600_000)
        m = (ts >= lb.start_ms) & (ts <= end)
        rain = f["rain_mmph"][m]
        assert np.all((rain == 0) | np.isnan(rain)), "dry weather"
        street = int(sim_run.sim.device_street[lb.device])
        assert sim_run.sim.weather.dry(street, lb.start_ms - 3_600_000, end)
        level = f["level_m"]
        start_level = np.median(level[(ts >= lb.start_ms - 120_000) & (ts < lb.start_ms)])
        end_level = np.median(level[(ts > end - 120_000) & (ts <= end)])
        frac = (end - lb.start_ms) / (lb.extra["rise_end_ms"] - lb.start_ms)
        assert end_level - start_level == pytest.approx(lb.extra["rise_m"] * frac, abs=0.08)


def test_cover_displaced(sim_run: SimRun) -> None:
    for lb in _observed(sim_run, FaultKind.COVER_DISPLACED):
        ts, f = sim_run.rows(SW, lb.device)
        tilt = f["tilt_deg"]
        assert tilt[(ts < lb.start_ms) & _quiet(sim_run, lb.device, ts)].max() < 2.5
        inside = tilt[(ts >= lb.start_ms) & (ts < lb.end_ms)]
        assert inside.size and (inside > 14).all()
    b = sim_run.readings[SW]
    tilted = b.fields["tilt_deg"] > 5
    assert not (tilted & ~_inside(sim_run, SW, FaultKind.COVER_DISPLACED)).any()


def _track(run: SimRun, lb: FaultLabel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ts, f = run.rows(HF, lb.device)
    m = f["track_id"] == lb.extra["track_id"]
    return ts[m] / 1000, f["height_m"][m], f["horizontal_m"][m], f["end"][m]


def test_falling_object_tracks_are_ballistic_from_the_labelled_floor(sim_run: SimRun) -> None:
    labels = _observed(sim_run, FaultKind.FALLING_OBJECT, at_least=10)
    good = 0
    for lb in labels:
        t, h, _, end = _track(sim_run, lb)
        assert t.size == lb.extra["n_points"] >= 5
        assert end[-1] == 1 and (end[:-1] == 0).all()
        assert lb.start_ms / 1000 < t[0] and t[-1] * 1000 <= lb.end_ms
        assert np.all(np.diff(t) > 0.03) and np.all(np.diff(t) < 0.11)
        fh = lb.extra["floor_height_m"]
        assert lb.extra["release_height_m"] == pytest.approx(
            (lb.extra["origin_floor"] - 1) * fh + lb.extra["sill_m"]
        )
        c2, c1, c0 = np.polyfit(t - t[0], h, 2)
        if t[-1] - t[0] > 1.0:  # shorter tracks measure g too loosely to pin here
            assert -2 * c2 == pytest.approx(9.81, abs=2.5)
        apex = c0 - c1 * c1 / (4 * c2)
        floor = round((apex - lb.extra["sill_m"]) / fh) + 1
        good += abs(floor - lb.extra["origin_floor"]) <= 1
    assert good >= 0.95 * len(labels)


@pytest.mark.parametrize(
    "fault", [FaultKind.BIRD, FaultKind.LEAF, FaultKind.INSECT, FaultKind.RAIN_STREAK]
)
def test_distractors_are_not_ballistic(sim_run: SimRun, fault: FaultKind) -> None:
    labels = _observed(sim_run, fault, at_least=5)
    ballistic = 0
    for lb in labels:
        t, h, _, end = _track(sim_run, lb)
        assert t.size == lb.extra["n_points"] >= 3 and end[-1] == 1
        if t.size >= 5:
            c2, c1, _ = np.polyfit(t - t[0], h, 2)
            ballistic += abs(-2 * c2 - 9.81) < 2.5 and c1 < -0.5
        if fault is FaultKind.LEAF:
            assert (h[0] - h[-1]) / (t[-1] - t[0]) < 3.0
        if fault is FaultKind.RAIN_STREAK and t.size >= 5:
            assert 5.0 < -np.polyfit(t, h, 1)[0] < 10.0
        if fault is FaultKind.INSECT:
            assert t[-1] - t[0] < 1.1
    assert ballistic <= 0.1 * len(labels)


def test_heartbeats_and_tracks(sim_run: SimRun) -> None:
    b = sim_run.readings[HF]
    hb = b.fields["track_id"] == 0
    assert np.isnan(b.fields["height_m"][hb]).all() and np.isnan(b.fields["end"][hb]).all()
    tracks = [lb for lb in sim_run.labels if "track_id" in lb.extra]
    done = sum(lb.extra["n_points"] for lb in tracks if lb.extra["last_point_ms"] <= sim_run.end_ms)
    cut = sum(lb.extra["n_points"] for lb in tracks if lb.extra["last_point_ms"] > sim_run.end_ms)
    assert done <= (~hb).sum() <= done + cut  # a track running past the end is partly out
