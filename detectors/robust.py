"""A streaming anomaly score for many series at once: robust Holt EWMA with level shifts.

Start from an EWMA z-score and fix what breaks it on real sensors:

* **Outliers do not move the baseline.** Residuals are clipped at ``huber_k`` robust
  sigmas before updating (Huber), and the scale is an EWMA of the clipped absolute
  residual (x 1.2533, so it estimates sigma for Gaussian noise), not of squares.
* **Drift does not look anomalous.** A Holt trend term follows a seasonality-free linear
  drift without the lag that makes a plain EWMA's z grow with the drift rate.
* **A level shift is learned, not scored forever.** ``shift_readings`` readings in a row
  beyond ``shift_z`` on the same side re-baseline the series at the new level: the shift's
  first readings score high, later ones do not.
* **Warm-up.** The third reading starts the estimates from the median of the first three
  (so a first reading that is already anomalous does not poison them), then a cumulative
  mean (weight ``1/(n+1)``) until ``1/alpha`` readings; the score is 0 until
  ``warmup_readings`` readings were seen.
* **Quantised sensors.** ``min_scale`` (the sensor's resolution) bounds the scale from
  below, so a constant signal with one step does not give an infinite z.

The score maps ``|z|`` linearly from 0 at ``score_z_lo`` to 1 at ``score_z_hi``.
Every series' state is a handful of 1-D arrays; ``update`` takes rows of distinct series.

>>> rs = RobustScorer(1, warmup_readings=5, alpha=0.1, trend_beta=0.0, huber_k=3.0,
...                   score_z_lo=4.0, score_z_hi=10.0, shift_z=4.0, shift_readings=3,
...                   min_scale=0.01)
>>> idx = np.zeros(1, np.int32)
>>> series = [1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 5.0]
>>> [round(float(rs.update(idx, np.array([v]))[0][0]), 2) for v in series]
[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors._core import checked_state

MAD_TO_SIGMA = float(np.sqrt(np.pi / 2))
_RUN_SHIFT = 24
_N_MASK = (1 << _RUN_SHIFT) - 1
"""meta_ packs the readings seen (low 24 bits, saturating) and the signed level-shift run
(high 8 bits): one gather and one scatter instead of two."""
"""E|x - mu| = sigma * sqrt(2/pi) for Gaussian noise, so sigma = mean abs residual * 1.2533."""


_NONE = np.zeros(0, dtype=np.intp)


class RobustScorer:
    """Robust streaming z-scores for ``n`` independent series (see module docstring)."""

    def __init__(
        self,
        n: int,
        *,
        warmup_readings: int,
        alpha: float,
        trend_beta: float,
        huber_k: float,
        score_z_lo: float,
        score_z_hi: float,
        shift_z: float,
        shift_readings: int,
        min_scale: float,
    ) -> None:
        self.warmup_readings = warmup_readings
        self.alpha = alpha
        self.trend_beta = trend_beta
        self.huber_k = huber_k
        self.score_z_lo = score_z_lo
        self.score_z_hi = score_z_hi
        self.shift_z = shift_z
        self.shift_readings = shift_readings
        self.min_scale = min_scale
        self.level_ = np.zeros(n, dtype=np.float64)
        self.trend_ = np.zeros(n, dtype=np.float64)
        self.abs_dev_ = np.zeros(n, dtype=np.float64)
        self.meta_ = np.zeros(n, dtype=np.int32)  # readings seen | run << 24 (see _N_MASK)
        self.first_ = np.zeros((n, 2), dtype=np.float64)
        self.scored: npt.NDArray[np.intp] = _NONE
        """Rows of the last ``update`` whose score may be above 0 (the others are 0), so
        a caller can find scores above a positive threshold without a pass over all."""

    def state(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "level_": self.level_.copy(),
            "trend_": self.trend_.copy(),
            "abs_dev_": self.abs_dev_.copy(),
            "meta_": self.meta_.copy(),
            "first_": self.first_.copy(),
        }

    def load_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        for k, v in checked_state("RobustScorer", self.state(), state).items():
            setattr(self, k, v)

    def update(
        self, idx: npt.NDArray[np.intp] | slice, x: npt.NDArray[Any]
    ) -> tuple[
        npt.NDArray[np.float32],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
    ]:
        """Score then learn one reading per series in ``idx`` (distinct, finite ``x``).

        ``idx`` may be a ``slice`` (a run of consecutive series, step 1): the state is
        then read through views and written back as one block, without fancy indexing.

        Returns ``(score, z, expected, scale)`` per row: ``expected`` and ``scale`` are what
        the reading was compared against, in the reading's unit.

        The arithmetic is ``update_one``'s, operation for operation; what differs is which
        rows pay for it. Whole-array passes are the cost (each one streams megabytes for a
        fleet batch), so the rare cases are found with one comparison and handled on their
        rows only: a score above 0, a level-shift candidate, a residual to clip (beyond
        ``huber_k`` sigmas, ~0.3 % of Gaussian noise), a series still warming up.
        """
        x = np.asarray(x, dtype=np.float64)
        m = x.size
        level = self.level_[idx]
        trend = self.trend_[idx]
        abs_dev = self.abs_dev_[idx]
        meta = self.meta_[idx]
        n = meta & _N_MASK
        n_min = int(n.min()) if m else 0
        warm = None if n_min >= self.warmup_readings else n >= self.warmup_readings

        expected = level + trend
        r = x - expected
        scale = abs_dev * MAD_TO_SIGMA
        np.maximum(scale, self.min_scale, out=scale)
        z = r / scale
        az = np.abs(z)
        score = np.zeros(m, dtype=np.float32)
        self.scored = _NONE  # rows whose score may be above 0 (set below)
        # rows that may score, start a level shift or need clipping: one pass finds them
        # all (|z| <= huber_k (1 - 1e-9) guarantees |r| <= huber_k * scale: no clipping)
        lo = min(self.score_z_lo, self.shift_z, self.huber_k * (1.0 - 1e-9))
        cand = np.flatnonzero(az > lo)
        run: npt.NDArray[np.int32] | None = None  # level-shift runs; None: all reset to 0
        shifted = None
        if cand.size:
            ac = az[cand]
            warm_c = None if warm is None else warm[cand]
            hot = ac > self.score_z_lo
            if warm_c is not None:
                hot &= warm_c
            if hot.any():
                h = cand[hot]
                self.scored = h
                s = (az[h] - self.score_z_lo) * (1.0 / (self.score_z_hi - self.score_z_lo))
                np.clip(s, 0.0, 1.0, out=s)
                score[h] = s
            # Level shift: consecutive warm readings beyond shift_z on one side.
            big = ac > self.shift_z
            if warm_c is not None:
                big &= warm_c
            if big.any():
                bc = cand[big]
                side = np.zeros(m, dtype=np.int32)
                side[bc] = np.sign(z[bc]).astype(np.int32)
                old_run = meta >> _RUN_SHIFT  # arithmetic shift: keeps the sign
                same = (side != 0) & (np.sign(old_run) == side)
                run = side + old_run * same
                shifted = np.abs(run) >= self.shift_readings

        # Learning. Readings 1-2 are kept; the third sets the level to their median and
        # the scale to their median absolute deviation, so an outlier among the first
        # readings (a device whose first reading is an anomaly) cannot poison the start.
        # From then on every residual is clipped at huber_k robust sigmas.
        if 1.0 / (n_min + 1.0) <= self.alpha:  # every row past the cumulative-mean start
            a: Any = self.alpha
        else:
            a = np.maximum(self.alpha, 1.0 / (n + 1.0))
        early = np.flatnonzero(n < 3) if n_min < 3 else None
        rc = r  # clipped in place (r is not needed any more)
        if cand.size:
            clip = cand if early is None else cand[n[cand] >= 3]  # early rows: no clipping
            if clip.size:
                lim = self.huber_k * scale[clip]
                rc[clip] = np.clip(r[clip], -lim, lim)
        new_level = a * rc
        new_level += expected
        new_trend = (a * self.trend_beta) * rc
        if warm is not None:
            new_trend *= warm
        new_trend += trend
        new_abs = np.abs(rc)
        new_abs -= abs_dev
        new_abs *= a
        new_abs += abs_dev
        if early is not None:
            ne = n[early]
            ie = early + idx.start if isinstance(idx, slice) else idx[early]
            xe = x[early]
            keep = ne < 2
            self.first_[ie[keep], ne[keep]] = xe[keep]
            new_abs[early[ne == 0]] = 0.0
            third = np.flatnonzero(ne == 2)
            if third.size:
                j = early[third]
                x0 = self.first_[ie[third], 0]
                x1 = self.first_[ie[third], 1]
                x2 = x[j]
                med = np.maximum(np.minimum(x0, x1), np.minimum(np.maximum(x0, x1), x2))
                d = np.sort(np.abs(np.stack([x0, x1, x2]) - med), axis=0)
                new_level[j] = med
                new_abs[j] = d[1]
        if shifted is not None and run is not None and shifted.any():
            new_level[shifted] = x[shifted]
            new_trend[shifted] = 0.0
            run[shifted] = 0

        self.level_[idx] = new_level
        self.trend_[idx] = new_trend
        self.abs_dev_[idx] = new_abs
        n += 1
        np.minimum(n, _N_MASK, out=n)
        self.meta_[idx] = n if run is None else (run << _RUN_SHIFT) | n
        return score, z, expected, scale

    def update_one(self, i: int, x: float) -> tuple[float, float, float, float]:
        """``update`` for one reading of series ``i``, in plain Python floats.

        The same arithmetic, operation for operation, as ``update`` (IEEE doubles give
        the same bits either way; ``tests/detectors/test_robust.py`` checks it): a single
        series cannot be vectorised, and this is ~20x faster than 1-element arrays. For
        ``gridwatch score-csv``.
        """
        level = float(self.level_[i])
        trend = float(self.trend_[i])
        abs_dev = float(self.abs_dev_[i])
        meta = int(self.meta_[i])
        n = meta & _N_MASK
        run = meta >> _RUN_SHIFT
        expected = level + trend
        r = x - expected
        scale = max(abs_dev * MAD_TO_SIGMA, self.min_scale)
        z = r / scale
        az = abs(z)
        warm = n >= self.warmup_readings
        score = (az - self.score_z_lo) * (1.0 / (self.score_z_hi - self.score_z_lo))
        score = min(max(score, 0.0), 1.0) if warm else 0.0
        sign_z = (z > 0) - (z < 0)
        side = sign_z if (az > self.shift_z and warm) else 0
        same = side != 0 and ((run > 0) - (run < 0)) == side
        run = side + run * same
        shifted = abs(run) >= self.shift_readings
        a = max(self.alpha, 1.0 / (n + 1.0))
        lim = self.huber_k * scale if n >= 3 else math.inf
        rc = min(max(r, -lim), lim)
        new_level = expected + a * rc
        new_trend = trend + (a * self.trend_beta) * rc * warm
        new_abs = abs_dev + a * (abs(rc) - abs_dev)
        if n < 2:
            self.first_[i, n] = x
            if n == 0:
                new_abs = 0.0
        elif n == 2:
            x0, x1 = float(self.first_[i, 0]), float(self.first_[i, 1])
            med = max(min(x0, x1), min(max(x0, x1), x))
            new_level = med
            new_abs = sorted((abs(x0 - med), abs(x1 - med), abs(x - med)))[1]
        if shifted:
            new_level = x
            new_trend = 0.0
            run = 0
        self.level_[i] = new_level
        self.trend_[i] = new_trend
        self.abs_dev_[i] = new_abs
        self.meta_[i] = (run << _RUN_SHIFT) | min(n + 1, _N_MASK)
        return float(np.float32(score)), z, expected, scale
