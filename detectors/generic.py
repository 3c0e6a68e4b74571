"""Generic checks for every device: streaming anomaly score, plausible range, stuck, offline.

The per-field checks are configured per device kind (``[generic.channels.KIND.FIELD]``);
the offline check covers every device of the registry and runs on a timer (``tick``),
vectorised over the whole fleet, because a silent device sends nothing to react to.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from detectors._core import (
    CHUNK_ROWS,
    BatchPlan,
    KindIndex,
    Round,
    StateArrays,
    checked_state,
    run_slice,
)
from detectors.config import ChannelParams, GenericParams
from detectors.robust import RobustScorer
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry

MS_PER_S = 1000


def split_unit(field: str) -> tuple[str, str]:
    """``"vibration_mps2"`` -> ``("vibration", "mps2")``: evidence names keep the unit last."""
    base, _, unit = field.rpartition("_")
    return (base, unit) if base else (field, "")


def evidence_name(field: str, what: str) -> str:
    base, unit = split_unit(field)
    return f"{base}_{what}_{unit}" if unit else f"{base}_{what}"


def registry_bound(
    registry: Registry, devices: npt.NDArray[np.int32], ref: str
) -> npt.NDArray[Any]:
    if ref == "shaft_top_m":
        return (registry.floors[devices].astype(np.float64) - 1) * registry.floor_height_m[devices]
    return np.asarray(getattr(registry, ref)[devices], dtype=np.float64)


class _Stuck(StateArrays):
    """Run of identical values per device, packed in one uint64 per device.

    Bits 32-63 hold the last value's float32 bits, bits 8-31 the run's start in seconds
    from ``epoch_ms`` (mod 2^24, about 194 days: runs are measured correctly up to that),
    bits 0-7 the readings in the run (saturating at 255). One gather and one scatter a
    batch instead of three of each.
    """

    def __init__(self, n: int) -> None:
        self.run_ = np.full(n, _NAN_BITS << 32, dtype=np.uint64)
        self.epoch_ms_ = np.full(1, -1, dtype=np.int64)


_NAN_BITS = 0x7FC00000
_START_MASK = (1 << 24) - 1
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)
"""Which uint32 half of a run_ entry holds start << 8 | count (_LO) and the value (_HI)."""


@dataclass
class _Channel:
    field: str
    params: ChannelParams
    scorer: RobustScorer | None
    stuck: _Stuck | None
    lo: float
    hi: npt.NDArray[np.float64]  # per local device; inf when unbounded
    hi_min: float = np.inf


class GenericDetector:
    """Checks every configured numeric channel of one device kind, plus fleet-wide offline.

    One instance per device kind (``kind`` is set per instance); ``tick`` reports offline
    devices of that kind.
    """

    kind: ClassVar[str] = "generic"

    def __init__(self, registry: Registry, device_kind: DeviceKind, params: GenericParams) -> None:
        self.params = params
        self.device_kind = device_kind
        self.index = KindIndex(registry, device_kind)
        n = self.index.size
        self._interval_ms = registry.interval_s[self.index.devices].astype(np.float64) * MS_PER_S
        self.last_seen_ms_ = np.full(n, -1, dtype=np.int64)
        self.started_ms_ = np.full(1, -1, dtype=np.int64)
        self.channels: list[_Channel] = []
        for field, cp in params.channels.get(device_kind, {}).items():
            hi = np.full(n, np.inf if cp.hi is None else cp.hi, dtype=np.float64)
            if cp.hi_ref is not None and cp.hi_ref_margin is not None:
                ref = registry_bound(registry, self.index.devices, cp.hi_ref) + cp.hi_ref_margin
                hi = np.fmin(hi, ref)  # NaN registry data leaves the fixed bound
            ch = _Channel(
                field=field,
                params=cp,
                scorer=None,
                stuck=_Stuck(n) if cp.stuck_readings is not None else None,
                lo=-np.inf if cp.lo is None else cp.lo,
                hi=hi,
            )
            ch.hi_min = float(hi.min()) if hi.size else np.inf
            if cp.score:
                ch.scorer = RobustScorer(
                    n,
                    warmup_readings=params.warmup_readings,
                    alpha=params.alpha,
                    trend_beta=params.trend_beta,
                    huber_k=params.huber_k,
                    score_z_lo=params.score_z_lo,
                    score_z_hi=params.score_z_hi,
                    shift_z=params.shift_z,
                    shift_readings=params.shift_readings,
                    min_scale=cp.min_scale,
                )
            self.channels.append(ch)

    @classmethod
    def from_config(
        cls, registry: Registry, device_kind: DeviceKind, params: GenericParams
    ) -> GenericDetector:
        return cls(registry, device_kind, params)

    # -- state -------------------------------------------------------------------

    def state(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {
            "last_seen_ms_": self.last_seen_ms_.copy(),
            "started_ms_": self.started_ms_.copy(),
        }
        for ch in self.channels:
            for part, obj in (("score", ch.scorer), ("stuck", ch.stuck)):
                if obj is not None:
                    out.update({f"{ch.field}.{part}.{k}": v for k, v in obj.state().items()})
        return out

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        new = checked_state(f"generic[{self.device_kind.value}]", self.state(), state)
        self.last_seen_ms_ = new["last_seen_ms_"]
        self.started_ms_ = new["started_ms_"]
        for ch in self.channels:
            for part, obj in (("score", ch.scorer), ("stuck", ch.stuck)):
                if obj is not None:
                    prefix = f"{ch.field}.{part}."
                    obj.load_state(
                        {k[len(prefix) :]: v for k, v in new.items() if k.startswith(prefix)}
                    )

    # -- streaming ---------------------------------------------------------------

    def update(self, batch: ReadingBatch) -> Detections:
        """Detections of ``batch`` (``update_scores`` also returns the per-row scores)."""
        if batch.kind != self.device_kind:
            raise ValueError(f"generic[{self.device_kind.value}] got a {batch.kind.value} batch")
        if len(batch) == 0:
            return Detections.empty()
        return self.update_plan(BatchPlan(batch, self.index))

    def update_scores(
        self, batch: ReadingBatch
    ) -> tuple[Detections, dict[str, npt.NDArray[np.float32]]]:
        """Detections, and each scored channel's per-row anomaly score (NaN: not scored)."""
        if batch.kind != self.device_kind:
            raise ValueError(f"generic[{self.device_kind.value}] got a {batch.kind.value} batch")
        n = len(batch)
        scores = {
            ch.field: np.full(n, np.nan, dtype=np.float32)
            for ch in self.channels
            if ch.scorer is not None
        }
        if n == 0:
            return Detections.empty(), scores
        det = self.update_plan(BatchPlan(batch, self.index), scores)
        return det, scores

    def update_plan(
        self, plan: BatchPlan, scores: dict[str, npt.NDArray[np.float32]] | None = None
    ) -> Detections:
        """``update`` with the batch's plan already computed; per-row scores go into
        ``scores`` when given (see ``update_scores``)."""
        if scores is None:
            scores = {}
        first = int(plan.batch.ts_ms.min())  # a min: the same whatever the batching
        if self.started_ms_[0] < 0 or first < self.started_ms_[0]:
            self.started_ms_[0] = first
        if not self.channels:  # only the offline check's last report: no rounds needed
            # the latest reading per device (rows of a device are in time order anyway)
            np.maximum.at(self.last_seen_ms_, plan.loc, plan.batch.ts_ms)
            return Detections.empty()
        parts: list[Detections] = []
        for r in plan.rounds:
            self._step(r, scores, parts)
        return Detections.concat(parts)

    def _step(
        self,
        r: Round,
        scores: dict[str, npt.NDArray[np.float32]],
        parts: list[Detections],
    ) -> None:
        """One round, in chunks of ``CHUNK_ROWS`` rows.

        Every check is per row (a round holds each device at most once), so chunks are
        independent and give bit-identical results; a chunk's temporaries stay in the
        core's cache, where a whole fleet batch's (dozens of passes over megabytes)
        would stream through memory. Detections keep the unchunked order: per channel,
        anomaly scores, then range, then stuck.
        """
        loc = r.loc
        chans = [ch for ch in self.channels if r.has(ch.field)]
        for ch in chans:
            if ch.stuck is not None and ch.stuck.epoch_ms_[0] < 0:
                x = r.col(ch.field)
                ok = np.isfinite(x)  # the first finite reading's second starts the epoch
                if ok.any():
                    first = int(r.ts_ms[ok].min())
                    ch.stuck.epoch_ms_[0] = (first // MS_PER_S) * MS_PER_S
        found: list[list[Detections]] = [[] for _ in range(3 * len(chans))]
        # whole columns first: their gathers read the batch at random rows, fast while
        # its columns are in cache (per chunk, they were evicted by the chunk's work)
        ts = r.ts_ms
        self.last_seen_ms_[run_slice(loc)] = ts
        cols = [r.col(ch.field) for ch in chans]
        m = loc.size
        for lo in range(0, m, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, m)
            c_loc, c_ts = loc[lo:hi], ts[lo:hi]
            c_rows = None if r.rows is None else r.rows[lo:hi]
            for k, ch in enumerate(chans):
                self._channel(
                    ch,
                    cols[k][lo:hi],
                    c_loc,
                    c_ts,
                    c_rows,
                    lo,
                    scores,
                    found[3 * k : 3 * k + 3],
                )
        parts.extend(Detections.concat(f) for f in found if f)

    def _channel(  # noqa: PLR0917
        self,
        ch: _Channel,
        x: npt.NDArray[Any],
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        rows: npt.NDArray[np.intp] | None,
        base: int,
        scores: dict[str, npt.NDArray[np.float32]],
        found: list[list[Detections]],
    ) -> None:
        """One channel's checks on rows of distinct devices (``rows``: their batch rows;
        None: batch rows ``base`` on); detections go to ``found`` (score, range, stuck)."""
        devices = self.index.devices
        cloc, cts = loc, ts
        sel: npt.NDArray[np.intp] | None = None
        # a finite sum means every value is finite (NaN and inf propagate), and float32
        # values cannot overflow a float64 sum: one read pass, no mask, in the usual case
        if not np.isfinite(np.add.reduce(x, dtype=np.float64)):
            sel = np.flatnonzero(np.isfinite(x))
            x, cloc, cts = x[sel], loc[sel], ts[sel]
        if x.size == 0:
            return
        x64 = x.astype(np.float64)
        at_state = cloc if sel is not None else run_slice(cloc)
        if ch.scorer is not None:
            score, z, expected, scale = ch.scorer.update(at_state, x64)
            col_scores = scores.get(ch.field)
            if col_scores is not None:
                if rows is None:
                    at = np.arange(base, base + loc.size) if sel is None else sel + base
                else:
                    at = rows if sel is None else rows[sel]
                col_scores[at] = score
            emit = self.params.emit_score
            if emit > 0:  # only rows the scorer flagged can reach it
                sc = ch.scorer.scored
                hit = sc[score[sc] >= emit]
            else:
                hit = np.flatnonzero(score >= emit)
            if hit.size:
                found[0].append(
                    Detections.of(
                        DetectionKind.ANOMALY_SCORE,
                        devices[cloc[hit]],
                        cts[hit],
                        score[hit],
                        **{
                            ch.field: x64[hit],
                            evidence_name(ch.field, "expected"): expected[hit],
                            evidence_name(ch.field, "scale"): scale[hit],
                            "z_sigmas": z[hit],
                        },
                    )
                )
        # per-device upper bounds are gathered only for values above the lowest one
        maybe = np.flatnonzero((x64 < ch.lo) | (x64 > ch.hi_min))
        if maybe.size:
            hi = ch.hi[cloc[maybe]]
            xm = x64[maybe]
            bad = np.flatnonzero((xm < ch.lo) | (xm > hi))
            if bad.size:
                rows_bad = maybe[bad]
                range_ev: dict[str, Any] = {
                    ch.field: xm[bad],
                    evidence_name(ch.field, "min"): ch.lo,
                    evidence_name(ch.field, "max"): hi[bad],
                }
                found[1].append(
                    Detections.of(
                        DetectionKind.OUT_OF_RANGE,
                        devices[cloc[rows_bad]],
                        cts[rows_bad],
                        1.0,
                        **range_ev,
                    )
                )
        if ch.stuck is not None:
            found[2].append(self._stuck(ch, ch.stuck, cloc, x, cts, at_state=at_state))

    def _stuck(
        self,
        ch: _Channel,
        st: _Stuck,
        loc: npt.NDArray[np.intp],
        x: npt.NDArray[Any],
        ts: npt.NDArray[np.int64],
        *,
        at_state: npt.NDArray[np.intp] | slice,
    ) -> Detections:
        """Stuck runs of ``loc``'s devices (``at_state``: ``loc`` or the same run as a
        slice) after readings ``x``."""
        if st.epoch_ms_[0] < 0:  # (set by _step from the whole round)
            st.epoch_ms_[0] = (int(ts.min()) // MS_PER_S) * MS_PER_S
        m = loc.size
        # the packed uint64 as two uint32 halves (views): start << 8 | count, value bits
        # (a view of the state for a slice: every read below comes before the write)
        halves = st.run_[at_state].view(np.uint32).reshape(m, 2)
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        same = halves[:, _HI] == bits
        now_s = ((ts - st.epoch_ms_[0]) // MS_PER_S).astype(np.uint32)
        now_s &= _START_MASK
        new = np.empty((m, 2), dtype=np.uint32)
        new[:, _HI] = bits
        need = ch.params.stuck_readings or 0
        min_s = ch.params.stuck_min_s or 0.0
        if not same.any():  # a live sensor: every run starts again, one reading long
            low = now_s << 8
            low |= 1
            new[:, _LO] = low
            st.run_[at_state] = new.view(np.uint64).reshape(m)
            if need > 1 or min_s > 0:
                return Detections.empty()
            start, count = now_s, np.ones(m, dtype=np.uint32)
        else:
            old = halves[:, _LO]
            start = np.where(same, old >> 8, now_s)
            count = np.where(same, np.minimum((old & 0xFF) + 1, 0xFF), 1).astype(np.uint32)
            new[:, _LO] = (start << 8) | count
            st.run_[at_state] = new.view(np.uint64).reshape(m)
        held_s = ((now_s - start) & _START_MASK).astype(np.float64)
        hit = np.flatnonzero((count >= need) & (held_s >= min_s))
        if hit.size == 0:
            return Detections.empty()
        evidence: dict[str, Any] = {
            ch.field: x[hit],
            "stuck_s": held_s[hit],
            "repeats_count": count[hit].astype(np.float64),
        }
        return Detections.of(
            DetectionKind.STUCK,
            self.index.devices[loc[hit]],
            ts[hit],
            np.minimum(1.0, 0.5 * held_s[hit] / max(min_s, 1.0)),
            **evidence,
        )

    # -- timer -------------------------------------------------------------------

    def tick(self, now_ms: int) -> Detections:
        """Offline devices of this kind at ``now_ms`` (device time base), every tick."""
        if self.started_ms_[0] < 0:
            self.started_ms_[0] = now_ms
        limit = self._interval_ms * self.params.offline_factor
        seen = self.last_seen_ms_ >= 0
        ref = np.where(seen, self.last_seen_ms_, self.started_ms_[0])
        silent = now_ms - ref
        offline = (silent > limit) & (seen | self.params.offline_never_seen)
        hit = np.flatnonzero(offline)
        if hit.size == 0:
            return Detections.empty()
        return Detections.of(
            DetectionKind.OFFLINE,
            self.index.devices[hit],
            now_ms,
            np.minimum(1.0, silent[hit] / (2 * limit[hit])),
            silent_s=silent[hit] / MS_PER_S,
            interval_s=self._interval_ms[hit] / MS_PER_S,
            last_seen_ms=np.where(seen[hit], self.last_seen_ms_[hit], np.nan),
        )
