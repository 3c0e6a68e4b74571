"""The quality evaluation of ``bench/quality.py``, smaller, with fixed seeds.

Same replay, same matching rules, same thresholds (``detectors.evaluate.ACCEPTANCE``);
a smaller fleet with the fault rates scaled up so that every fault kind still has dozens
of labelled events in two simulated hours.
"""

from __future__ import annotations

import pytest

from detectors.config import load_config
from detectors.detectorset import DetectorSet
from detectors.evaluate import checks, evaluate, replay
from sim.engine import FleetSim, SimSpec
from sim.fleet import FleetSpec, build_fleet


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "devices", "scale"), [(7, 3_000, 10.0), (2026, 3_000, 10.0)])
def test_labelled_faults_are_found_with_the_acceptance_quality(
    seed: int, devices: int, scale: float
) -> None:
    reg = build_fleet(FleetSpec(n_devices=devices, seed=seed))
    sim = FleetSim(reg, SimSpec(seed=seed, fault_scale=scale))
    ds = DetectorSet(reg, load_config())
    end = sim.now_ms + 2 * 3_600_000
    det, readings = replay(ds, sim.advance, sim.now_ms, end)
    result = evaluate(det, sim.labels, end)
    assert readings > 0
    for fault, r in result["per_fault"].items():
        assert r["labels"] >= 10, f"{fault}: too few labelled events to judge ({r['labels']})"
    failed = {
        k: result["per_fault"].get(k.split(".")[0]) for k, ok in checks(result).items() if not ok
    }
    assert not failed, failed
    # the headline figures, spelled out
    assert result["entrapment_latency_max_s"] <= 45.0
    assert result["overflow"]["lead_ge_600s_share"] >= 0.9
    fo = result["falling_object"]
    assert fo["recall"] >= 0.95 and fo["distractor_fp_rate"] <= 0.01
    assert fo["floor_within_1_share"] >= 0.9
