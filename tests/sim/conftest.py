"""Fixtures of the simulator tests: one seeded run with dense faults, shared by the truth tests."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.faults import FaultLabel
from sim.fleet import FleetSpec, build_fleet
from sim.weather import RainSpec

RUN_S = 2 * 3600


@dataclass(frozen=True)
class SimRun:
    registry: Registry
    sim: FleetSim
    readings: dict[DeviceKind, ReadingBatch]
    labels: list[FaultLabel]
    end_ms: int

    def rows(self, kind: DeviceKind, device: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        b = self.readings[kind]
        m = b.device == device
        return b.ts_ms[m], {k: v[m] for k, v in b.fields.items()}

    def of(self, kind: str) -> list[FaultLabel]:
        return [lb for lb in self.labels if lb.kind == kind]


@pytest.fixture(scope="session")
def sim_run() -> SimRun:
    """3,000 devices for two simulated hours with fault rates x15: every kind shows up."""
    # small grids, so that the district has several streets: some wet, some dry
    seed = int(os.environ.get("GRIDWATCH_SIM_TEST_SEED", "5"))  # other seeds: a robustness check
    registry = build_fleet(FleetSpec(n_devices=3_000, devices_per_grid=50, seed=seed))
    # storms a little more often than the default, so that two hours always see some
    sim = FleetSim(registry, SimSpec(seed=seed, fault_scale=15, rain=RainSpec(per_street_hour=0.4)))
    parts: dict[DeviceKind, list[ReadingBatch]] = {k: [] for k in DeviceKind}
    end = sim.now_ms + RUN_S * 1000
    while sim.now_ms < end:
        for b in sim.advance(sim.now_ms + 30_000):
            parts[b.kind].append(b)
    readings = {k: ReadingBatch.concat(v) for k, v in parts.items()}
    return SimRun(registry, sim, readings, sim.labels, end)
