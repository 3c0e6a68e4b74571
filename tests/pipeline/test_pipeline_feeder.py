from __future__ import annotations

import time

import pytest

from gridwatch.domain import DeviceKind
from gridwatch.pipeline.feeder import DEMO_FAULTS, DemoInjector, ScaledClock, demo_events
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.faults import FaultKind


def test_demo_events_cover_every_kind_early_and_repeat_with_the_seed(
    small_registry: Registry,
) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=5))
    events = demo_events(sim)
    kinds = {ev.kind for ev in events}
    assert kinds == {f for _, f, _ in DEMO_FAULTS}
    assert {ev.dev_kind for ev in events} == set(DeviceKind)
    assert all(sim.now_ms < ev.start_ms <= sim.now_ms + 15_000 for ev in events)
    again = demo_events(FleetSim(small_registry, SimSpec(seed=5)))
    assert [(e.device, e.kind, e.start_ms - events[0].start_ms) for e in again] == [
        (e.device, e.kind, e.start_ms - events[0].start_ms) for e in events
    ]


def test_injected_faults_are_labelled_like_the_simulators_own(small_registry: Registry) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=5))
    inj = DemoInjector(sim, demo_events(sim))
    while sim.now_ms < sim.spec.start_ms + 120_000:
        inj.before_step()
        sim.advance(sim.now_ms + 500)
    assert not inj.pending
    kinds = {lb.kind for lb in sim.labels}
    # covers and falling objects start at once; cars need a trip, some find one in 2 min
    assert FaultKind.COVER_DISPLACED.value in kinds
    assert FaultKind.FALLING_OBJECT.value in kinds
    assert inj.activated + inj.dropped == sum(n for _, _, n in DEMO_FAULTS)


def test_scaled_clock_runs_faster_than_the_wall() -> None:
    c = ScaledClock(1_000_000, 50.0)
    t0 = c.now_ms()
    time.sleep(0.1)
    assert c.now_ms() - t0 >= 4_000  # 0.1 s at x50
    with pytest.raises(ValueError, match="speed must be > 0"):
        ScaledClock(0, 0)
