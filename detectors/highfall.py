"""High-altitude falling objects: one batched least-squares fit per closed camera track.

Points of a track (``track_id`` > 0) arrive one reading per frame, over several batches;
they are appended to an open-track pool keyed by ``(device, track_id)``. A track closes
on its ``end`` = 1 point (same ``update``, so the verdict comes with the last point) or
after ``track_timeout_s`` without points (``tick``). All tracks closed together are fitted
at once on padded ``(tracks, points)`` arrays:

* height ``h(t) = a + b t + c t^2`` (``g' = -2c``) and horizontal drift ``x = d + e t``,
  from closed-form normal equations (no per-track solver call);
* a falling object has ``g'`` near 9.81 m/s^2 (light drag lowers it, hence the
  ``[g_min, g_max]`` band), a curvature that is significant (``g' / se(g')``, so a short
  noisy rain streak cannot pass by chance), small residuals, little horizontal speed, and
  a real drop. Birds fail on horizontal speed and residuals, leaves and rain streaks on
  ``g'`` (constant fall speed), insects on residuals and drop.

The release point is the top of the fitted parabola (where vertical speed is 0),
extrapolated back at most ``max_backtrack_s`` before the first point (the camera may not
see the upper floors, and a tracker needs frames to lock on). Its height over the
building's ``floor_height_m`` gives the origin floor: floor ``f`` spans heights
``[(f - 1) h, f h)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from detectors._core import KindIndex
from detectors.config import HighfallParams
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry

MS_PER_S = 1000
_KEY_SHIFT = 32
_INITIAL_SLOTS = 256


class HighfallDetector:
    """Falling-object classification for every facade camera of the registry."""

    kind: ClassVar[str] = "highfall"

    def __init__(self, registry: Registry, params: HighfallParams) -> None:
        self.params = params
        self.index = KindIndex(registry, DeviceKind.HIGHFALL)
        dev = self.index.devices
        fh = registry.floor_height_m[dev].astype(np.float64)
        self._floor_h = np.where(np.isfinite(fh) & (fh > 0), fh, np.nan)
        self._floors = registry.floors[dev].astype(np.float64)
        self._alloc(_INITIAL_SLOTS)
        self._index_keys()
        # per camera: the slot of its latest track (a lookup cache, not state: checked
        # against the slot's key on use, and rebuilt as points arrive)
        self._cam_slot = np.zeros(self.index.size, dtype=np.intp)

    @classmethod
    def from_config(cls, registry: Registry, params: HighfallParams) -> HighfallDetector:
        return cls(registry, params)

    # -- open-track pool -----------------------------------------------------------

    def _alloc(self, cap: int) -> None:
        # one spare column per slot: points beyond max_points are written there (and
        # never read) instead of being filtered out of every batch; entries at or beyond
        # a track's point count are stale (a reused slot is not cleared) and never read:
        # the fit weighs them 0 and state() exports zeros there
        p = self.params.max_points + 1
        self._t = np.zeros((cap, p), dtype=np.float32)
        self._hx = np.zeros((cap, p), dtype=np.complex64)  # height + 1j * horizontal
        self._n = np.zeros(cap, dtype=np.int32)
        self._t0 = np.zeros(cap, dtype=np.int64)
        self._last = np.zeros(cap, dtype=np.int64)
        self._key = np.full(cap, -1, dtype=np.int64)
        self._used = np.zeros(cap, dtype=np.bool_)

    def _grow(self, need: int) -> None:
        cap = self._n.size
        new_cap = cap
        while new_cap < need:
            new_cap *= 2
        if new_cap == cap:
            return
        old: list[npt.NDArray[Any]] = [
            self._t,
            self._hx,
            self._n,
            self._t0,
            self._last,
            self._key,
            self._used,
        ]
        self._alloc(new_cap)
        new: list[npt.NDArray[Any]] = [
            self._t,
            self._hx,
            self._n,
            self._t0,
            self._last,
            self._key,
            self._used,
        ]
        for dst, src in zip(new, old, strict=True):
            dst[:cap] = src

    def _index_keys(self) -> None:
        slots = np.flatnonzero(self._used)
        order = np.argsort(self._key[slots], kind="stable")
        self._sorted_slots = slots[order]
        self._sorted_keys = self._key[self._sorted_slots]

    def _insert_keys(self, keys: npt.NDArray[np.int64], slots: npt.NDArray[np.intp]) -> None:
        """Merge sorted new keys into the sorted index (linear, no re-sort)."""
        at = np.searchsorted(self._sorted_keys, keys)
        self._sorted_keys = np.insert(self._sorted_keys, at, keys)
        self._sorted_slots = np.insert(self._sorted_slots, at, slots)

    def _drop_unused(self) -> None:
        keep = self._used[self._sorted_slots]
        self._sorted_slots = self._sorted_slots[keep]
        self._sorted_keys = self._sorted_keys[keep]

    @property
    def open_tracks(self) -> int:
        return int(self._sorted_slots.size)

    def _lookup(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        """Slots of ``keys`` (-1 where not open)."""
        if self._sorted_keys.size == 0:
            return np.full(keys.size, -1, dtype=np.intp)
        pos = np.minimum(np.searchsorted(self._sorted_keys, keys), self._sorted_keys.size - 1)
        return np.where(self._sorted_keys[pos] == keys, self._sorted_slots[pos], -1)

    # -- state -------------------------------------------------------------------

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Open tracks sorted by key: the same tracks give the same state, whatever slots."""
        s = self._sorted_slots
        p = self.params.max_points
        n = self._n[s]
        stale = np.arange(p)[None, :] >= n[:, None]
        t = self._t[s, :p]
        hx = self._hx[s, :p]
        h, x = hx.real.copy(), hx.imag.copy()
        for a in (t, h, x):
            a[stale] = 0.0
        return {
            "key_": self._key[s].copy(),
            "n_points_": n.copy(),
            "t0_ms_": self._t0[s].copy(),
            "last_ms_": self._last[s].copy(),
            "t_s_": t,
            "height_m_": h,
            "horizontal_m_": x,
        }

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        names = set(self.state())
        if set(state) != names:
            raise ValueError(
                f"highfall state does not match: missing {sorted(names - set(state))}, "
                f"unexpected {sorted(set(state) - names)}"
            )
        key = np.asarray(state["key_"], dtype=np.int64)
        m, p = key.size, self.params.max_points
        for name in ("t_s_", "height_m_", "horizontal_m_"):
            if np.shape(state[name]) != (m, p):
                raise ValueError(
                    f"highfall state {name!r}: expected shape {(m, p)}, got {np.shape(state[name])}"
                )
        for name in ("n_points_", "t0_ms_", "last_ms_"):
            if np.shape(state[name]) != (m,):
                raise ValueError(
                    f"highfall state {name!r}: expected shape {(m,)}, got {np.shape(state[name])}"
                )
        cap = _INITIAL_SLOTS
        while cap < m:
            cap *= 2
        self._alloc(cap)
        self._key[:m] = key
        self._n[:m] = state["n_points_"]
        self._t0[:m] = state["t0_ms_"]
        self._last[:m] = state["last_ms_"]
        self._t[:m, :p] = state["t_s_"]
        self._hx.real[:m, :p] = state["height_m_"]
        self._hx.imag[:m, :p] = state["horizontal_m_"]
        self._used[:m] = True
        self._index_keys()

    # -- streaming ---------------------------------------------------------------

    def update(self, batch: ReadingBatch) -> Detections:
        if batch.kind != DeviceKind.HIGHFALL:
            raise ValueError(f"the highfall detector got a {batch.kind.value} batch")
        if len(batch) == 0:
            return Detections.empty()
        f = batch.fields
        track, device, ts = f["track_id"], batch.device, batch.ts_ms
        h, x, end = f["height_m"], f["horizontal_m"], f["end"]
        is_point = track > 0
        if not is_point.all():  # heartbeats and other rows without a track
            rows = np.flatnonzero(is_point)
            if rows.size == 0:
                return Detections.empty()
            track, device, ts = track[rows], device[rows], ts[rows]
            h, x, end = h[rows], x[rows], end[rows]
        cam = self.index.local(device)  # also rejects devices of another kind
        end = end >= 0.5
        keys = device.astype(np.int64) << _KEY_SHIFT
        keys |= track.astype(np.int64)
        point = np.isfinite(h)
        point &= np.isfinite(x)

        parts: list[Detections] = []
        slot = np.full(keys.size, -1, dtype=np.intp)
        if point.all():
            closed, slot = self._append(keys, cam, ts, h, x)
            parts.append(closed)
        elif point.any():
            p = np.flatnonzero(point)
            closed, slot[p] = self._append(keys[p], cam[p], ts[p], h[p], x[p])
            parts.append(closed)
        e = np.flatnonzero(end)
        if e.size:
            # the slot of each end row is known from its point; look up only the others
            es = slot[e]
            unknown = np.flatnonzero(es < 0)
            if unknown.size:
                es[unknown] = self._lookup(keys[e[unknown]])
            parts.append(self._close(np.unique(es[es >= 0])))
        return Detections.concat(parts)

    def _append(
        self,
        keys: npt.NDArray[np.int64],
        cam: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        h: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
    ) -> tuple[Detections, npt.NDArray[np.intp]]:
        """Append points to their tracks' slots, opening slots for new tracks.

        Rows are grouped by slot with one stable sort of small integers (a radix sort
        while the pool has at most 65,536 slots), which also gives each point's rank
        within its track in this batch. Returns the tracks closed to make room and each
        row's slot.
        """
        closed = Detections.empty()
        # A camera rarely tracks two objects at once: try its latest track's slot first.
        slot = self._cam_slot[cam]
        miss = np.flatnonzero(self._key[slot] != keys)
        if miss.size:
            closed, found = self._resolve(keys[miss], cam[miss], ts[miss], slot, miss)
            slot[miss] = found
            self._cam_slot[cam[miss]] = found  # a cache: any of a camera's slots will do
        small = np.uint16 if self._n.size <= 1 << 16 else np.uint32
        order = np.argsort(slot.astype(small), kind="stable")
        ss = slot[order]
        n_rows = ss.size
        first = np.empty(n_rows, dtype=np.bool_)
        first[0] = True
        np.not_equal(ss[1:], ss[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, n_rows))
        slots = ss[starts]
        # position of each point within its track: points so far + rank in this batch
        rank = np.arange(n_rows) - np.repeat(starts, counts)
        pos = np.empty(n_rows, dtype=np.intp)
        pos[order] = rank + np.repeat(self._n[slots], counts)
        self._n[slots] = np.minimum(self._n[slots] + counts, self.params.max_points)
        self._last[slots] = np.maximum(self._last[slots], ts[order[starts + counts - 1]])
        # write in row order (no gather of the columns): flat position of each point;
        # only the first max_points are kept, later ones land in the spare column
        p = self.params.max_points
        if int(pos.max()) > p:
            np.minimum(pos, p, out=pos)
        flat = slot * (p + 1)
        flat += pos
        self._t.reshape(-1)[flat] = (ts - self._t0[slot]) * (1.0 / MS_PER_S)
        hx = np.empty(flat.size, dtype=np.complex64)
        hx.real = h
        hx.imag = x
        self._hx.reshape(-1)[flat] = hx
        return closed, slot

    def _resolve(
        self,
        keys: npt.NDArray[np.int64],
        cam: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        slot: npt.NDArray[np.intp],
        miss: npt.NDArray[np.intp],
    ) -> tuple[Detections, npt.NDArray[np.intp]]:
        """Slots of rows the camera cache missed, opening slots for new tracks.

        The missed rows of a camera almost always belong to one track (a new one), so
        only the first missed row of each camera is looked up; the others that share its
        key take its slot. Rows of a second track of a camera in the same batch go the
        general way (rare).
        """
        m = keys.size
        idx = np.arange(m)
        first = np.full(self.index.size, m, dtype=np.intp)
        np.minimum.at(first, cam, idx)
        rep = first[cam]
        own = keys[rep] == keys
        reps = np.flatnonzero(rep == idx)  # one row per camera, its first missed row
        out = np.full(m, -1, dtype=np.intp)
        out[reps] = self._lookup(keys[reps])
        rest = np.flatnonzero(~own)
        if rest.size:
            out[rest] = self._lookup(keys[rest])
        # open a slot for each new track: the representatives first, then the rest
        new_rep = reps[out[reps] < 0]
        new_rest = rest[out[rest] < 0] if rest.size else rest
        closed = Detections.empty()
        if new_rep.size or new_rest.size:
            new_keys, inv = np.unique(
                np.concatenate([keys[new_rep], keys[new_rest]]), return_inverse=True
            )
            first_ts = np.full(new_keys.size, np.iinfo(np.int64).max, dtype=np.int64)
            rows = np.concatenate([new_rep, new_rest])
            np.minimum.at(first_ts, inv, ts[rows])
            if self.open_tracks + new_keys.size > self.params.max_tracks:
                live = np.concatenate([np.delete(slot, miss), out[out >= 0]])
                closed = self._make_room(new_keys.size, protect=live)
            got = self._open(new_keys, first_ts)
            out[rows] = got[inv]
        # the representatives' slots, now all known, go to the rows that share their key
        shared = np.flatnonzero(own & (rep != idx))
        out[shared] = out[rep[shared]]
        return closed, out

    def _open(
        self, keys: npt.NDArray[np.int64], first_ts: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.intp]:
        """Slots for new tracks (``keys`` sorted, distinct) starting at ``first_ts``."""
        free = np.flatnonzero(~self._used)
        if free.size < keys.size:
            self._grow(int(self._n.size + keys.size))
            free = np.flatnonzero(~self._used)
        got = free[: keys.size]
        self._used[got] = True
        self._key[got] = keys
        self._n[got] = 0
        self._t0[got] = first_ts
        self._insert_keys(keys, got)
        return got

    def _make_room(self, k: int, protect: npt.NDArray[np.intp]) -> Detections:
        """Close the least recently seen tracks when ``k`` more would exceed ``max_tracks``.

        Tracks with points in the current batch (``protect``) are never closed here: the
        pool then exceeds ``max_tracks`` for a moment rather than lose a live track.
        """
        over = self.open_tracks + k - self.params.max_tracks
        if over <= 0:
            return Detections.empty()
        slots = self._sorted_slots
        if protect.size:
            slots = slots[~np.isin(slots, protect)]
        oldest = slots[np.argsort(self._last[slots], kind="stable")[:over]]
        return self._close(oldest)

    def _close(self, slots: npt.NDArray[np.intp]) -> Detections:
        if slots.size == 0:
            return Detections.empty()
        slots = np.sort(slots)
        det = self.fit(slots)
        self._used[slots] = False
        self._key[slots] = -1  # never matches a real key (the camera cache checks keys)
        self._drop_unused()
        return det

    # -- the batched fit -----------------------------------------------------------

    def fit(self, slots: npt.NDArray[np.intp]) -> Detections:
        """Fit and classify the given open tracks; falling objects as detections."""
        p = self.params
        n = self._n[slots]
        width = max(int(n.max()), 1)
        t = self._t[slots, :width].astype(np.float64)
        hx = self._hx[slots, :width]
        h = hx.real.astype(np.float64)
        x = hx.imag.astype(np.float64)
        w = (np.arange(width)[None, :] < n[:, None]).astype(np.float64)
        res = fit_tracks(t, h, x, w)
        dev_local = self.index.local_of[(self._key[slots] >> _KEY_SHIFT).astype(np.int32)]
        fh = self._floor_h[dev_local]
        floors = self._floors[dev_local]
        g = res["g_mps2"]
        falling = (
            (n >= p.min_points)
            & (res["duration_s"] >= p.min_duration_s)
            & (g >= p.g_min_mps2)
            & (g <= p.g_max_mps2)
            & (res["g_sigmas"] >= p.min_g_sigmas)
            & (res["residual_m"] <= p.max_residual_m)
            & (res["horizontal_residual_m"] <= p.max_horizontal_residual_m)
            & (np.abs(res["horizontal_speed_mps"]) <= p.max_horizontal_speed_mps)
            & (res["drop_m"] >= p.min_drop_m)
        )
        hit = np.flatnonzero(falling)
        if hit.size == 0:
            return Detections.empty()
        r = {k: v[hit] for k, v in res.items()}
        # release: the parabola's top, at most max_backtrack_s before the first point
        tau_first = r["t_first_s"] - r["t_mid_s"]
        tau_top = -r["b"] / (2 * r["c"])
        tau_rel = np.clip(tau_top, tau_first - p.max_backtrack_s, r["t_last_s"] - r["t_mid_s"])
        h_rel = r["a"] + r["b"] * tau_rel + r["c"] * tau_rel**2
        x_rel = r["d"] + r["e"] * tau_rel
        floor = np.clip(np.floor(h_rel / fh[hit]) + 1, 1, np.maximum(floors[hit], 1))
        tol = max(p.g_mps2 - p.g_min_mps2, p.g_max_mps2 - p.g_mps2)
        score = 1.0 - 0.5 * np.maximum(
            np.abs(r["g_mps2"] - p.g_mps2) / tol, r["residual_m"] / p.max_residual_m
        )
        s = slots[hit]
        key = self._key[s]
        tau_last = r["t_last_s"] - r["t_mid_s"]
        return Detections.of(
            DetectionKind.FALLING_OBJECT,
            self.index.devices[dev_local[hit]],
            self._last[s],
            score,
            origin_floor=floor,
            release_height_m=h_rel,
            facade_x_m=x_rel,
            release_ms=self._t0[s] + (tau_rel + r["t_mid_s"]) * MS_PER_S,
            g_fit_mps2=r["g_mps2"],
            g_sigmas=r["g_sigmas"],
            residual_m=r["residual_m"],
            horizontal_speed_mps=r["horizontal_speed_mps"],
            drop_m=r["drop_m"],
            duration_s=r["duration_s"],
            impact_speed_mps=np.abs(r["b"] + 2 * r["c"] * tau_last),
            points_count=n[hit],
            track_id=(key & ((1 << _KEY_SHIFT) - 1)).astype(np.float64),
        )

    # -- timer -------------------------------------------------------------------

    def tick(self, now_ms: int) -> Detections:
        """Close tracks silent for ``track_timeout_s`` (the tracker lost them, no ``end``)."""
        slots = self._sorted_slots
        stale = slots[now_ms - self._last[slots] > self.params.track_timeout_s * MS_PER_S]
        return self._close(stale)


