"""Manhole water level, cover tilt and rain gauge, for every manhole at once.

The level of a manhole is its dry-weather flow (``base``, a daily cycle of +/-15 %)
plus the street's storm runoff times the manhole's gain, plus 3 mm of sensor noise.
Gains are sized so that the worst storm lifts a manhole to at most 35 % of the way to
its overflow level: rain alone never overflows, so every overflow is a labelled fault.
Half of the manholes carry a rain gauge (``rain_mmph``); the others send it absent.

Faults override a manhole's readings inside their window only, so the physics of the
rest of the fleet is unchanged by injecting them. ``docs/simulator.md`` has the shapes.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from sim.faults import FaultKind, LabelBook, json_values
from sim.schedule import Event
from sim.weather import Weather

F_NONE, F_OVERFLOW, F_BLOCKAGE, F_COVER, F_STUCK, F_OFFLINE = range(6)
_CODES = {
    FaultKind.OVERFLOW: F_OVERFLOW,
    FaultKind.BLOCKAGE: F_BLOCKAGE,
    FaultKind.COVER_DISPLACED: F_COVER,
    FaultKind.STUCK_SENSOR: F_STUCK,
    FaultKind.OFFLINE: F_OFFLINE,
}
MAX_RAIN_RISE = 0.35
"""The worst storm lifts a manhole this fraction of the way from base to overflow."""
STORM_MMPH = 50.0
SURCHARGE_M = 0.04
"""An overflowing manhole's level sits this far above its overflow level (at the cover)."""
DIURNAL = 0.15
"""Amplitude of the daily cycle of dry-weather flow (fraction of the base level)."""
UTC_OFFSET_H = 8.0
"""Local time of the district (UTC+8), for the daily flow cycle."""


def _diurnal(t_ms: int) -> float:
    """Daily cycle of dry-weather flow: highest mid-afternoon, lowest at night (local time).

    Evaluated once per tick: within one second it does not change measurably.
    """
    hour = (t_ms / 3_600_000.0 + UTC_OFFSET_H) % 24.0
    return 1.0 + DIURNAL * math.sin(2 * math.pi / 24.0 * (hour - 8.0))


