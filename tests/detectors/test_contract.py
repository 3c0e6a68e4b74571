"""One contract, every detector: what any stage feeding or reading them may rely on.

Input is never mutated; the same input gives the same output; state round-trips through
``state()``/``load_state()`` (and through an ``.npz`` file); an empty batch changes
nothing; NaN never crashes or leaks into scores; several readings of one device in a
batch, any shuffle that keeps each device's own order, and any split of a batch give the
same state as the whole batch at once (hypothesis).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.config import load_config
from detectors.detectorset import DetectorSet
from detectors.elevator import ElevatorDetector
from detectors.generic import GenericDetector
from detectors.highfall import HighfallDetector
from detectors.sewage import SewageDetector
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.fleet import FleetSpec, build_fleet

CFG = load_config()


@pytest.fixture(scope="module")
def reg() -> Registry:
    return build_fleet(FleetSpec(n_devices=1_200, seed=11))


@pytest.fixture(scope="module")
def stream(reg: Registry) -> dict[DeviceKind, ReadingBatch]:
    """Four simulated minutes with many faults, one batch per kind (devices repeat)."""
    sim = FleetSim(reg, SimSpec(seed=5, warmup_s=0, fault_scale=200))
    parts: dict[DeviceKind, list[ReadingBatch]] = {k: [] for k in DeviceKind}
    for _ in range(24):
        for b in sim.advance(sim.now_ms + 10_000):
            parts[b.kind].append(b)
    return {k: ReadingBatch.concat(v) for k, v in parts.items()}


Factory = Callable[[Registry], Any]
FACTORIES: dict[str, tuple[DeviceKind | None, Factory]] = {
    "elevator": (DeviceKind.ELEVATOR, lambda r: ElevatorDetector(r, CFG.elevator)),
    "sewage": (DeviceKind.SEWAGE, lambda r: SewageDetector(r, CFG.sewage)),
    "highfall": (DeviceKind.HIGHFALL, lambda r: HighfallDetector(r, CFG.highfall)),
    "generic_elevator": (
        DeviceKind.ELEVATOR,
        lambda r: GenericDetector(r, DeviceKind.ELEVATOR, CFG.generic),
    ),
    "generic_sewage": (
        DeviceKind.SEWAGE,
        lambda r: GenericDetector(r, DeviceKind.SEWAGE, CFG.generic),
    ),
    "generic_highfall": (
        DeviceKind.HIGHFALL,
        lambda r: GenericDetector(r, DeviceKind.HIGHFALL, CFG.generic),
    ),
    "detectorset": (None, lambda r: DetectorSet(r, CFG)),
}
NAMES = sorted(FACTORIES)


def batches_for(name: str, stream: dict[DeviceKind, ReadingBatch]) -> list[ReadingBatch]:
    kind = FACTORIES[name][0]
    return [stream[kind]] if kind is not None else [stream[k] for k in DeviceKind]


def feed(det: Any, batches: list[ReadingBatch], tick_ms: int | None = None) -> Detections:
    out = [det.update(b) for b in batches]
    if tick_ms is not None:
        out.append(det.tick(tick_ms))
    return Detections.concat(out)


def canon(d: Detections) -> dict[str, np.ndarray]:
    """Detections in a canonical row order, for comparing as multisets."""
    order = np.lexsort((d.score, d.ts_ms, d.kind, d.device))
    out = {"device": d.device[order], "kind": d.kind[order], "ts": d.ts_ms[order]}
    out["score"] = d.score[order]
    for k, v in d.evidence.items():
        out[f"ev.{k}"] = v[order]
    return out


def assert_same_detections(a: Detections, b: Detections) -> None:
    ca, cb = canon(a), canon(b)
    assert set(ca) == set(cb)
    for k in ca:
        np.testing.assert_allclose(ca[k], cb[k], rtol=1e-9, err_msg=k) if ca[
            k
        ].dtype.kind == "f" else (np.testing.assert_array_equal(ca[k], cb[k], err_msg=k))


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k, va in a.items():
        assert va.dtype == b[k].dtype, k
        np.testing.assert_array_equal(va, b[k], err_msg=k)


def copy_batch(b: ReadingBatch) -> ReadingBatch:
    return ReadingBatch(
        b.kind, b.device.copy(), b.ts_ms.copy(), {k: v.copy() for k, v in b.fields.items()}
    )


def keep_device_order_shuffle(b: ReadingBatch, seed: int) -> ReadingBatch:
    """A random interleaving of devices that keeps each device's readings in order."""
    rng = np.random.default_rng(seed)
    key = rng.random(len(b))
    order = np.lexsort((np.arange(len(b)), key))
    # re-sort each device's rows into their original order within the new positions
    out = order.copy()
    for d in np.unique(b.device):
        pos = np.flatnonzero(b.device[order] == d)
        out[pos] = np.sort(order[pos])
    return b.take(out)


