"""Elevators: trapped passengers, and early warnings of faults.

Entrapment is a state, not a reading: a car that is stopped, occupied and has its doors
shut, for longer than ``entrapment_s`` away from a landing or ``landing_closed_s`` at a
landing (doors failing to open). Each car remembers since when that has held (the
stop episode's start, ``since_ms_``), so the check is a comparison per reading, and ``tick``
repeats it between readings (an idle car reports only every ``interval_s``). What it must not
confuse with entrapment: a normal stop (doors open at once), doors held open (open is
not trapped), an empty car stopped for inspection (no one inside: reported as
``stopped_between_floors``, a fault), and a stuck sensor repeating one stale reading
(bit-identical vibration and position are a frozen sensor, never a live car).

Vibration wear is found against each car's own baseline, per motion state (stopped and
cruising at rated speed differ fourfold), on log vibration so that a wear factor is an
additive shift. A one-sided CUSUM accumulates evidence of a rise long before the hard
threshold; the baseline learns only while the CUSUM is quiet, so a slow rise cannot
teach itself to be normal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from detectors._core import BatchPlan, KindIndex, StateArrays, checked_state
from detectors.config import ElevatorModelParams, ElevatorParams
from detectors.elevator_model import WindowCollector, WindowModel
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry

MS_PER_S = 1000
MAD_TO_SIGMA = float(np.sqrt(np.pi / 2))
# Per-car state is packed so that a batch costs few gathers/scatters: flags_ (int32, one
# byte per field so they are read and written as byte views, no shifts: byte 0 the bits
# below, byte 1 door re-openings at this stop, byte 2 occupancy for the timer's
# evidence), last_ (complex64: last vibration + 1j * position), vib_ (complex128, per car
# and motion state (stopped, cruising): log-vibration level + 1j * mean abs deviation)
# with vib_n_ (uint8, same shape: readings learned, saturating at 255).
_F_MOVING = 1
_F_DOOR = 2
_F_LANDING = 4  # at a landing
_F_OCCUPIED = 8  # the current stop episode is an occupied one (entrapment candidate)
_F_STOPS = 16  # the unscheduled-stop count was at or above its threshold
_F_REOPEN_SHIFT = 8  # bits 8-15: door re-openings at this stop
_F_OCC_SHIFT = 16  # bits 16-23: occupancy, for the timer's evidence
_BYTE = 0xFF


class ElevatorDetector(StateArrays):
    """Entrapment and fault early warnings for every elevator of the registry."""

    kind: ClassVar[str] = "elevator"

    def __init__(
        self,
        registry: Registry,
        params: ElevatorParams,
        model_params: ElevatorModelParams | None = None,
        window_model: WindowModel | WindowCollector | None = None,
    ) -> None:
        """``window_model`` overrides the model built from ``model_params`` (training
        passes a ``WindowCollector`` to gather the windows of normal operation)."""
        self.params = params
        self.index = KindIndex(registry, DeviceKind.ELEVATOR)
        n = self.index.size
        dev = self.index.devices
        fh = registry.floor_height_m[dev].astype(np.float32)
        fh = np.where(np.isfinite(fh) & (fh > 0), fh, np.nan)
        # registry constants, packed: floor height + 1j * rated speed
        self._consts = (fh + 1j * registry.rated_speed_mps[dev]).astype(np.complex64)
        self._interval_ms = registry.interval_s[dev].astype(np.float64) * MS_PER_S
        self.flags_ = np.zeros(n, dtype=np.int32)
        self.since_ms_ = np.full(n, -1.0, dtype=np.float64)  # stop episode start, -1: none
        self.cusum_ = np.zeros(n, dtype=np.float64)
        self.last_ = np.full(n, np.nan + 0j, dtype=np.complex64)
        self.last_ts_ms_ = np.full(n, -1, dtype=np.int64)
        self.door_closed_ms_ = np.full(n, -1, dtype=np.int64)
        # unscheduled stops, a decayed count c(t) stored as T = t + tau * ln(c)
        self.stops_t_ = np.full(n, -np.inf, dtype=np.float64)
        self.vib_ = np.zeros((n, 2), dtype=np.complex128)  # a car's two states side by side
        self.vib_n_ = np.zeros((n, 2), dtype=np.uint8)
        self.model: WindowModel | WindowCollector | None = window_model
        if window_model is None and model_params is not None and model_params.enabled:
            self.model = WindowModel.from_config(registry, self.index, model_params)

    @classmethod
    def from_config(
        cls,
        registry: Registry,
        params: ElevatorParams,
        model_params: ElevatorModelParams | None = None,
    ) -> ElevatorDetector:
        return cls(registry, params, model_params)

    def state(self) -> dict[str, npt.NDArray[Any]]:
        out = super().state()
        if self.model is not None:
            out.update({f"model.{k}": v for k, v in self.model.state().items()})
        return out

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("model.")}
        current = {k: getattr(self, k) for k in self._state_names()}
        checked = checked_state("ElevatorDetector", current, own)
        if self.model is not None:
            self.model.load_state({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        elif len(own) != len(state):
            raise ValueError("ElevatorDetector state has window-model arrays but no model is on")
        for k, v in checked.items():
            setattr(self, k, v)

    # -- streaming ---------------------------------------------------------------

    def update(self, batch: ReadingBatch) -> Detections:
        if batch.kind != DeviceKind.ELEVATOR:
            raise ValueError(f"the elevator detector got a {batch.kind.value} batch")
        if len(batch) == 0:
            return Detections.empty()
        return self.update_plan(BatchPlan(batch, self.index))

    def update_plan(self, plan: BatchPlan) -> Detections:
        """``update`` with the batch's plan already computed (the ``DetectorSet`` computes
        it once for the kind detector and the generic one)."""
        return Detections.concat(
            [
                self._step(
                    r.loc,
                    r.ts_ms,
                    r.col("position_m"),
                    r.col("speed_mps"),
                    r.col("vibration_mps2"),
                    r.col("door_open"),
                    r.col("occupancy"),
                    r.get("load_kg"),
                )
                for r in plan.rounds
            ]
        )

    def _step(  # noqa: PLR0917
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        pos: npt.NDArray[np.float32],
        speed: npt.NDArray[np.float32],
        vib: npt.NDArray[np.float32],
        door: npt.NDArray[np.float32],
        occ: npt.NDArray[np.float32],
        load: npt.NDArray[np.float32] | None,
    ) -> Detections:
        # Cost model: a batch is ~100 whole-array operations, so each one counts. Flags
        # are read and written as byte views (no shifts), boolean logic runs on 1-byte
        # arrays, f64 work is kept to what needs it, and masked selections (np.where,
        # copyto/clip with array bounds) are avoided: on mixed masks they cost 5-10x an
        # arithmetic blend (branch mispredictions).
        p = self.params
        parts: list[Detections] = []
        n_rows = loc.size
        aspeed = np.abs(speed)
        moving = aspeed >= p.stop_speed_mps
        door_open = door >= 0.5
        occupied = occ >= p.occupied_persons
        if load is not None and p.occupied_load_kg is not None:
            occupied |= load >= p.occupied_load_kg
        consts = self._consts[loc]
        fh, rated = consts.real, consts.imag
        floor_idx = pos / fh
        np.rint(floor_idx, out=floor_idx)
        offset = floor_idx * fh
        np.subtract(pos, offset, out=offset)
        at_landing = np.abs(offset) <= p.landing_tolerance_m
        # A sensor that repeats its last reading bit for bit is frozen, not a stopped car.
        now_last = np.empty(n_rows, dtype=np.complex64)
        now_last.real = vib
        now_last.imag = pos
        live = self.last_[loc] != now_last
        self.last_[loc] = now_last
        live &= np.isfinite(aspeed)
        live &= np.isfinite(pos)
        stopped = live & ~moving
        flags = self.flags_[loc]
        fb = flags.view(np.uint8).reshape(n_rows, 4)  # byte k = bits 8k..8k+7
        bits = fb[:, 0].copy()
        was_moving = (bits & _F_MOVING).view(np.bool_)
        was_open = (bits & _F_DOOR).astype(np.bool_)

        # -- stop episodes: trapped (occupied) or empty away from a landing ---------------
        shut = stopped & ~door_open
        trap = shut & occupied
        empty = shut & ~occupied & ~at_landing
        episode = trap | empty
        # the episode's start: kept while it goes on, set now when one starts, -1 without
        # one; episodes are rare in a working fleet, so the arithmetic runs on them only
        since = np.full(n_rows, -1.0)
        in_episode = np.flatnonzero(episode)
        if in_episode.size:
            e = in_episode
            since_old = self.since_ms_[loc[e]]
            trap_e = trap[e]
            go_on = ((bits[e] & _F_OCCUPIED) != 0) == trap_e  # the same kind of episode
            go_on &= since_old >= 0
            since_e = np.where(go_on, since_old, ts[e].astype(np.float64))
            since[e] = since_e
            held_s = np.subtract(ts[e], since_e, dtype=np.float64)
            held_s *= 1.0 / MS_PER_S
            limit_s = p.entrapment_s + at_landing[e] * (p.landing_closed_s - p.entrapment_s)
            hit = np.flatnonzero(trap_e & (held_s >= limit_s))
            if hit.size:
                r = e[hit]
                parts.append(
                    self._entrapment(loc[r], ts[r], held_s[hit], limit_s[hit], occ[r], pos[r])
                )
            hit = np.flatnonzero(empty[e] & (held_s >= p.stopped_between_s))
            if hit.size:
                r = e[hit]
                parts.append(
                    Detections.of(
                        DetectionKind.STOPPED_BETWEEN_FLOORS,
                        self.index.devices[loc[r]],
                        ts[r],
                        np.minimum(1.0, 0.5 * held_s[hit] / p.stopped_between_s),
                        stopped_s=held_s[hit],
                        position_m=pos[r],
                        landing_offset_m=offset[r],
                        floor_no=floor_idx[r] + 1,
                    )
                )

        # -- overspeed and door open while moving ---------------------------------------
        fast = np.flatnonzero(live & (aspeed > p.overspeed_ratio * rated))
        if fast.size:
            parts.append(self._overspeed(loc[fast], ts[fast], speed[fast], rated[fast], pos[fast]))
        hit = np.flatnonzero(live & door_open & (aspeed > p.door_moving_speed_mps))
        if hit.size:
            parts.append(
                Detections.of(
                    DetectionKind.DOOR_OPEN_MOVING,
                    self.index.devices[loc[hit]],
                    ts[hit],
                    1.0,
                    speed_mps=speed[hit],
                    position_m=pos[hit],
                    occupancy_persons=occ[hit],
                )
            )

        # -- door re-open cycles at one stop (counted while the car does not move) ---------
        reopens = fb[:, 1] * ~moving  # uint8
        opened = np.flatnonzero(door_open & ~was_open)
        if opened.size:
            closed_ms = self.door_closed_ms_[loc[opened]]
            quick = (closed_ms >= 0) & (ts[opened] - closed_ms <= p.reopen_gap_s * MS_PER_S)
            reopens[opened] = np.where(quick, np.minimum(reopens[opened], _BYTE - 1) + 1, 0)
        closed = np.flatnonzero(~door_open & was_open)
        if closed.size:
            self.door_closed_ms_[loc[closed]] = ts[closed]
        moved = np.flatnonzero(moving & ~was_moving)
        if moved.size:
            self.door_closed_ms_[loc[moved]] = -1
        hit = np.flatnonzero(live & (reopens >= p.reopen_cycles))
        if hit.size:
            parts.append(
                Detections.of(
                    DetectionKind.DOOR_REOPEN_CYCLES,
                    self.index.devices[loc[hit]],
                    ts[hit],
                    np.minimum(1.0, reopens[hit] / (2.0 * p.reopen_cycles)),
                    reopen_count=reopens[hit],
                    position_m=pos[hit],
                    floor_no=floor_idx[hit] + 1,
                )
            )

        # -- unscheduled stops (away from a landing): decayed count in the log domain ------
        # c(t) >= k  <=>  T >= t + tau ln k; checked on new stops and on flagged cars only.
        tau_ms = p.stop_window_s * MS_PER_S
        new_stop = stopped & was_moving & ~at_landing
        check = np.flatnonzero(live & (new_stop | (bits & _F_STOPS).astype(np.bool_)))
        stops_flag = np.zeros(n_rows, dtype=np.bool_)
        if check.size:
            li = loc[check]
            now = ts[check].astype(np.float64)
            stops_t = self.stops_t_[li]
            fresh = new_stop[check]
            stops_t[fresh] = tau_ms * np.logaddexp(stops_t[fresh] / tau_ms, now[fresh] / tau_ms)
            self.stops_t_[li] = stops_t
            high = stops_t >= now + tau_ms * np.log(p.unscheduled_stops)
            stops_flag[check] = high
            hit = np.flatnonzero(high)
            if hit.size:
                count = np.exp((stops_t[hit] - now[hit]) / tau_ms)
                parts.append(
                    Detections.of(
                        DetectionKind.STOP_FREQUENCY,
                        self.index.devices[li[hit]],
                        ts[check[hit]],
                        np.minimum(1.0, count / (2.0 * p.unscheduled_stops)),
                        unscheduled_stops_count=count,
                        window_s=p.stop_window_s,
                    )
                )

        vib_z, det = self._vibration(loc, ts, vib, aspeed, rated, live, moving)
        parts.append(det)
        if self.model is not None and vib_z is not None:
            parts.append(self.model.update(loc, ts, vib_z, aspeed / rated, door_open, moving, live))
        b = moving.view(np.uint8) | (door_open.view(np.uint8) << 1)
        b |= at_landing.view(np.uint8) << 2
        b |= trap.view(np.uint8) << 3
        b |= stops_flag.view(np.uint8) << 4
        out = np.empty((n_rows, 4), dtype=np.uint8)
        out[:, 0] = b
        out[:, 1] = reopens
        out[:, 2] = np.fmin(np.fmax(occ, 0), _BYTE)  # occupancy, for the timer's evidence
        out[:, 3] = 0
        self.flags_[loc] = out.view(np.int32).reshape(n_rows)
        self.since_ms_[loc] = since
        # the timer needs the last report only of cars in a stop episode
        self.last_ts_ms_[loc[in_episode]] = ts[in_episode]
        return Detections.concat(parts)

    def _overspeed(
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        speed: npt.NDArray[np.float32],
        rated: npt.NDArray[np.float32],
        pos: npt.NDArray[np.float32],
    ) -> Detections:
        p = self.params
        ratio = np.abs(speed.astype(np.float64)) / rated
        return Detections.of(
            DetectionKind.OVERSPEED,
            self.index.devices[loc],
            ts,
            (ratio - 1.0) / (p.overspeed_score_ratio - 1.0),
            speed_mps=speed,
            rated_speed_mps=rated,
            speed_ratio=ratio,
            position_m=pos,
        )

    def _entrapment(  # noqa: PLR0917
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64] | int,
        held_s: npt.NDArray[np.float64],
        limit_s: npt.NDArray[np.float64],
        occ: npt.NDArray[np.float32],
        pos: npt.NDArray[np.float32],
    ) -> Detections:
        fh = self._consts[loc].real.astype(np.float64)
        p64 = pos.astype(np.float64)
        floor_idx = np.rint(p64 / fh)
        offset = p64 - floor_idx * fh
        return Detections.of(
            DetectionKind.ENTRAPMENT,
            self.index.devices[loc],
            ts,
            np.minimum(1.0, 0.5 * held_s / limit_s + 0.5),
            stopped_s=held_s,
            occupancy_persons=occ,
            position_m=pos,
            landing_offset_m=offset,
            floor_no=floor_idx + 1,
            at_landing=np.abs(offset) <= self.params.landing_tolerance_m,
        )

    def _vibration(  # noqa: PLR0917
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        vib: npt.NDArray[np.float32],
        aspeed: npt.NDArray[np.float32],
        rated: npt.NDArray[np.float32],
        live: npt.NDArray[np.bool_],
        moving: npt.NDArray[np.bool_],
    ) -> tuple[npt.NDArray[np.float64] | None, Detections]:
        """CUSUM on log vibration against the car's baseline for its motion state.

        Returns each row's vibration z against its baseline when a window model wants it
        (NaN where not judged: moving off cruise, warming up; None without a model) and
        the detections.
        """
        p = self.params
        ratio = aspeed / rated
        cruise = ratio >= p.cruise_min_ratio
        cruise &= ratio <= p.cruise_max_ratio
        judged = cruise | ~moving
        judged &= live
        judged &= vib > 0
        use = np.flatnonzero(judged)
        vib_z = np.full(loc.size, np.nan) if self.model is not None else None
        if use.size == 0:
            return vib_z, Detections.empty()
        # the common case (every row judged) avoids fancy indexing altogether
        sel: slice | npt.NDArray[np.intp] = slice(None) if use.size == loc.size else use
        li = loc[sel]
        cr = cruise[sel]
        flat = li * 2 + cr  # column 0 stopped, column 1 cruising
        vv = self.vib_.reshape(-1)
        state = vv[flat]
        level, dev = state.real, state.imag
        counts = self.vib_n_.reshape(-1)
        n8 = counts[flat]  # readings learned in this motion state (saturating uint8)
        n_min = int(n8.min())
        y = np.log(vib[sel], dtype=np.float64)
        scale = dev * MAD_TO_SIGMA
        np.maximum(scale, p.vibration_min_rel_scale, out=scale)
        r = y - level
        z = r / scale
        all_warm = n_min >= p.vibration_warmup
        warm = None if all_warm else n8 >= p.vibration_warmup
        if vib_z is not None:
            vib_z[sel] = z if warm is None else np.where(warm, z, np.nan)
        # rows still warming up in their motion state are few once a fleet runs (masked
        # whole-array operations cost 5-10x a pass): handled by index
        cold = None if warm is None else np.flatnonzero(~warm)
        s_old = self.cusum_[li]
        s = s_old + z
        s -= p.cusum_k
        np.clip(s, 0.0, 1.25 * p.cusum_h, out=s)
        if cold is not None:
            s[cold] = s_old[cold]
        self.cusum_[li] = s
        # learn while quiet (or warming up), residuals clipped at 3 sigmas once warm
        learn = s < 0.25 * p.cusum_h
        if cold is not None:
            learn[cold] = True
        # weight max(alpha, 1/(n+1)): alpha for every row once all have seen 1/alpha
        if 1.0 / (n_min + 1.0) <= p.vibration_alpha:
            a: Any = p.vibration_alpha * learn
        else:
            a = np.maximum(p.vibration_alpha, 1.0 / (n8 + 1.0))
            a *= learn
        lim = 3.0 * scale
        if cold is not None:
            lim[cold] = np.inf
        rc = np.maximum(r, -lim)  # np.clip with array bounds is 1.5x slower
        np.minimum(rc, lim, out=rc)
        new = np.empty(rc.size, dtype=np.complex128)
        step = a * rc
        step += level
        new.real = step
        d = np.abs(rc)
        d -= dev
        d *= a
        d += dev
        if n_min == 0:
            d[n8 == 0] = 0.0
        new.imag = d
        vv[flat] = new
        if n_min < _BYTE:  # saturated counters stay at 255
            counts[flat] = n8 + (learn & (n8 < _BYTE))
        vib_u = vib[sel]
        hot = s >= p.cusum_h
        hot |= vib_u >= p.vibration_hard_mps2
        if warm is not None:
            hot &= warm
        hit = np.flatnonzero(hot)
        if hit.size == 0:
            return vib_z, Detections.empty()
        base = np.exp(level[hit])
        det = Detections.of(
            DetectionKind.VIBRATION_RISE,
            self.index.devices[li[hit]],
            ts[sel][hit],
            np.minimum(
                1.0,
                np.maximum(s[hit] / (1.25 * p.cusum_h), vib_u[hit] / (2 * p.vibration_hard_mps2)),
            ),
            vibration_mps2=vib_u[hit],
            vibration_baseline_mps2=base,
            vibration_ratio=vib_u[hit] / base,
            cusum_sigmas=s[hit],
            cruising=cr[hit],
        )
        return vib_z, det

    # -- timer -------------------------------------------------------------------

    def tick(self, now_ms: int) -> Detections:
        """Entrapments still holding at ``now_ms`` between an idle car's reports.

        Cars silent for longer than ``offline_factor`` intervals are skipped: with no
        reading there is no evidence the car is still stopped (offline is reported by
        the generic check).
        """
        p = self.params
        since = self.since_ms_
        trapped = (self.flags_ & _F_OCCUPIED) != 0
        fresh = (self.last_ts_ms_ >= 0) & (
            now_ms - self.last_ts_ms_ <= p.offline_factor * self._interval_ms
        )
        at = (self.flags_ & _F_LANDING) != 0
        limit_s = np.where(at, p.landing_closed_s, p.entrapment_s)
        held_s = (now_ms - since) / MS_PER_S
        hit = np.flatnonzero(trapped & (since >= 0) & fresh & (held_s >= limit_s))
        if hit.size == 0:
            return Detections.empty()
        occ = ((self.flags_[hit] >> _F_OCC_SHIFT) & _BYTE).astype(np.float32)
        return self._entrapment(
            hit.astype(np.int32),
            now_ms,
            held_s[hit],
            limit_s[hit],
            occ,
            self.last_[hit].imag,
        )
