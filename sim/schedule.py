"""When and where events happen: a Poisson draw per chunk of simulated time.

Events are drawn per 10-minute chunk from a generator seeded by ``(seed, chunk)``, so a
fixed seed gives the same faults whatever the step size of the caller. Each event
carries its own ``seed`` from which the device model draws the event's details
(duration, magnitude, track) when the event fires: changing one model's physics never
shifts another model's random stream.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gridwatch.domain import DeviceKind
from sim.faults import FaultKind
from sim.weather import CHUNK_MS, Weather

DRY_BEFORE_MS = 3_600_000
"""A blockage starts only where no storm fell in the hour before (dry weather, drained)..."""
DRY_AFTER_MS = 3_600_000
"""... nor falls in the hour after: the first hour of its rise is in dry weather."""


@dataclass(frozen=True, slots=True, order=True)
class Event:
    """One scheduled fault or distractor; ``seed`` drives its details."""

    start_ms: int
    order: int
    device: int = field(compare=False)
    dev_kind: DeviceKind = field(compare=False)
    kind: FaultKind = field(compare=False)
    seed: int = field(compare=False)


class Scheduler:
    """Draws events chunk by chunk and hands them out in start order."""

    def __init__(
        self,
        devices: Mapping[DeviceKind, npt.NDArray[np.int32]],
        device_street: npt.NDArray[np.int32],
        rates: Mapping[tuple[DeviceKind, FaultKind], float],
        weather: Weather,
        *,
        seed: int,
        start_ms: int,
        warmup_ms: int,
    ) -> None:
        self._devices = devices
        self._street = device_street
        # Sorted so that the draw order (and so the result) never depends on dict order.
        self._rates = sorted(
            ((k, f, r) for (k, f), r in rates.items() if r > 0),
            key=lambda x: (x[0].value, x[1].value),
        )
        self._weather = weather
        self._seed = seed
        self._origin_ms = start_ms
        self._faults_from_ms = start_ms + warmup_ms
        self._chunks_done = 0
        self._queue: list[Event] = []
        self._order = 0

    def pop_until(self, t_ms: int) -> list[Event]:
        """Every event starting at or before ``t_ms``, in start order."""
        while self._origin_ms + self._chunks_done * CHUNK_MS <= t_ms:
            self._draw_chunk(self._chunks_done)
            self._chunks_done += 1
        out = []
        while self._queue and self._queue[0].start_ms <= t_ms:
            out.append(heapq.heappop(self._queue))
        return out

    def _draw_chunk(self, c: int) -> None:
        rng = np.random.default_rng([self._seed, 1, c])
        t0 = self._origin_ms + c * CHUNK_MS
        events: list[tuple[int, int, DeviceKind, FaultKind, int]] = []
        for dev_kind, fault, rate in self._rates:
            pool = self._devices.get(dev_kind)
            if pool is None or pool.size == 0:
                continue
            n = int(rng.poisson(rate * pool.size * CHUNK_MS / 3_600_000))
            devs = pool[rng.integers(0, pool.size, n)]
            starts = t0 + rng.integers(0, CHUNK_MS, n)
            seeds = rng.integers(0, 2**63 - 1, n)
            for dev, start, s in zip(devs.tolist(), starts.tolist(), seeds.tolist(), strict=True):
                if fault.is_fault and start < self._faults_from_ms:
                    continue
                dev = self._placed(fault, dev, start, pool, rng)
                if dev is not None:
                    events.append((start, dev, dev_kind, fault, s))
        events.sort(key=lambda e: (e[0], e[1], e[3].value))
        for when, dev, dev_kind, fault, s in events:
            heapq.heappush(self._queue, Event(when, self._order, dev, dev_kind, fault, s))
            self._order += 1

    def _placed(
        self,
        fault: FaultKind,
        dev: int,
        start: int,
        pool: npt.NDArray[np.int32],
        rng: np.random.Generator,
    ) -> int | None:
        """The device for the event honouring its weather condition, or None to drop it.

        A blockage that would fall in wet weather moves to another manhole (most likely
        on another street) rather than to another time, so the start times stay uniform.
        """
        if fault is FaultKind.RAIN_STREAK:
            where = np.array([self._street[dev]], np.int32)
            wet = self._weather.rain_at(where, np.array([start], np.int64))[0] > 0.5
            return dev if wet else None
        if fault is FaultKind.BLOCKAGE:
            for _ in range(24):
                street = int(self._street[dev])
                if self._weather.dry(street, start - DRY_BEFORE_MS, start + DRY_AFTER_MS):
                    return dev
                dev = int(pool[rng.integers(0, pool.size)])
            return None
        return dev