@pytest.mark.parametrize("name", NAMES)
def test_input_is_not_mutated(name: str, reg: Registry, stream: dict) -> None:
    batches = batches_for(name, stream)
    before = [copy_batch(b) for b in batches]
    feed(FACTORIES[name][1](reg), batches, tick_ms=int(max(b.ts_ms.max() for b in batches)))
    for b, c in zip(batches, before, strict=True):
        np.testing.assert_array_equal(b.device, c.device)
        np.testing.assert_array_equal(b.ts_ms, c.ts_ms)
        for k in b.fields:
            np.testing.assert_array_equal(b.fields[k], c.fields[k])


@pytest.mark.parametrize("name", NAMES)
def test_same_input_same_output(name: str, reg: Registry, stream: dict) -> None:
    batches = batches_for(name, stream)
    end = int(max(b.ts_ms.max() for b in batches)) + 60_000
    a, b = FACTORIES[name][1](reg), FACTORIES[name][1](reg)
    da, db = feed(a, batches, end), feed(b, batches, end)
    assert_same_detections(da, db)
    np.testing.assert_array_equal(da.device, db.device)  # same order too
    assert_same_state(a.state(), b.state())


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_mid_stream(name: str, reg: Registry, stream: dict) -> None:
    batches = batches_for(name, stream)
    halves = []
    for b in batches:
        cut = np.flatnonzero(b.ts_ms <= np.median(b.ts_ms))
        rest = np.flatnonzero(b.ts_ms > np.median(b.ts_ms))
        halves.append((b.take(cut), b.take(rest)))
    first, second = [h[0] for h in halves], [h[1] for h in halves]
    end = int(max(b.ts_ms.max() for b in batches)) + 5_000
    a = FACTORIES[name][1](reg)
    feed(a, first)
    b = FACTORIES[name][1](reg)
    b.load_state(a.state())
    assert_same_detections(feed(a, second, end), feed(b, second, end))
    assert_same_state(a.state(), b.state())


@pytest.mark.parametrize("name", NAMES)
def test_bad_state_is_refused_and_changes_nothing(name: str, reg: Registry, stream: dict) -> None:
    det = FACTORIES[name][1](reg)
    feed(det, batches_for(name, stream))
    good = det.state()
    broken = dict(good)
    key = sorted(k for k in good if not k.startswith("meta/"))[0]
    broken[key] = np.zeros(3, dtype=np.int8)
    with pytest.raises(ValueError, match="state"):
        det.load_state(broken)
    assert_same_state(det.state(), good)
    missing = {k: v for k, v in good.items() if k != key}
    with pytest.raises(ValueError, match=r"state|missing"):
        det.load_state(missing)


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_changes_nothing(name: str, reg: Registry, stream: dict) -> None:
    det = FACTORIES[name][1](reg)
    feed(det, batches_for(name, stream))
    before = det.state()
    kinds = [FACTORIES[name][0]] if FACTORIES[name][0] else list(DeviceKind)
    for k in kinds:
        assert len(det.update(ReadingBatch.empty(k))) == 0
    assert_same_state(det.state(), before)


