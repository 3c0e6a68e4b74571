"""Sewage manholes: overflow forecast, high level, blockage, displaced cover, flat-lined sensor.

Each manhole keeps a ring buffer of its last ``window_readings`` readings, ``(t, level)``
packed in one complex64 so a reading is written with one scatter. The per-reading work
is deliberately small (a 300,000-manhole batch must take milliseconds): write the ring,
compare with the previous reading (flat-line), compare the level with the registry's
overflow level (high level, and whether a forecast is worth computing), check the tilt.

* **Overflow forecast**, for the manholes whose level is at least
  ``forecast_min_fraction`` of the overflow level: least squares over their ring rows, all
  at once on a ``(manholes, window)`` array; time to overflow = (overflow level - fitted
  level now) / slope. Emitted while it is within ``forecast_horizon_s``.
* **Blockage** (a rise with no rain) is judged once per ring window, when the ring wraps:
  the window's fitted level and slope against a dry-weather baseline (a level and a
  trend, so the slow daily cycle is followed without lag). The baseline learns only from
  dry windows whose slope agrees with its trend, so a blockage's steeper rise stops the
  learning instead of being absorbed. The verdict is a per-manhole flag; every reading of a
  flagged manhole re-checks rise and weather and is emitted while both hold.

"Dry" uses the manhole's own gauge and, as many manholes have none, every gauge in its
grid: a grid stays wet for ``rain_memory_s`` after any gauge saw rain. Wet-until times
only ever grow (a max), so they do not depend on the order of readings in a batch.
Ring times are float32 seconds from a detector epoch (``epoch_ms_``), moved forward when
they would lose precision.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from detectors._core import CHUNK_ROWS, BatchPlan, KindIndex, Round, StateArrays, run_slice
from detectors.config import SewageParams
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry

MS_PER_S = 1000
S_PER_H = 3600.0
_EPOCH_STEP_MS = 2**19 * MS_PER_S
"""Ring-time epoch alignment (~6 days): times stay under ~18 days, 0.125 s resolution."""
_RING_CHUNK = 16384
"""Ring entries read and written per chunk (16k cache lines, 1 MB: stays in L2)."""
_FLAT_MAX = np.iinfo(np.int16).max


class SewageDetector(StateArrays):
    """Overflow forecast and manhole faults for every sewage device of the registry."""

    kind: ClassVar[str] = "sewage"

    def __init__(self, registry: Registry, params: SewageParams) -> None:
        self.params = params
        self.index = KindIndex(registry, DeviceKind.SEWAGE)
        n, w = self.index.size, params.window_readings
        dev = self.index.devices
        self._overflow_m = registry.overflow_level_m[dev].astype(np.float32)
        self._depth_m = registry.depth_m[dev].astype(np.float32)
        self._candidate_m = (self._overflow_m * params.forecast_min_fraction).astype(np.float32)
        self._grid = registry.device_grid[dev]
        self._fractions = np.asarray(params.level_fractions, dtype=np.float64)
        # level >= fractions[0] x overflow implies level >= the candidate level (a f32
        # rounding of forecast_min_fraction x overflow) when the fraction is clearly higher
        self._high_within_candidates = bool(
            self._fractions[0] >= params.forecast_min_fraction * (1 + 1e-6)
        )
        # ring of (t_s, level_m) and how many readings were ever pushed
        self.ring_ = np.zeros((n, w), dtype=np.complex64)
        self.n_seen_ = np.zeros(n, dtype=np.int32)
        self.epoch_ms_ = np.full(1, -1, dtype=np.int64)
        self.flat_n_ = np.zeros(n, dtype=np.int16)
        # weather
        self.wet_until_ms_ = np.full(n, -1, dtype=np.int64)
        self.grid_wet_until_ms_ = np.full(registry.grid_ids.size, -1, dtype=np.int64)
        # dry-weather baseline, updated once per ring window
        self.dry_level_ = np.zeros(n, dtype=np.float64)
        self.dry_trend_ = np.zeros(n, dtype=np.float64)
        self.dry_ms_ = np.zeros(n, dtype=np.int64)
        self.dry_n_ = np.zeros(n, dtype=np.int32)
        self.dry_seen_ms_ = np.zeros(n, dtype=np.int64)
        self.blocked_ = np.zeros(n, dtype=np.bool_)

    @classmethod
    def from_config(cls, registry: Registry, params: SewageParams) -> SewageDetector:
        return cls(registry, params)

    # -- streaming ---------------------------------------------------------------

    def update(self, batch: ReadingBatch) -> Detections:
        if batch.kind != DeviceKind.SEWAGE:
            raise ValueError(f"the sewage detector got a {batch.kind.value} batch")
        if len(batch) == 0:
            return Detections.empty()
        return self.update_plan(BatchPlan(batch, self.index))

    def update_plan(self, plan: BatchPlan) -> Detections:
        """``update`` with the batch's plan already computed."""
        batch, loc = plan.batch, plan.loc
        self._time_base(batch.ts_ms)
        rain = batch.fields.get("rain_mmph")
        # Weather first, for the whole batch: a max, so order within the batch is moot.
        if rain is not None:
            wet = np.flatnonzero(rain >= self.params.rain_wet_mmph)
            if wet.size:
                until = batch.ts_ms[wet] + int(self.params.rain_memory_s * MS_PER_S)
                np.maximum.at(self.wet_until_ms_, loc[wet], until)
                np.maximum.at(self.grid_wet_until_ms_, self._grid[loc[wet]], until)
        return Detections.concat([self._step(r) for r in plan.rounds])

    def _step(self, r: Round) -> Detections:
        """One round in chunks of ``CHUNK_ROWS`` rows (see ``detectors.generic``): every
        check is per manhole (the weather was applied to the whole batch first), so the
        chunks are independent and their temporaries stay in cache. Detections keep the
        unchunked order (by kind of check, then row)."""
        loc, ts = r.loc, r.ts_ms
        level, tilt = r.col("level_m"), r.col("tilt_deg")
        found: list[list[Detections]] = [[] for _ in range(5)]
        for lo in range(0, loc.size, CHUNK_ROWS):
            hi = lo + CHUNK_ROWS
            self._rows(loc[lo:hi], ts[lo:hi], level[lo:hi], tilt[lo:hi], found)
        return Detections.concat([d for part in found for d in part])

    def _time_base(self, ts: npt.NDArray[np.int64]) -> None:
        """Keep ring times small: the epoch is aligned to ``_EPOCH_STEP_MS`` blocks.

        Aligned blocks make the epoch the same however the stream is batched; it moves
        back for an earlier reading and forward when times reach three blocks.
        """
        step = _EPOCH_STEP_MS
        lo, hi = int(ts.min()), int(ts.max())
        epoch = int(self.epoch_ms_[0])
        if epoch < 0:
            self.epoch_ms_[0] = (lo // step) * step
            return
        new = epoch
        if lo < epoch:
            new = (lo // step) * step
        elif hi - epoch >= 3 * step:
            new = (hi // step) * step - step
        if new != epoch:
            self.ring_.real += np.float32((epoch - new) / MS_PER_S)
            self.epoch_ms_[0] = new

    def _rows(
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        level: npt.NDArray[np.float32],
        tilt: npt.NDArray[np.float32],
        found: list[list[Detections]],
    ) -> None:
        """Rows of distinct manholes; detections into ``found``: cover, flat, forecast,
        high, blockage."""
        p = self.params
        cover = np.flatnonzero(tilt > p.tilt_deg)
        if cover.size:
            found[0].append(self._cover(loc[cover], ts[cover], tilt[cover]))
        ok = np.isfinite(level)
        if not ok.all():
            i = np.flatnonzero(ok)
            loc, ts, level = loc[i], ts[i], level[i]
        m = loc.size
        if m == 0:
            return
        at = run_slice(loc)  # state through views for a run of consecutive manholes
        w = p.window_readings
        seen = self.n_seen_[at]
        slot = seen % w  # where this reading goes; the previous one is the slot before
        put = loc * w
        put += slot
        prev_at = put - 1
        first_slot = np.flatnonzero(slot == 0)
        prev_at[first_slot] += w
        new = np.empty(m, dtype=np.complex64)
        new.real = (ts - self.epoch_ms_[0]) * (1.0 / MS_PER_S)
        new.imag = level
        # Read the previous level and write the new entry chunk by chunk: the ring is
        # 72 MB for the full fleet, each manhole's entry sits on its own cache line, and
        # a write right after the read finds the line still in cache (one trip to memory
        # instead of two).
        prev = np.empty(m, dtype=np.float32)
        flat_ring = self.ring_.reshape(-1)
        for lo in range(0, m, _RING_CHUNK):
            hi = lo + _RING_CHUNK
            prev[lo:hi] = flat_ring[prev_at[lo:hi]].imag
            flat_ring[put[lo:hi]] = new[lo:hi]
        seen = seen + 1  # (a view of the state for a slice: written back below)
        self.n_seen_[at] = seen
        # flat-line: the same level as the previous reading (exactly, by default)
        same = np.abs(level - prev) <= p.flat_range_m
        same &= seen > 1
        if same.any():
            flat_n = (np.minimum(self.flat_n_[at], _FLAT_MAX - 1) + 1) * same
            self.flat_n_[at] = flat_n
            stuck = np.flatnonzero(flat_n >= p.flat_readings - 1)
            if stuck.size:
                t = new.real[stuck]
                found[1].append(self._flat(loc[stuck], ts[stuck], t, level[stuck], flat_n[stuck]))
        else:
            self.flat_n_[at] = 0
        # forecast candidates and high levels, against registry constants
        cand = np.flatnonzero(level >= self._candidate_m[at])
        if cand.size:
            found[2].append(self._forecast(loc[cand], ts[cand], new.real[cand], level[cand]))
        # a high level is a forecast candidate too unless level_fractions start lower
        maybe_high = cand if self._high_within_candidates else slice(None)
        overflow = self._overflow_m[loc[maybe_high]]
        high = np.flatnonzero(level[maybe_high] >= self._fractions[0] * overflow)
        if high.size:
            rows = high if self._high_within_candidates is False else cand[high]
            found[3].append(self._high(loc[rows], ts[rows], level[rows], overflow[high]))
        # blockage: the window verdict, re-checked on every reading of a flagged manhole
        wrapped = np.flatnonzero(slot == w - 1)
        if wrapped.size:
            self._window_end(loc[wrapped], ts[wrapped])
        flagged = np.flatnonzero(self.blocked_[at])
        if flagged.size:
            found[4].append(self._blockage(loc[flagged], ts[flagged], level[flagged]))

    # -- per-reading detections ------------------------------------------------------

    def _cover(
        self, loc: npt.NDArray[np.intp], ts: npt.NDArray[np.int64], tilt: npt.NDArray[np.float32]
    ) -> Detections:
        p = self.params
        return Detections.of(
            DetectionKind.COVER_DISPLACED,
            self.index.devices[loc],
            ts,
            np.minimum(1.0, tilt / (2 * p.tilt_deg)),
            tilt_deg=tilt,
            tilt_threshold_deg=p.tilt_deg,
        )

    def _flat(
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        t: npt.NDArray[np.float32],
        level: npt.NDArray[np.float32],
        flat_n: npt.NDArray[np.int16],
    ) -> Detections:
        """Flat for ``flat_readings`` readings; held time from the ring's oldest flat entry."""
        p = self.params
        w = p.window_readings
        back = np.minimum(flat_n.astype(np.int64), w - 1)
        seen = self.n_seen_[loc].astype(np.int64)
        first_t = self.ring_.reshape(-1)[loc.astype(np.int64) * w + (seen - 1 - back) % w].real
        held_s = (t - first_t).astype(np.float64)
        ok = np.flatnonzero(held_s >= p.flat_min_s)
        if ok.size == 0:
            return Detections.empty()
        return Detections.of(
            DetectionKind.STUCK,
            self.index.devices[loc[ok]],
            ts[ok],
            np.minimum(1.0, (flat_n[ok] + 1.0) / (2.0 * p.flat_readings)),
            level_m=level[ok],
            stuck_s=held_s[ok],
            repeats_count=flat_n[ok] + 1.0,
        )

    def _high(
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        level: npt.NDArray[np.float32],
        overflow: npt.NDArray[np.float32],
    ) -> Detections:
        frac = level.astype(np.float64) / overflow
        crossed = np.searchsorted(self._fractions, frac, side="right")
        return Detections.of(
            DetectionKind.LEVEL_HIGH,
            self.index.devices[loc],
            ts,
            np.minimum(1.0, frac),
            level_m=level,
            overflow_level_m=overflow,
            depth_m=self._depth_m[loc],
            level_fraction=frac,
            threshold_fraction=self._fractions[np.maximum(crossed - 1, 0)],
        )

    def _fit(
        self, loc: npt.NDArray[np.intp]
    ) -> tuple[
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float32],
    ]:
        """Least squares over the ring rows of ``loc``: slope, mean t, mean level, count,
        and the oldest ring time (s). Rows with fewer than ``min_fit_readings`` readings
        get a NaN slope. Each sum over a row is one einsum pass (no temporary arrays)."""
        w = self.params.window_readings
        rows = self.ring_[loc]
        seen = self.n_seen_[loc]
        t = rows.real.astype(np.float64)
        newest = t[np.arange(loc.size), (seen - 1) % w]
        # entries from before a long silence are not part of the current window
        valid = t >= newest[:, None] - self.params.window_max_s
        if int(seen.min()) < w:  # rows not yet filled once
            valid &= np.arange(w)[None, :] < np.minimum(seen, w)[:, None]
        v = valid.astype(np.float64)
        count = v @ np.ones(w)  # a matrix-vector product: 4x faster than sum(axis=1)
        y = rows.imag.astype(np.float64)
        n = np.maximum(count, 1.0)
        mt = _rowdot(v, t) / n
        my = _rowdot(v, y) / n
        dt = t - mt[:, None]
        dt *= v
        sxx = _rowdot(dt, dt)
        sxy = _rowdot(dt, y)
        good = (count >= self.params.min_fit_readings) & (sxx > 0)
        slope = np.full(loc.size, np.nan)
        np.divide(sxy, sxx, out=slope, where=good)
        return slope, mt, my, count, t.min(axis=1).astype(np.float32)

    def _forecast(
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        t: npt.NDArray[np.float32],
        level: npt.NDArray[np.float32],
    ) -> Detections:
        p = self.params
        slope, mt, my, count, _ = self._fit(loc)
        level_now = my + np.nan_to_num(slope) * (t - mt)
        overflow = self._overflow_m[loc].astype(np.float64)
        rising = slope >= p.min_slope_mps
        tto = np.full(loc.size, np.inf)
        np.divide(np.maximum(overflow - level_now, 0.0), slope, out=tto, where=rising)
        hit = np.flatnonzero(rising & (tto <= p.forecast_horizon_s))
        if hit.size == 0:
            return Detections.empty()
        return Detections.of(
            DetectionKind.OVERFLOW_FORECAST,
            self.index.devices[loc[hit]],
            ts[hit],
            1.0 - tto[hit] / p.forecast_horizon_s,
            time_to_overflow_s=tto[hit],
            overflow_at_ms=ts[hit] + tto[hit] * MS_PER_S,
            level_m=level[hit],
            fitted_level_m=level_now[hit],
            slope_m_per_h=slope[hit] * S_PER_H,
            overflow_level_m=overflow[hit],
            window_readings=count[hit],
        )

    # -- blockage ---------------------------------------------------------------------

    def _dry(
        self, loc: npt.NDArray[np.intp], since_ms: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """No rain at the manhole or in its grid at any time after ``since_ms``."""
        return (since_ms > self.wet_until_ms_[loc]) & (
            since_ms > self.grid_wet_until_ms_[self._grid[loc]]
        )

    def _expected(
        self, loc: npt.NDArray[np.intp], ts: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        dt_s = np.minimum((ts - self.dry_ms_[loc]) / MS_PER_S, self.params.dry_trend_horizon_s)
        return self.dry_level_[loc] + self.dry_trend_[loc] * dt_s

    def _window_end(self, loc: npt.NDArray[np.intp], ts: npt.NDArray[np.int64]) -> None:
        """Judge the full ring window of ``loc``: learn the baseline or flag a blockage."""
        p = self.params
        slope, mt, my, _, oldest_s = self._fit(loc)  # the ring is full: all of it
        t_now = (ts - self.epoch_ms_[0]) / MS_PER_S
        level_now = my + slope * (t_now - mt)
        start_ms = self.epoch_ms_[0] + (oldest_s * MS_PER_S).astype(np.int64)
        dry = self._dry(loc, start_ms)
        stale = ts - self.dry_seen_ms_[loc] > p.dry_stale_s * MS_PER_S
        dn = np.where(stale, 0, self.dry_n_[loc])
        trend = np.where(dn > 0, self.dry_trend_[loc], 0.0)
        expected = np.where(dn > 0, self._expected(loc, ts), level_now)
        rise = level_now - expected
        learned = dn >= p.dry_warmup_windows
        drain = -p.drain_slope_m_per_h / S_PER_H
        self.blocked_[loc] = dry & learned & (rise >= p.blockage_rise_m) & (slope >= drain)
        self.dry_seen_ms_[loc[dry]] = ts[dry]
        # learn from dry windows whose slope agrees with the baseline's trend
        agree = np.abs(slope - trend) <= p.baseline_max_slope_m_per_h / S_PER_H
        i = np.flatnonzero(dry & (agree | (dn == 0)) & np.isfinite(slope))
        if i.size == 0:
            return
        li, n_i = loc[i], dn[i]
        dt_s = np.where(n_i > 0, (ts[i] - self.dry_ms_[li]) / MS_PER_S, 0.0)
        a = np.maximum(-np.expm1(-dt_s / p.dry_tau_s), 1.0 / (n_i + 1.0))
        at = np.maximum(-np.expm1(-dt_s / p.dry_trend_tau_s), 1.0 / (n_i + 1.0))
        band = 0.5 * p.blockage_rise_m
        r = level_now[i] - expected[i]
        step = np.where(learned[i], np.clip(r, -band, band), r)
        self.dry_level_[li] = expected[i] + a * step
        self.dry_trend_[li] = trend[i] + at * (slope[i] - trend[i])
        self.dry_ms_[li] = ts[i]
        self.dry_n_[li] = np.minimum(n_i, 1 << 30) + 1

    def _blockage(
        self, loc: npt.NDArray[np.intp], ts: npt.NDArray[np.int64], level: npt.NDArray[np.float32]
    ) -> Detections:
        p = self.params
        expected = self._expected(loc, ts)
        rise = level - expected
        hit = np.flatnonzero(self._dry(loc, ts) & (rise >= p.blockage_rise_m))
        if hit.size == 0:
            return Detections.empty()
        loc, ts = loc[hit], ts[hit]
        return Detections.of(
            DetectionKind.BLOCKAGE,
            self.index.devices[loc],
            ts,
            np.minimum(1.0, rise[hit] / (4 * p.blockage_rise_m)),
            level_m=level[hit],
            dry_baseline_m=expected[hit],
            rise_m=rise[hit],
            baseline_slope_m_per_h=self.dry_trend_[loc] * S_PER_H,
            dry_for_s=self._dry_for_s(loc, ts),
        )

    def _dry_for_s(
        self, loc: npt.NDArray[np.intp], ts: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Seconds since the last rain at the manhole or in its grid (NaN: none seen)."""
        until = np.maximum(self.wet_until_ms_[loc], self.grid_wet_until_ms_[self._grid[loc]])
        last_rain = until - self.params.rain_memory_s * MS_PER_S
        return np.where(until >= 0, (ts - last_rain) / MS_PER_S, np.nan)

    # -- timer -------------------------------------------------------------------

    def tick(self, now_ms: int) -> Detections:
        """Nothing is time-driven here: a silent manhole is the generic offline check's."""
        return Detections.empty()


def _rowdot(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Row-wise dot products of two ``(manholes, window)`` arrays, in one pass."""
    out: npt.NDArray[np.float64] = np.einsum("ij,ij->i", a, b)
    return out
