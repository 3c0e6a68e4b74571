"""Facade cameras: heartbeats for the whole fleet, tracks for the few that see something.

Every camera sends a heartbeat (``track_id`` 0, no point) every ``interval_s``. When an
event fires (a thrown object, a bird, ...), its whole track is computed at once
(``sim.tracks``) and its points wait in a small buffer until the simulation reaches
their timestamps, so each point is emitted with its own ``ts``, frame by frame.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from sim import tracks
from sim.faults import FaultKind, LabelBook
from sim.schedule import Event

_TRACKERS: dict[FaultKind, Callable[[np.random.Generator, tracks.View], tracks.Track | None]] = {
    FaultKind.FALLING_OBJECT: tracks.falling_object,
    FaultKind.BIRD: tracks.bird,
    FaultKind.LEAF: tracks.leaf,
    FaultKind.INSECT: tracks.insect,
    FaultKind.RAIN_STREAK: tracks.rain_streak,
}


class CameraModel:
    """Every facade camera of a registry; see the module docstring."""

    kind = DeviceKind.HIGHFALL

    def __init__(
        self, registry: Registry, rng: np.random.Generator, start_ms: int, labels: LabelBook
    ) -> None:
        self.dev = registry.devices_of_kind(DeviceKind.HIGHFALL)
        n = self.dev.size
        self.n = n
        self._local = np.full(len(registry), -1, np.int64)
        self._local[self.dev] = np.arange(n)
        self.labels = labels
        fl = registry.floors[self.dev].astype(np.int64)
        self.floors = np.where(fl >= 3, fl, 6)
        fh = registry.floor_height_m[self.dev].astype(np.float64)
        self.fh = np.where(np.isfinite(fh) & (fh > 0), fh, 3.0)
        top = self.floors * self.fh
        partial = rng.random(n) < 0.25
        self.view_top = np.where(partial, top - rng.uniform(3, 12, n), top + 3)
        self.view_bottom = rng.uniform(0, 4, n)
        self.width = rng.uniform(20, 60, n)
        self.frame_ms = np.asarray(tracks.FRAME_MS)[rng.integers(0, len(tracks.FRAME_MS), n)]
        self.interval_ms = np.maximum(
            1, np.round(registry.interval_s[self.dev].astype(np.float64) * 1000)
        ).astype(np.int64)
        self.next_due = start_ms + rng.integers(1, self.interval_ms + 1)
        self.track_seq = np.zeros(n, np.int64)
        self.busy = np.zeros(n, bool)
        self.off_s = np.zeros(n, np.int64)
        self.off_e = np.zeros(n, np.int64)
        self._timers: list[tuple[int, int]] = []
        self._pts: list[
            tuple[int, npt.NDArray[np.int64], int, npt.NDArray[np.float64], npt.NDArray[np.float64]]
        ] = []

    def view(self, li: int) -> tracks.View:
        return tracks.View(
            float(self.view_bottom[li]),
            float(self.view_top[li]),
            float(self.width[li]),
            int(self.frame_ms[li]),
            int(self.floors[li]),
            float(self.fh[li]),
        )

    def activate(self, ev: Event) -> bool:
        li = int(self._local[ev.device])
        if self.busy[li]:
            return False
        r = np.random.default_rng(ev.seed)
        if ev.kind is FaultKind.OFFLINE:
            end = ev.start_ms + int(r.uniform(10, 60) * 60_000)
            self.off_s[li], self.off_e[li] = ev.start_ms, end
            self.labels.add(
                ev.device,
                ev.kind,
                ev.start_ms,
                end,
                observable_ms=ev.start_ms + 3 * int(self.interval_ms[li]),
            )
        else:
            make = _TRACKERS.get(ev.kind)
            track = make(r, self.view(li)) if make else None
            if track is None:
                return False
            self.track_seq[li] += 1
            tid = int(self.track_seq[li])
            ts = ev.start_ms + track.t_ms
            end = ev.start_ms + track.end_ms
            extra = dict(track.extra)
            if "impact_ms_after_start" in extra:
                extra["impact_ms"] = ev.start_ms + extra.pop("impact_ms_after_start")
            self.labels.add(
                ev.device,
                ev.kind,
                ev.start_ms,
                end,
                track_id=tid,
                first_point_ms=int(ts[0]),
                last_point_ms=int(ts[-1]),
                n_points=int(ts.size),
                observable_ms=int(ts[-1]),
                **extra,
            )
            self._pts.append((int(self.dev[li]), ts, tid, track.height_m, track.horizontal_m))
        self.busy[li] = True
        heapq.heappush(self._timers, (end, li))
        return True

    def tick(self, t0: int, rng: np.random.Generator) -> ReadingBatch:
        """Heartbeats due and track points with ts in ``(t0, t0 + 1000]``, in time order."""
        del rng  # heartbeats carry no measurement, so no noise
        tend = t0 + 1000
        sel = np.flatnonzero(self.next_due <= tend)
        idx_parts, ts_parts = [], []
        while sel.size:
            idx_parts.append(sel)
            ts_parts.append(self.next_due[sel].copy())
            self.next_due[sel] += self.interval_ms[sel]
            sel = sel[self.next_due[sel] <= tend]
        idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
        ts = np.concatenate(ts_parts) if ts_parts else np.zeros(0, np.int64)
        keep = ~((ts >= self.off_s[idx]) & (ts < self.off_e[idx]))
        idx, ts = idx[keep], ts[keep]
        n = idx.size
        nan = np.full(n, np.nan, np.float32)
        dev = self.dev[idx]
        track = np.zeros(n, np.int64)
        h, x, end = nan, nan, nan
        if self._pts:
            pd, pt, ptr, ph, px, pe = [dev], [ts], [track], [h], [x], [end]
            rest = []
            for d, tsa, tid, ha, xa in self._pts:
                m = tsa <= tend
                if m.any():
                    k = int(m.sum())
                    pd.append(np.full(k, d, np.int32))
                    pt.append(tsa[:k])
                    ptr.append(np.full(k, tid, np.int64))
                    ph.append(ha[:k].astype(np.float32))
                    px.append(xa[:k].astype(np.float32))
                    e = np.zeros(k, np.float32)
                    if k == tsa.size:
                        e[-1] = 1.0
                    pe.append(e)
                if not m.all():
                    k = int(m.sum())
                    rest.append((d, tsa[k:], tid, ha[k:], xa[k:]))
            self._pts = rest
            if len(pd) > 1:
                dev, ts = np.concatenate(pd), np.concatenate(pt)
                order = np.argsort(ts, kind="stable")
                dev, ts = dev[order], ts[order]
                track = np.concatenate(ptr)[order]
                h = np.concatenate(ph)[order]
                x = np.concatenate(px)[order]
                end = np.concatenate(pe)[order]
        while self._timers and self._timers[0][0] <= tend:
            _, li = heapq.heappop(self._timers)
            self.busy[li] = False
        return ReadingBatch(
            DeviceKind.HIGHFALL,
            dev.astype(np.int32, copy=False),
            ts,
            {"track_id": track, "height_m": h, "horizontal_m": x, "end": end},
        )
