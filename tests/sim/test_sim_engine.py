"""FleetSim's contract: what ``advance`` returns, determinism, labels and the truth file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gridwatch.batch import ReadingBatch
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.faults import DEFAULT_RATES, FaultKind, FaultLabel, read_truth, resolve_rates
from sim.fleet import FleetSpec, build_fleet


def _run(registry: Registry, spec: SimSpec, steps_ms: list[int]) -> list[ReadingBatch]:
    sim = FleetSim(registry, spec)
    parts: dict[DeviceKind, list[ReadingBatch]] = {k: [] for k in DeviceKind}
    for step in steps_ms:
        for b in sim.advance(sim.now_ms + step):
            parts[b.kind].append(b)
    return [ReadingBatch.concat(parts[k]) for k in DeviceKind]


def _same(a: list[ReadingBatch], b: list[ReadingBatch]) -> bool:
    for x, y in zip(a, b, strict=True):
        if not (np.array_equal(x.device, y.device) and np.array_equal(x.ts_ms, y.ts_ms)):
            return False
        for k in x.fields:
            if not np.array_equal(x.fields[k], y.fields[k], equal_nan=True):
                return False
    return True


def test_advance_returns_one_batch_per_kind_with_the_contract_fields(
    small_registry: Registry,
) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=1))
    start = sim.now_ms
    batches = sim.advance(start + 30_000)
    assert [b.kind for b in batches] == list(DeviceKind)
    for b in batches:
        assert len(b) > 0
        assert list(b.fields) == [f.name for f in FIELDS[b.kind]]
        for spec in FIELDS[b.kind]:
            col = b.fields[spec.name]
            assert col.dtype == np.dtype(spec.dtype)
            vals = col[~np.isnan(col)] if col.dtype.kind == "f" else col
            assert (vals >= spec.lo).all() and (vals <= spec.hi).all(), spec.name
            if spec.required:
                assert not (col.dtype.kind == "f" and np.isnan(col).any()), spec.name
        assert b.device.dtype == np.int32 and b.ts_ms.dtype == np.int64
        assert (b.ts_ms > start).all() and (b.ts_ms <= start + 30_000).all()
        assert (small_registry.kind[b.device] == b.kind.code).all()
    assert sim.now_ms == start + 30_000


def test_rows_of_a_device_are_in_time_order(small_registry: Registry) -> None:
    for b in _run(small_registry, SimSpec(seed=2), [7_300] * 40):
        order = np.lexsort((np.arange(len(b)), b.device))
        dev, ts = b.device[order], b.ts_ms[order]
        same = dev[1:] == dev[:-1]
        assert (np.diff(ts)[same] > 0).all()


def test_every_device_reports(small_registry: Registry) -> None:
    batches = _run(small_registry, SimSpec(seed=3), [60_000])
    seen = np.unique(np.concatenate([b.device for b in batches]))
    assert seen.size == len(small_registry)


def test_moving_elevators_report_every_second(small_registry: Registry) -> None:
    el = _run(small_registry, SimSpec(seed=4), [300_000])[0]
    moving = np.abs(el.fields["speed_mps"]) > 0.2
    order = np.lexsort((el.ts_ms, el.device))
    dev, ts, mv = el.device[order], el.ts_ms[order], moving[order]
    nxt = (dev[1:] == dev[:-1]) & mv[:-1]
    assert nxt.sum() > 1000
    assert (np.diff(ts)[nxt] == 1000).all()


def test_same_seed_same_output_whatever_the_steps(small_registry: Registry) -> None:
    spec = SimSpec(seed=11, fault_scale=20, warmup_s=0)
    a = _run(small_registry, spec, [1_000] * 600)
    b = _run(small_registry, spec, [137_000, 263_000, 200_000])
    assert _same(a, b)
    c = _run(small_registry, SimSpec(seed=12, fault_scale=20, warmup_s=0), [600_000])
    assert not _same(a, c)


def test_same_seed_same_labels(small_registry: Registry) -> None:
    def labels(steps: list[int]) -> list[FaultLabel]:
        sim = FleetSim(small_registry, SimSpec(seed=5, fault_scale=30, warmup_s=0))
        for s in steps:
            sim.advance(sim.now_ms + s)
        return sim.labels

    a, b = labels([900_000]), labels([10_000] * 90)
    assert a == b and len(a) > 20


def test_labels_so_far_and_warmup(small_registry: Registry) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=6, fault_scale=30, warmup_s=300))
    sim.advance(sim.now_ms + 900_000)
    labels = sim.labels
    assert labels and all(lb.start_ms <= sim.now_ms for lb in labels)
    assert all(lb.start_ms >= sim.spec.start_ms + 300_000 for lb in labels if lb.is_fault)
    assert [lb.start_ms for lb in labels] == sorted(lb.start_ms for lb in labels)


def test_no_faults_when_scaled_to_zero(small_registry: Registry) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=6, fault_scale=0, warmup_s=0))
    sim.advance(sim.now_ms + 1_800_000)
    assert sim.labels == []


def test_write_truth_round_trips(small_registry: Registry, tmp_path: Path) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=7, fault_scale=30, warmup_s=0))
    sim.advance(sim.now_ms + 1_200_000)
    path = tmp_path / "truth.jsonl"
    n = sim.write_truth(path)
    back = read_truth(path)
    assert n == len(back) == len(sim.labels) > 0
    assert back == sim.labels
    assert {lb.kind for lb in back} <= {k.value for k in FaultKind}


def test_read_truth_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"device": 1}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:1: not a fault label"):
        read_truth(path)


def test_cannot_go_back_in_time(small_registry: Registry) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=1))
    sim.advance(sim.now_ms + 5_000)
    with pytest.raises(ValueError, match="cannot go back in time"):
        sim.advance(sim.now_ms - 1)
    assert all(len(b) == 0 for b in sim.advance(sim.now_ms))


def test_a_fleet_of_one_kind() -> None:
    reg = build_fleet(FleetSpec(n_devices=200, mix=(0.0, 1.0, 0.0), seed=1))
    sim = FleetSim(reg, SimSpec(seed=1, fault_scale=0))
    el, sw, hf = sim.advance(sim.now_ms + 600_000)
    assert len(el) == 0 and len(hf) == 0 and len(sw) == 200 * 60  # every 10 s, none lost


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rates": {"sewage.bogus": 1.0}}, r"unknown fault rate 'sewage.bogus'"),
        ({"rates": {"sewage.overflow": -1.0}}, r"must be >= 0 per device-hour, got -1.0"),
        ({"fault_scale": -2}, r"scale must be >= 0, got -2"),
        ({"warmup_s": -1}, r"warmup_s must be >= 0"),
        ({"start_ms": -5}, r"start_ms must be epoch milliseconds"),
    ],
)
def test_bad_spec_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SimSpec(**kwargs)


def test_rates_resolve_with_overrides_and_scale() -> None:
    rates = resolve_rates({"sewage.overflow": 0.5}, scale=2)
    assert rates[(DeviceKind.SEWAGE, FaultKind.OVERFLOW)] == 1.0
    assert (
        rates[(DeviceKind.ELEVATOR, FaultKind.ENTRAPMENT)]
        == 2 * DEFAULT_RATES[(DeviceKind.ELEVATOR, FaultKind.ENTRAPMENT)]
    )


def test_default_rates_give_dozens_of_each_fault_in_the_evaluation_replay() -> None:
    """50,000 devices for two hours (the detectors' evaluation) hold >= 30 of every fault."""
    spec = FleetSpec(n_devices=50_000)
    counts = spec.counts()
    per_fault: dict[FaultKind, float] = {}
    for (kind, fault), rate in DEFAULT_RATES.items():
        if fault.is_fault:
            hours = 2 - 600 / 3600  # faults start after the 10-minute warm-up
            per_fault[fault] = per_fault.get(fault, 0) + rate * counts[kind] * hours
    assert min(per_fault.values()) >= 30, per_fault