def fit_tracks(
    t: npt.NDArray[np.float64],
    h: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64],
) -> dict[str, npt.NDArray[np.float64]]:
    """Weighted least squares for many padded tracks at once (``w`` = 1 on real points).

    Time is centred on each track's mean (``t_mid_s``) so the normal equations stay well
    conditioned. Returns per track the coefficients (``a``, ``b``, ``c`` of height in
    centred time; ``d``, ``e`` of horizontal), ``g_mps2`` = -2c and its significance
    ``g_sigmas``, RMS residuals, horizontal speed, fitted drop and duration.

    >>> tt = np.linspace(0, 1, 11)[None, :]
    >>> r = fit_tracks(tt, 50 - 9.81 * tt**2 / 2, 0 * tt, np.ones_like(tt))
    >>> round(float(r["g_mps2"][0]), 3), round(float(r["drop_m"][0]), 3)
    (9.81, 4.905)
    """
    # Every sum over a track's points is one einsum pass (no (tracks, points) temporary),
    # and residuals come from the normal equations (RSS = y'y - beta'X'y, exact for the
    # least-squares beta; the sums are centred, so cancellation costs ~1e-10 relative).
    n = w.sum(axis=1)
    nn = np.maximum(n, 1.0)
    mid = _rowdot(w, t) / nn
    tau = t - mid[:, None]
    tau *= w
    tau2 = tau * tau
    s1 = tau.sum(axis=1)
    s2 = tau2.sum(axis=1)
    s3 = _rowdot(tau2, tau)
    s4 = _rowdot(tau2, tau2)
    hw = h * w
    y0 = hw.sum(axis=1)
    y1 = _rowdot(hw, tau)
    y2 = _rowdot(hw, tau2)
    # Cramer's rule on [[n, s1, s2], [s1, s2, s3], [s2, s3, s4]] @ [a, b, c] = [y0, y1, y2]
    m00 = s2 * s4 - s3 * s3
    m01 = s1 * s4 - s3 * s2
    m02 = s1 * s3 - s2 * s2
    det = n * m00 - s1 * m01 + s2 * m02
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    a = (y0 * m00 - s1 * (y1 * s4 - s3 * y2) + s2 * (y1 * s3 - s2 * y2)) / det
    b = (n * (y1 * s4 - s3 * y2) - y0 * m01 + s2 * (s1 * y2 - y1 * s2)) / det
    c = (n * (s2 * y2 - y1 * s3) - s1 * (s1 * y2 - y1 * s2) + y0 * m02) / det
    rss = _rowdot(hw, h) - (a * y0 + b * y1 + c * y2)
    dof = np.maximum(n - 3, 1.0)
    resid = np.sqrt(np.maximum(rss, 0.0) / dof)
    # variance of c: sigma^2 * (inverse)[2, 2] = sigma^2 * (n s2 - s1^2) / det
    var_c = resid**2 * np.maximum(n * s2 - s1 * s1, 0.0) / det
    g = -2.0 * c
    g_sig = np.where(ok, np.abs(g) / np.maximum(2.0 * np.sqrt(var_c), 1e-9), 0.0)
    # horizontal: x = d + e tau
    xw = x * w
    sx = xw.sum(axis=1)
    sxt = _rowdot(xw, tau)
    dx = n * s2 - s1 * s1
    okx = dx > 1e-12
    e = np.where(okx, (n * sxt - s1 * sx) / np.where(okx, dx, 1.0), 0.0)
    d = (sx - e * s1) / nn
    xrss = _rowdot(xw, x) - (d * sx + e * sxt)
    xres = np.sqrt(np.maximum(xrss, 0.0) / np.maximum(n - 2, 1))
    # first / last point times (w is 1 on a prefix of each row)
    last_i = np.maximum(n.astype(np.int64) - 1, 0)
    rows = np.arange(t.shape[0])
    t_first = t[:, 0]
    t_last = t[rows, last_i]
    tf, tl = t_first - mid, t_last - mid
    drop = (a + b * tf + c * tf * tf) - (a + b * tl + c * tl * tl)
    return {
        "a": np.where(ok, a, np.nan),
        "b": np.where(ok, b, np.nan),
        "c": np.where(ok, c, np.nan),
        "d": d,
        "e": e,
        "g_mps2": np.where(ok, g, np.nan),
        "g_sigmas": g_sig,
        "residual_m": np.where(ok, resid, np.inf),
        "horizontal_residual_m": xres,
        "horizontal_speed_mps": e,
        "drop_m": np.where(ok, drop, 0.0),
        "duration_s": t_last - t_first,
        "t_mid_s": mid,
        "t_first_s": t_first,
        "t_last_s": t_last,
    }


def _rowdot(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Row-wise dot products of two ``(tracks, points)`` arrays, in one pass."""
    out: npt.NDArray[np.float64] = np.einsum("ij,ij->i", a, b)
    return out
