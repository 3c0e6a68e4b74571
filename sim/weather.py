"""Rain over the district, one series per street, generated lazily and reproducibly.

Rain is what makes manhole levels rise for a good reason: a storm over a street lifts
every manhole of that street together, then the network drains. A detector that tells
an overflow or a blockage from rain needs exactly that contrast, so the same storm
drives the rain gauges (``rain_mmph``) and the levels.

Storms are drawn per 10-minute chunk of simulated time from a generator seeded by
``(seed, chunk)``, so the weather at a given time never depends on how the simulation
was stepped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CHUNK_MS = 600_000
"""Events (storms, faults) are drawn per chunk of this many ms of simulated time."""

RUNOFF_TAU_S = 900.0
"""Time constant of the drainage response: levels follow rain with a ~15 min lag."""


@dataclass(frozen=True, slots=True)
class RainSpec:
    """Storms per street-hour, their duration and peak intensity ranges."""

    per_street_hour: float = 0.25
    duration_s: tuple[float, float] = (1200.0, 5400.0)
    peak_mmph: tuple[float, float] = (5.0, 50.0)

    def __post_init__(self) -> None:
        if not self.per_street_hour >= 0:
            raise ValueError(f"rain per_street_hour must be >= 0, got {self.per_street_hour}")
        lo, hi = self.duration_s
        if not 0 < lo <= hi:
            raise ValueError(f"rain duration_s must be 0 < lo <= hi, got {self.duration_s}")
        lo, hi = self.peak_mmph
        if not 0 <= lo <= hi <= 400:
            raise ValueError(f"rain peak_mmph must be 0 <= lo <= hi <= 400, got {self.peak_mmph}")


class Weather:
    """Storm events per street and the drainage runoff they cause.

    A storm's intensity is ``peak * sin^2(pi * (t - start) / duration)``: it builds up,
    peaks mid-way and stops, with no step a gauge could not follow. ``runoff`` is rain
    through a first-order filter (``RUNOFF_TAU_S``), advanced once per simulation tick.
    """

    def __init__(self, n_streets: int, spec: RainSpec, seed: int, start_ms: int) -> None:
        self.n_streets = n_streets
        self.spec = spec
        self._seed = seed
        self._origin_ms = start_ms
        self._chunks_done = 0
        self._street = np.zeros(0, np.int32)
        self._start = np.zeros(0, np.int64)
        self._end = np.zeros(0, np.int64)
        self._peak = np.zeros(0, np.float64)
        self.runoff = np.zeros(n_streets, np.float64)
        self._runoff_ms = start_ms

    def ensure(self, until_ms: int) -> None:
        """Draw every storm that starts before ``until_ms``."""
        while self._origin_ms + self._chunks_done * CHUNK_MS < until_ms:
            c = self._chunks_done
            rng = np.random.default_rng([self._seed, 0, c])
            lam = self.spec.per_street_hour * CHUNK_MS / 3_600_000
            counts = rng.poisson(lam, self.n_streets)
            n = int(counts.sum())
            street = np.repeat(np.arange(self.n_streets, dtype=np.int32), counts)
            start = self._origin_ms + c * CHUNK_MS + rng.integers(0, CHUNK_MS, n)
            dur = rng.uniform(*self.spec.duration_s, n) * 1000
            peak = rng.uniform(*self.spec.peak_mmph, n)
            self._street = np.concatenate([self._street, street])
            self._start = np.concatenate([self._start, start.astype(np.int64)])
            self._end = np.concatenate([self._end, (start + dur).astype(np.int64)])
            self._peak = np.concatenate([self._peak, peak])
            self._chunks_done += 1

    def rain(self, t_ms: int) -> npt.NDArray[np.float64]:
        """Rain intensity per street at ``t_ms`` (mm/h)."""
        self.ensure(t_ms + 1)
        out = np.zeros(self.n_streets, np.float64)
        on = np.flatnonzero((self._start <= t_ms) & (self._end > t_ms))
        if on.size:
            phase = (t_ms - self._start[on]) / (self._end[on] - self._start[on])
            np.add.at(out, self._street[on], self._peak[on] * np.sin(math.pi * phase) ** 2)
        return out

    def rain_at(
        self, street: npt.NDArray[np.int32], t_ms: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Rain for (street, time) pairs; used where exact per-reading times matter."""
        out = np.zeros(street.shape[0], np.float64)
        if street.size:
            self.ensure(int(t_ms.max()) + 1)
        for k in np.flatnonzero(self._end > (t_ms.min() if t_ms.size else 0)).tolist():
            sel = (street == self._street[k]) & (t_ms >= self._start[k]) & (t_ms < self._end[k])
            if sel.any():
                phase = (t_ms[sel] - self._start[k]) / (self._end[k] - self._start[k])
                out[sel] += self._peak[k] * np.sin(math.pi * phase) ** 2
        return out

    def step(self, t_ms: int) -> npt.NDArray[np.float64]:
        """Advance the runoff filter to ``t_ms``; returns the rain at ``t_ms``."""
        rain = self.rain(t_ms)
        dt = (t_ms - self._runoff_ms) / 1000
        if dt > 0:
            alpha = 1 - math.exp(-dt / RUNOFF_TAU_S)
            self.runoff += (rain - self.runoff) * alpha
            self._runoff_ms = t_ms
        return rain

    def dry(self, street: int, t0_ms: int, t1_ms: int) -> bool:
        """True when no storm touches ``street`` between ``t0_ms`` and ``t1_ms``."""
        self.ensure(t1_ms + 1)
        hit = (self._street == street) & (self._start < t1_ms) & (self._end > t0_ms)
        return not bool(hit.any())

    def storms(self) -> list[dict[str, float]]:
        """Every storm drawn so far, for the ground-truth file and the docs."""
        return [
            {"street": int(s), "start_ms": int(a), "end_ms": int(b), "peak_mmph": float(p)}
            for s, a, b, p in zip(
                self._street.tolist(),
                self._start.tolist(),
                self._end.tolist(),
                self._peak.tolist(),
                strict=True,
            )
        ]