class SewageModel:
    """Every manhole of a registry; see the module docstring."""

    kind = DeviceKind.SEWAGE

    def __init__(
        self,
        registry: Registry,
        device_street: npt.NDArray[np.int32],
        rng: np.random.Generator,
        start_ms: int,
        labels: LabelBook,
        *,
        weather: Weather,
    ) -> None:
        self.dev = registry.devices_of_kind(DeviceKind.SEWAGE)
        self.weather = weather
        n = self.dev.size
        self.n = n
        self._local = np.full(len(registry), -1, np.int64)
        self._local[self.dev] = np.arange(n)
        self.labels = labels
        depth = registry.depth_m[self.dev].astype(np.float64)
        self.depth = np.where(np.isfinite(depth) & (depth > 0), depth, 3.0)
        ovf = registry.overflow_level_m[self.dev].astype(np.float64)
        self.overflow = np.where(np.isfinite(ovf) & (ovf > 0), ovf, self.depth - 0.05)
        self.base = rng.uniform(0.05, 0.15, n) * self.depth
        self.gain = (
            rng.uniform(0.4, 1.0, n) * MAX_RAIN_RISE * (self.overflow - self.base) / STORM_MMPH
        )
        self.tilt0 = rng.uniform(0.2, 2.0, n)
        self.gauge = rng.random(n) < 0.5
        self.gauge_f = np.where(self.gauge, rng.uniform(0.85, 1.15, n), np.nan)
        self.street = device_street[self.dev]
        self.interval_ms = np.maximum(
            1, np.round(registry.interval_s[self.dev].astype(np.float64) * 1000)
        ).astype(np.int64)
        self.next_due = start_ms + rng.integers(1, self.interval_ms + 1)
        self.f_code = np.zeros(n, np.int8)
        self.f_s = np.zeros(n, np.int64)
        self.f_e = np.zeros(n, np.int64)
        self.f_o = np.zeros(n, np.int64)
        self.f_h = np.zeros(n, np.int64)
        self.f_a = np.zeros(n)
        self.snap = np.zeros((n, 3), np.float32)
        self._timers: list[tuple[int, int]] = []

    def activate(self, ev: Event) -> bool:
        li = int(self._local[ev.device])
        if self.f_code[li] != F_NONE:
            return False
        r = np.random.default_rng(ev.seed)
        s = ev.start_ms
        k = ev.kind
        iv = int(self.interval_ms[li])
        extra: dict[str, object]
        if k is FaultKind.OVERFLOW:
            o = s + int(r.uniform(20, 60) * 60_000)
            h = o + int(r.uniform(10, 30) * 60_000)
            e = h + int(r.uniform(15, 30) * 60_000)
            self.f_o[li], self.f_h[li] = o, h
            extra = {
                "overflow_ms": o,
                "overflow_level_m": float(self.overflow[li]),
                "depth_m": float(self.depth[li]),
                "recede_ms": h,
                "observable_ms": s + (o - s) // 3,
            }
        elif k is FaultKind.BLOCKAGE:
            rise_ms = int(r.uniform(60, 150) * 60_000)
            room = 0.45 * (self.overflow[li] - self.base[li])
            amount = float(max(0.15, min(r.uniform(0.3, 0.8), room)))
            e = s + rise_ms + int(r.uniform(20, 40) * 60_000)
            self.f_h[li], self.f_a[li] = s + rise_ms, amount
            extra = {
                "rise_m": amount,
                "rise_end_ms": s + rise_ms,
                "observable_ms": s + int(rise_ms * min(1.0, 0.15 / amount)),
            }
        elif k is FaultKind.COVER_DISPLACED:
            e = s + int(r.uniform(30, 120) * 60_000)
            self.f_a[li] = r.uniform(15, 60)
            extra = {"tilt_deg": float(self.f_a[li]), "observable_ms": s + iv}
        elif k is FaultKind.STUCK_SENSOR:
            e = s + int(r.uniform(20, 90) * 60_000)
            self.snap[li] = self._reading_now(li, s, r)
            extra = {"values": json_values(self.snap[li]), "observable_ms": s + 6 * iv}
        elif k is FaultKind.OFFLINE:
            e = s + int(r.uniform(10, 60) * 60_000)
            extra = {"observable_ms": s + 3 * iv}
        else:
            return False
        self.f_code[li], self.f_s[li], self.f_e[li] = _CODES[k], s, e
        self.labels.add(ev.device, k, s, e, **extra)
        heapq.heappush(self._timers, (e, li))
        return True

    def _reading_now(self, li: int, t_ms: int, r: np.random.Generator) -> npt.NDArray[np.float32]:
        """What manhole ``li`` reads at ``t_ms``: the value a stuck sensor then repeats."""
        street = int(self.street[li])
        level = self.base[li] * _diurnal(t_ms) + self.gain[li] * min(
            float(self.weather.runoff[street]), STORM_MMPH
        )
        rain = float(self.weather.rain(t_ms)[street]) * self.gauge_f[li]
        return np.array(
            [
                level + 0.003 * r.standard_normal(),
                abs(self.tilt0[li] + 0.05 * r.standard_normal()),
                rain,
            ],
            np.float32,
        )

    def tick(self, t0: int, rng: np.random.Generator, weather: Weather) -> ReadingBatch:
        """Readings of every manhole due in ``(t0, t0 + 1000]``."""
        tend = t0 + 1000
        rain_street = weather.step(tend)
        runoff = np.minimum(weather.runoff, STORM_MMPH)
        sel = np.flatnonzero(self.next_due <= tend)
        idx_parts, ts_parts = [], []
        while sel.size:
            idx_parts.append(sel)
            ts_parts.append(self.next_due[sel].copy())
            self.next_due[sel] += self.interval_ms[sel]
            sel = sel[self.next_due[sel] <= tend]
        idx = np.concatenate(idx_parts) if len(idx_parts) != 1 else idx_parts[0]
        ts = np.concatenate(ts_parts) if len(ts_parts) != 1 else ts_parts[0]
        n = idx.size
        noise = rng.standard_normal((3, n), dtype=np.float32)
        st = self.street[idx]
        level = self.base[idx] * _diurnal(tend) + self.gain[idx] * runoff[st] + 0.003 * noise[0]
        tilt = np.abs(self.tilt0[idx] + 0.05 * noise[1])
        rain = rain_street[st] * self.gauge_f[idx]
        rain = np.where(rain > 0, rain * (1 + 0.03 * noise[2]), rain)
        vals = np.empty((3, n), np.float32)
        vals[0], vals[1], vals[2] = level, tilt, rain
        keep = None
        fsel = np.flatnonzero(self.f_code[idx] != F_NONE)
        if fsel.size:
            keep = self._apply_faults(idx, ts, vals, fsel, rng)
        while self._timers and self._timers[0][0] <= tend:
            _, li = heapq.heappop(self._timers)
            if self.f_e[li] <= tend:
                self.f_code[li] = F_NONE
        if keep is not None:
            idx, ts, vals = idx[keep], ts[keep], vals[:, keep]
        return ReadingBatch(
            DeviceKind.SEWAGE,
            self.dev[idx],
            ts,
            {"level_m": vals[0], "tilt_deg": vals[1], "rain_mmph": vals[2]},
        )

    def _apply_faults(
        self,
        idx: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        vals: npt.NDArray[np.float32],
        fsel: npt.NDArray[np.int64],
        rng: np.random.Generator,
    ) -> npt.NDArray[np.bool_] | None:
        li = idx[fsel]
        t = ts[fsel]
        code = self.f_code[li]
        inside = (t >= self.f_s[li]) & (t < self.f_e[li])
        keep = None
        off = fsel[inside & (code == F_OFFLINE)]
        if off.size:
            keep = np.ones(idx.size, bool)
            keep[off] = False
        m = inside & (code == F_STUCK)
        if m.any():
            vals[:, fsel[m]] = self.snap[li[m]].T
        m = inside & (code == F_COVER)
        if m.any():
            vals[1, fsel[m]] = self.f_a[li[m]] + 0.3 * rng.standard_normal(int(m.sum()))
        m = inside & (code == F_OVERFLOW)
        if m.any():
            j, lj, tj = fsel[m], li[m], t[m]
            s, o, h, e = self.f_s[lj], self.f_o[lj], self.f_h[lj], self.f_e[lj]
            w = np.where(
                tj < o,
                (tj - s) / (o - s),
                np.where(tj < h, 1.0, (e - tj) / np.maximum(e - h, 1)),
            )
            target = self.overflow[lj] + SURCHARGE_M * (tj >= o)
            normal = vals[0, j]
            fresh = 0.003 * rng.standard_normal(j.size)  # a real level is never flat
            vals[0, j] = normal + (target - normal) * w + fresh * w
        m = inside & (code == F_BLOCKAGE)
        if m.any():
            j, lj, tj = fsel[m], li[m], t[m]
            frac = np.clip((tj - self.f_s[lj]) / (self.f_h[lj] - self.f_s[lj]), 0.0, 1.0)
            vals[0, j] += self.f_a[lj] * frac
        return keep