@pytest.mark.parametrize("name", NAMES)
def test_nan_readings_never_crash_or_leak_into_scores(
    name: str, reg: Registry, stream: dict
) -> None:
    det = FACTORIES[name][1](reg)
    rng = np.random.default_rng(3)
    batches = []
    for b in batches_for(name, stream):
        fields = {}
        for k, v in b.fields.items():
            v = v.copy()
            if v.dtype.kind == "f":
                v[rng.random(v.size) < 0.2] = np.nan
            fields[k] = v
        batches.append(ReadingBatch(b.kind, b.device, b.ts_ms, fields))
    d = feed(det, batches, int(max(b.ts_ms.max() for b in batches)))
    assert np.isfinite(d.score).all()
    assert ((d.score >= 0) & (d.score <= 1)).all()


@pytest.mark.parametrize("name", NAMES)
def test_shuffled_devices_and_duplicates_give_the_same_result(
    name: str, reg: Registry, stream: dict
) -> None:
    batches = batches_for(name, stream)
    a, b = FACTORIES[name][1](reg), FACTORIES[name][1](reg)
    da = feed(a, batches)
    db = feed(b, [keep_device_order_shuffle(x, 1) for x in batches])
    assert_same_state(a.state(), b.state())
    if name not in ("sewage", "detectorset"):  # sewage: see test_split_gives_the_same_state
        assert_same_detections(da, db)


@pytest.mark.parametrize("name", NAMES)
def test_one_reading_per_device_per_batch_equals_all_at_once(
    name: str, reg: Registry, stream: dict
) -> None:
    # the same readings, batched by timestamp second (few repeats) vs all at once (many)
    batches = batches_for(name, stream)
    a, b = FACTORIES[name][1](reg), FACTORIES[name][1](reg)
    feed(a, batches)
    for x in batches:
        sec = x.ts_ms // 1000
        for s in np.unique(sec):
            b.update(x.take(np.flatnonzero(sec == s)))
    assert_same_state(a.state(), b.state())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
@pytest.mark.parametrize("name", NAMES)
def test_split_gives_the_same_state(
    name: str, reg: Registry, stream: dict, data: st.DataObject
) -> None:
    batches = batches_for(name, stream)
    a, b = FACTORIES[name][1](reg), FACTORIES[name][1](reg)
    feed(a, batches)
    for x in batches:
        n = len(x)
        cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=6), label="cuts")))
        edges = [0, *cuts, n]
        for lo, hi in itertools.pairwise(edges):
            b.update(x.take(np.arange(lo, hi)))
    # Sewage wetness is shared by a grid; a max over time, so it is order-free too.
    assert_same_state(a.state(), b.state())


def test_detectorset_checkpoint_file_round_trip(
    reg: Registry, stream: dict, tmp_path: Path
) -> None:
    a = DetectorSet(reg, CFG)
    feed(a, [stream[k] for k in DeviceKind])
    path = tmp_path / "detectors.npz"
    a.save(path)
    b = DetectorSet(reg, CFG)
    b.load(path)
    assert_same_state(a.state(), b.state())


def test_detectorset_refuses_another_registrys_checkpoint(
    reg: Registry, stream: dict, tmp_path: Path
) -> None:
    a = DetectorSet(reg, CFG)
    feed(a, [stream[k] for k in DeviceKind])
    path = tmp_path / "detectors.npz"
    a.save(path)
    other = DetectorSet(build_fleet(FleetSpec(n_devices=1_300, seed=11)), CFG)
    before = other.state()
    with pytest.raises(ValueError, match="belongs to another registry"):
        other.load(path)
    assert_same_state(other.state(), before)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a detector checkpoint"):
        other.load(tmp_path / "junk.npz")
