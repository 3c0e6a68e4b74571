"""High-altitude falling objects: one batched least-squares fit per closed camera track.

Points of a track (``track_id`` > 0) arrive one reading per frame, over several batches,
into an open-track pool keyed by ``(device, track_id)``. The pool keeps no points: a
least-squares fit needs only sums over them (the moments ``MOMENTS``: powers of time,
height and horizontal position times powers of time), so each point is added to its
track's running sums as it arrives (``np.add.at``: one unbuffered pass per moment, in row
order, so a track's sums are accumulated point by point in its own order whatever the
batching, and a split batch gives bit-identical state). A track closes on its ``end`` = 1
point (same ``update``, so the verdict comes with the last point) or after
``track_timeout_s`` without points (``tick``). All tracks closed together are solved at
once from their sums, ``O(tracks)``, whatever their lengths:

* height ``h(t) = a + b t + c t^2`` (``g' = -2c``) and horizontal drift ``x = d + e t``,
  from closed-form normal equations in time centred on each track's mean (the raw sums,
  in seconds since the track's first point, are centred exactly by the binomial
  formulas; no per-track solver call);
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

from detectors._core import CHUNK_ROWS, KindIndex
from detectors.config import HighfallParams
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry

MS_PER_S = 1000
_KEY_SHIFT = 32
_INITIAL_SLOTS = 256
_NO_TIME = np.iinfo(np.int64).max

MOMENTS = ("t", "t2", "t3", "t4", "h", "ht", "ht2", "hh", "x", "xt", "xx")
"""Per-track sums over its kept points, ``t`` in seconds since the track's first point:
``t2`` is the sum of t^2, ``ht`` of height * t, ``xx`` of horizontal^2, and so on."""
_T, _T2, _T3, _T4, _H, _HT, _HT2, _HH, _X, _XT, _XX = range(len(MOMENTS))
_PAIRS: tuple[tuple[int, int | None], ...] = (
    (_T, _T2),
    (_T3, _T4),
    (_H, _X),
    (_HT, _XT),
    (_HT2, _HH),
    (_XX, None),
)
"""How the pool stores the moments: (real part, imaginary part) of each complex sum."""


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
        # one spare column of sums (index cap): points beyond a track's max_points are
        # added there (and never read) instead of being filtered out of the columns
        # the moments in pairs, one complex number each (``_PAIRS``): np.add.at adds
        # both halves in one pass, and complex addition is exactly two real additions
        self._sums = np.zeros((len(_PAIRS), cap + 1), dtype=np.complex128)
        self._n = np.zeros(cap, dtype=np.int32)
        self._t0 = np.zeros(cap, dtype=np.int64)
        self._last = np.zeros(cap, dtype=np.int64)
        self._full = np.full(cap, _NO_TIME, dtype=np.int64)  # time of the max_points-th point
        self._key = np.full(cap, -1, dtype=np.int64)
        self._used = np.zeros(cap, dtype=np.bool_)

    @property
    def _cap(self) -> int:
        return int(self._key.size)

    def _grow(self, need: int) -> None:
        cap = self._cap
        new_cap = cap
        while new_cap < need:
            new_cap *= 2
        if new_cap == cap:
            return
        old: list[npt.NDArray[Any]] = [
            self._sums,
            self._n,
            self._t0,
            self._last,
            self._full,
            self._key,
            self._used,
        ]
        self._alloc(new_cap)
        new: list[npt.NDArray[Any]] = [
            self._sums,
            self._n,
            self._t0,
            self._last,
            self._full,
            self._key,
            self._used,
        ]
        for dst, src in zip(new, old, strict=True):
            dst[..., :cap] = src[..., :cap]

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
        """Open tracks sorted by key: the same tracks give the same state, whatever slots.

        ``moments_`` holds each track's sums (columns in ``MOMENTS`` order); ``full_ms_``
        the time of its ``max_points``-th point (int64 max until then).
        """
        s = self._sorted_slots
        return {
            "key_": self._key[s].copy(),
            "n_points_": self._n[s].copy(),
            "t0_ms_": self._t0[s].copy(),
            "last_ms_": self._last[s].copy(),
            "full_ms_": self._full[s].copy(),
            "moments_": np.ascontiguousarray(self._moments(s).T),
        }

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        names = set(self.state())
        if set(state) != names:
            hint = (
                " (a version 2 checkpoint's point arrays: see detectors.highfall.state_from_points)"
                if "t_s_" in state
                else ""
            )
            raise ValueError(
                f"highfall state does not match: missing {sorted(names - set(state))}, "
                f"unexpected {sorted(set(state) - names)}{hint}"
            )
        key = np.asarray(state["key_"], dtype=np.int64)
        m = key.size
        if np.shape(state["moments_"]) != (m, len(MOMENTS)):
            raise ValueError(
                f"highfall state 'moments_': expected shape {(m, len(MOMENTS))}, "
                f"got {np.shape(state['moments_'])}"
            )
        for name in ("n_points_", "t0_ms_", "last_ms_", "full_ms_"):
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
        self._full[:m] = state["full_ms_"]
        moments = np.asarray(state["moments_"], dtype=np.float64).T
        for i, (re, im) in enumerate(_PAIRS):
            self._sums[i, :m].real = moments[re]
            if im is not None:
                self._sums[i, :m].imag = moments[im]
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
        if int(track.min()) <= 0:  # heartbeats and other rows without a track
            rows = np.flatnonzero(track > 0)
            if rows.size == 0:
                return Detections.empty()
            track, device, ts = track[rows], device[rows], ts[rows]
            h, x, end = h[rows], x[rows], end[rows]
        cam = self.index.local(device)  # also rejects devices of another kind
        end = end >= 0.5
        keys = device.astype(np.int64) << _KEY_SHIFT
        keys |= track if track.dtype == np.int64 else track.astype(np.int64)
        # finite sums (float64, of float32 values: no overflow) mean every value is finite
        finite = np.isfinite(
            np.add.reduce(h, dtype=np.float64) + np.add.reduce(x, dtype=np.float64)
        )
        point = None if finite else np.isfinite(h) & np.isfinite(x)

        parts: list[Detections] = []
        slot = np.full(keys.size, -1, dtype=np.intp)
        if point is None:
            closed, slot = self._append(keys, cam, ts, h, x)
            parts.append(closed)
        elif point.any():  # (rows with NaN or infinite coordinates are not points)
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
            parts.append(self._close(es[es >= 0]))
        return Detections.concat(parts)

    def _append(
        self,
        keys: npt.NDArray[np.int64],
        cam: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        h: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
    ) -> tuple[Detections, npt.NDArray[np.intp]]:
        """Add points to their tracks' sums, opening slots for new tracks.

        No grouping by track: every per-track update is an unbuffered scatter
        (``np.add.at``, ``np.maximum.at``) in row order. Only rows of tracks that pass
        ``max_points`` in this batch are ranked within their track (a small sort), to
        keep the first points. Returns the tracks closed to make room and each row's slot.
        """
        closed = Detections.empty()
        # A camera rarely tracks two objects at once: try its latest track's slot first.
        slot = self._cam_slot[cam]
        miss = np.flatnonzero(self._key[slot] != keys)
        if miss.size:
            closed, found = self._resolve(keys[miss], cam[miss], ts[miss], slot, miss)
            slot[miss] = found
            self._cam_slot[cam[miss]] = found  # a cache: any of a camera's slots will do
        m = slot.size
        n_before = self._n.copy()
        np.add.at(self._n, slot, np.ones(m, dtype=np.int32))  # (a scalar 1 is ~30x slower)
        np.maximum.at(self._last, slot, ts)
        p = self.params.max_points
        into = slot
        if int(self._n.max()) >= p:
            into = self._cap_points(slot, ts, p, n_before)
        for lo in range(0, m, CHUNK_ROWS):  # a chunk's temporaries stay in cache
            hi = min(lo + CHUNK_ROWS, m)
            self._add_moments(slot[lo:hi], into[lo:hi], ts[lo:hi], h[lo:hi], x[lo:hi])
        return closed, slot

    def _moments(self, slots: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """The moments of ``slots``, ``(len(MOMENTS), slots)``."""
        out = np.zeros((len(MOMENTS), slots.size), dtype=np.float64)
        for i, (re, im) in enumerate(_PAIRS):
            c = self._sums[i, slots]
            out[re] = c.real
            if im is not None:
                out[im] = c.imag
        return out

    def _add_moments(
        self,
        slot: npt.NDArray[np.intp],
        into: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        h: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
    ) -> None:
        """Add rows' terms to the sums of slots ``into`` (time since ``slot``'s start).

        Each pair of terms is written into the halves of one complex buffer and added
        with one ``np.add.at``; products are float64 (float32 inputs are widened)."""
        t = np.subtract(ts, self._t0[slot], dtype=np.float64)  # exact: ms below 2^53
        t *= 1.0 / MS_PER_S
        t2 = t * t
        c = np.empty(t.size, dtype=np.complex128)
        re, im = c.real, c.imag
        sums = self._sums
        f64 = np.float64
        re[...], im[...] = t, t2
        np.add.at(sums[0], into, c)
        np.multiply(t2, t, out=re)
        np.multiply(t2, t2, out=im)
        np.add.at(sums[1], into, c)
        re[...], im[...] = h, x
        np.add.at(sums[2], into, c)
        np.multiply(h, t, out=re, dtype=f64)
        np.multiply(x, t, out=im, dtype=f64)
        np.add.at(sums[3], into, c)
        np.multiply(h, t2, out=re, dtype=f64)
        np.multiply(h, h, out=im, dtype=f64)
        np.add.at(sums[4], into, c)
        np.multiply(x, x, out=re, dtype=f64)
        im[...] = 0.0
        np.add.at(sums[5], into, c)

    def _cap_points(
        self,
        slot: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        p: int,
        n_before: npt.NDArray[np.int32],
    ) -> npt.NDArray[np.intp]:
        """Rows' target slots, points beyond a track's first ``p`` sent to the spare slot;
        counts are capped at ``p`` and the time of each track's ``p``-th point recorded.

        ``self._n`` already counts this batch's rows (``n_before`` did not). Rows of
        tracks full before the batch are all dropped; only rows of tracks that reach
        ``p`` in this batch are ranked within their track (a stable sort by slot of those
        rows alone: rows of one track keep their order).
        """
        n = self._n
        full = n_before >= p
        into = slot
        if full.any():
            into = np.where(full[slot], self._cap, slot)
        reach = n >= p
        reach &= ~full
        if reach.any():
            rows = np.flatnonzero(reach[slot])
            sub = slot[rows]
            small = np.uint16 if self._cap <= 1 << 16 else np.uint32  # radix: 16 bits
            order = np.argsort(sub.astype(small), kind="stable")
            rows, sub = rows[order], sub[order]
            first = np.empty(sub.size, dtype=np.bool_)
            first[0] = True
            np.not_equal(sub[1:], sub[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            counts = np.diff(np.append(starts, sub.size))
            before = np.repeat(n_before[sub[starts]], counts)
            pos = before + (np.arange(sub.size) - np.repeat(starts, counts))
            if into is slot:
                into = slot.copy()
            into[rows[pos >= p]] = self._cap  # the spare slot: added, never read
            fills = np.flatnonzero(pos == p - 1)
            self._full[sub[fills]] = ts[rows[fills]]
        np.minimum(n, p, out=n)
        return into

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
            self._grow(self._cap + keys.size)
            free = np.flatnonzero(~self._used)
        got = free[: keys.size]
        self._used[got] = True
        self._key[got] = keys
        self._n[got] = 0
        self._sums[:, got] = 0.0
        self._last[got] = first_ts
        self._full[got] = _NO_TIME
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
        if slots.size > 1:  # distinct (several end rows of one track close it once)
            slots = slots[np.append(True, slots[1:] != slots[:-1])]
        det = self.fit(slots)
        self._used[slots] = False
        self._key[slots] = -1  # never matches a real key (the camera cache checks keys)
        self._n[slots] = 0  # (so only open tracks can be full: see _cap_points)
        self._drop_unused()
        return det

    # -- the batched fit -----------------------------------------------------------

    def fit(self, slots: npt.NDArray[np.intp]) -> Detections:
        """Fit and classify the given open tracks; falling objects as detections."""
        p = self.params
        n = self._n[slots]
        t_last = (np.minimum(self._last[slots], self._full[slots]) - self._t0[slots]) * (
            1.0 / MS_PER_S
        )
        res = solve_moments(n.astype(np.float64), self._moments(slots), t_last)
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
    """Weighted least squares for many padded tracks at once (``w`` = 1 on real points,
    a prefix of each row).

    The moments (``MOMENTS``, time since each track's first point) are summed with one
    einsum pass each, then solved by ``solve_moments`` as the detector's running sums
    are; times in the result are back in ``t``'s time base. Returns per track the
    coefficients (``a``, ``b``, ``c`` of height in time centred on the track's mean
    ``t_mid_s``; ``d``, ``e`` of horizontal), ``g_mps2`` = -2c and its significance
    ``g_sigmas``, RMS residuals, horizontal speed, fitted drop and duration.

    >>> tt = np.linspace(0, 1, 11)[None, :]
    >>> r = fit_tracks(tt, 50 - 9.81 * tt**2 / 2, 0 * tt, np.ones_like(tt))
    >>> round(float(r["g_mps2"][0]), 3), round(float(r["drop_m"][0]), 3)
    (9.81, 4.905)
    """
    n = w.sum(axis=1)
    t_first = t[:, 0]
    u = t - t_first[:, None]
    u *= w
    u2 = u * u
    hw = h * w
    xw = x * w
    sums = np.stack(
        [
            u.sum(axis=1),
            u2.sum(axis=1),
            _rowdot(u2, u),
            _rowdot(u2, u2),
            hw.sum(axis=1),
            _rowdot(hw, u),
            _rowdot(hw, u2),
            _rowdot(hw, h),
            xw.sum(axis=1),
            _rowdot(xw, u),
            _rowdot(xw, x),
        ]
    )
    last_i = np.maximum(n.astype(np.int64) - 1, 0)
    t_last = t[np.arange(t.shape[0]), last_i]
    res = solve_moments(n, sums, t_last - t_first)
    for k in ("t_mid_s", "t_first_s", "t_last_s"):
        res[k] = res[k] + t_first
    return res


def solve_moments(
    n: npt.NDArray[np.float64],
    sums: npt.NDArray[np.float64],
    t_last: npt.NDArray[np.float64],
) -> dict[str, npt.NDArray[np.float64]]:
    """The least-squares fits of tracks from their moments (``sums``: ``MOMENTS`` rows,
    one column per track, time in seconds since each track's first point; ``n`` points,
    the last at ``t_last``). See ``fit_tracks`` for what it returns.

    The raw sums are centred on each track's mean time exactly (binomial expansion), so
    the normal equations stay well conditioned; residuals come from the normal equations
    (RSS = y'y - beta'X'y, exact for the least-squares beta; ~1e-10 relative error).
    """
    st, st2, st3, st4, sh, sht, sht2, shh, sx, sxt, sxx = sums
    nn = np.maximum(n, 1.0)
    mid = st / nn
    mid2 = mid * mid
    # centred moments: s1 = sum(tau) is 0, s2..s4 and y1, y2 from the raw sums
    s2 = st2 - mid * st
    s3 = st3 - 3.0 * mid * st2 + 2.0 * mid2 * st
    s4 = st4 - 4.0 * mid * st3 + 6.0 * mid2 * st2 - 3.0 * mid2 * mid * st
    y0 = sh
    y1 = sht - mid * sh
    y2 = sht2 - 2.0 * mid * sht + mid2 * sh
    # Cramer's rule on [[n, 0, s2], [0, s2, s3], [s2, s3, s4]] @ [a, b, c] = [y0, y1, y2]
    m00 = s2 * s4 - s3 * s3
    det = n * m00 - s2 * s2 * s2
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    a = (y0 * m00 + s2 * (y1 * s3 - s2 * y2)) / det
    b = (n * (y1 * s4 - s3 * y2) + y0 * s3 * s2 - s2 * s2 * y1) / det
    c = (n * (s2 * y2 - y1 * s3) - y0 * s2 * s2) / det
    rss = shh - (a * y0 + b * y1 + c * y2)
    dof = np.maximum(n - 3, 1.0)
    resid = np.sqrt(np.maximum(rss, 0.0) / dof)
    # variance of c: sigma^2 * (inverse)[2, 2] = sigma^2 * n s2 / det
    var_c = resid**2 * np.maximum(n * s2, 0.0) / det
    g = -2.0 * c
    g_sig = np.where(ok, np.abs(g) / np.maximum(2.0 * np.sqrt(var_c), 1e-9), 0.0)
    # horizontal: x = d + e tau
    sxc = sxt - mid * sx
    dx = n * s2
    okx = dx > 1e-12
    e = np.where(okx, (n * sxc) / np.where(okx, dx, 1.0), 0.0)
    d = sx / nn
    xrss = sxx - (d * sx + e * sxc)
    xres = np.sqrt(np.maximum(xrss, 0.0) / np.maximum(n - 2, 1))
    tf, tl = -mid, t_last - mid
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
        "duration_s": np.asarray(t_last, dtype=np.float64).copy(),
        "t_mid_s": mid,
        "t_first_s": np.zeros_like(mid),
        "t_last_s": np.asarray(t_last, dtype=np.float64).copy(),
    }


def state_from_points(state: Mapping[str, npt.NDArray[Any]], max_points: int) -> dict[str, Any]:
    """A version-2 checkpoint's highfall state (each open track's first points, padded)
    in the version-3 layout: the moments, summed point by point in track order as
    ``update`` does (times were stored as float32 seconds, so the sums match a live
    pool's to float32 precision)."""
    key = np.asarray(state["key_"], dtype=np.int64).reshape(-1)
    m = key.size
    n = np.asarray(state["n_points_"], dtype=np.int32).reshape(-1)
    t0 = np.asarray(state["t0_ms_"], dtype=np.int64).reshape(-1)
    last = np.asarray(state["last_ms_"], dtype=np.int64).reshape(-1)
    t = np.asarray(state["t_s_"], dtype=np.float64)
    h = np.asarray(state["height_m_"], dtype=np.float64)
    x = np.asarray(state["horizontal_m_"], dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != m or h.shape != t.shape or x.shape != t.shape:
        raise ValueError(f"point arrays of shape {t.shape}, {h.shape}, {x.shape} for {m} tracks")
    if n.size != m or t0.size != m or last.size != m:
        raise ValueError(f"per-track arrays of sizes {n.size}, {t0.size}, {last.size}, not {m}")
    p = t.shape[1]
    n = np.minimum(n, min(p, max_points))
    first = t[:, 0] if p else np.zeros(m)
    sums = np.zeros((len(MOMENTS), m), dtype=np.float64)
    for j in range(min(p, max_points)):
        on = j < n
        tj = t[:, j] - first
        hj, xj = h[:, j], x[:, j]
        terms = (tj, tj * tj, tj * tj * tj, (tj * tj) * (tj * tj))
        terms += (hj, hj * tj, hj * (tj * tj), hj * hj, xj, xj * tj, xj * xj)
        for row, v in enumerate(terms):
            sums[row] += np.where(on, v, 0.0)
    t_start = t0 + np.round(first * MS_PER_S).astype(np.int64)
    kept_last = t[np.arange(m), np.maximum(n - 1, 0)] if p else np.zeros(m)
    full = np.where(n >= max_points, t0 + np.round(kept_last * MS_PER_S).astype(np.int64), _NO_TIME)
    return {
        "key_": key,
        "n_points_": n.astype(np.int32),
        "t0_ms_": t_start,
        "last_ms_": last,
        "full_ms_": full.astype(np.int64),
        "moments_": np.ascontiguousarray(sums.T),
    }


def _rowdot(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Row-wise dot products of two ``(tracks, points)`` arrays, in one pass."""
    out: npt.NDArray[np.float64] = np.einsum("ij,ij->i", a, b)
    return out
