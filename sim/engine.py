"""The fleet simulator: readings of a whole district, with labelled faults, from numpy.

``FleetSim.advance(until_ms)`` returns every reading with a timestamp in
``(now_ms, until_ms]``, one ``ReadingBatch`` per device kind. Internally time moves in
1-second ticks (an elevator's reporting rate while moving); each tick updates every
device of a kind with a handful of array operations, so the cost is per tick and per
reading, never per device in Python. A tick's readings past ``until_ms`` wait for the
next call, which is why the output does not depend on how a caller steps time.

>>> from sim.fleet import FleetSpec, build_fleet
>>> sim = FleetSim(build_fleet(FleetSpec(n_devices=300, seed=1)), SimSpec(seed=1))
>>> [len(b) > 0 for b in sim.advance(sim.now_ms + 60_000)]
[True, True, True]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from sim.elevator import ElevatorModel
from sim.faults import FaultLabel, LabelBook, resolve_rates, write_truth
from sim.highfall import CameraModel
from sim.schedule import Event, Scheduler
from sim.sewage import SewageModel
from sim.weather import RainSpec, Weather

TICK_MS = 1000
DEFAULT_START_MS = 1_780_000_000_000
"""2026-05-28T20:26:40Z: a fixed default so a seed alone reproduces a run."""


@dataclass(frozen=True, slots=True)
class SimSpec:
    """What to simulate besides the fleet itself.

    ``rates`` overrides fault rates per device-hour by key ``"kind.fault"``
    (``sim.faults.DEFAULT_RATES``); ``fault_scale`` multiplies all of them (0 disables
    faults). No fault starts in the first ``warmup_s``, so detectors can learn baselines.
    ``call_gap_s`` is the mean idle time of an elevator between hall calls.
    """

    seed: int = 20261126
    start_ms: int = DEFAULT_START_MS
    rates: Mapping[str, float] = field(default_factory=dict)
    fault_scale: float = 1.0
    warmup_s: float = 600.0
    rain: RainSpec = field(default_factory=RainSpec)
    call_gap_s: float = 90.0

    def __post_init__(self) -> None:
        if not 0 <= self.start_ms < 10**15:
            raise ValueError(f"start_ms must be epoch milliseconds, got {self.start_ms}")
        if not self.warmup_s >= 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")
        if not self.call_gap_s > 0:
            raise ValueError(f"call_gap_s must be > 0, got {self.call_gap_s}")
        resolve_rates(self.rates, self.fault_scale)  # raises on a bad key or value


class _Model(Protocol):
    def activate(self, ev: Event) -> bool: ...


class FleetSim:
    """A district's devices, their physics and injected faults; see the module docstring."""

    def __init__(self, registry: Registry, spec: SimSpec | None = None) -> None:
        spec = spec or SimSpec()
        self.registry = registry
        self.spec = spec
        self.now_ms: int = spec.start_ms
        self._t = spec.start_ms  # start of the next tick to generate
        rng = np.random.default_rng([spec.seed, 3])
        self._rng = np.random.default_rng([spec.seed, 4])
        street = registry.community_street[registry.grid_community[registry.device_grid]]
        self.device_street = street.astype(np.int32)
        self.book = LabelBook(registry.device_ids)
        self.weather = Weather(int(registry.street_ids.size), spec.rain, spec.seed, spec.start_ms)
        self.elevators = ElevatorModel(registry, rng, spec.start_ms, self.book, spec.call_gap_s)
        self.sewage = SewageModel(
            registry, self.device_street, rng, spec.start_ms, self.book, weather=self.weather
        )
        self.cameras = CameraModel(registry, rng, spec.start_ms, self.book)
        self._models: dict[DeviceKind, _Model] = {
            DeviceKind.ELEVATOR: self.elevators,
            DeviceKind.SEWAGE: self.sewage,
            DeviceKind.HIGHFALL: self.cameras,
        }
        self.scheduler = Scheduler(
            {k: registry.devices_of_kind(k) for k in DeviceKind},
            self.device_street,
            resolve_rates(spec.rates, spec.fault_scale),
            self.weather,
            seed=spec.seed,
            start_ms=spec.start_ms,
            warmup_ms=int(spec.warmup_s * 1000),
        )
        self._pending: dict[DeviceKind, list[ReadingBatch]] = {k: [] for k in DeviceKind}
        self.events_dropped = 0

    @property
    def labels(self) -> list[FaultLabel]:
        """Ground truth of every fault and distractor that started by ``now_ms``."""
        return self.book.labels(self.now_ms)

    def advance(self, until_ms: int) -> list[ReadingBatch]:
        """Every reading with ``now_ms < ts <= until_ms``: one batch per kind, kind order."""
        if until_ms < self.now_ms:
            raise ValueError(f"cannot go back in time: until_ms {until_ms} < now_ms {self.now_ms}")
        while self._t < until_ms:
            self._tick(self._t)
            self._t += TICK_MS
        out = []
        for kind in DeviceKind:
            parts = self._pending[kind]
            if not parts:
                out.append(ReadingBatch.empty(kind))
                continue
            batch = parts[0] if len(parts) == 1 else ReadingBatch.concat(parts)
            later = batch.ts_ms > until_ms
            if later.any():
                self._pending[kind] = [batch.take(later)]
                batch = batch.take(~later)
            else:
                self._pending[kind] = []
            out.append(batch)
        self.now_ms = until_ms
        return out

    def _tick(self, t0: int) -> None:
        for ev in self.scheduler.pop_until(t0 + TICK_MS):
            if not self._models[ev.dev_kind].activate(ev):
                self.events_dropped += 1
        rng = self._rng
        for kind, batch in (
            (DeviceKind.ELEVATOR, self.elevators.tick(t0, rng)),
            (DeviceKind.SEWAGE, self.sewage.tick(t0, rng, self.weather)),
            (DeviceKind.HIGHFALL, self.cameras.tick(t0, rng)),
        ):
            if len(batch):
                self._pending[kind].append(batch)

    def write_truth(self, path: str | Path) -> int:
        """Write ``labels`` as JSON lines (``sim.faults.FaultLabel``); returns how many."""
        return write_truth(self.labels, path)
