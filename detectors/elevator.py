"""Elevators: trapped passengers, and early warnings of faults.

Entrapment is a state, not a reading: a car that is stopped, occupied and has its doors
shut, for longer than ``entrapment_s`` away from a landing or ``landing_closed_s`` at a
landing (doors failing to open). Each car remembers since when that has held (the
stop episode's start, in ``car_``), so the check is a comparison per reading, and ``tick``
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

from detectors._core import KindIndex, StateArrays, checked_state, device_rounds
from detectors.config import ElevatorModelParams, ElevatorParams
from detectors.elevator_model import WindowModel
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry

MS_PER_S = 1000
MAD_TO_SIGMA = float(np.sqrt(np.pi / 2))
# Per-car state is packed so that a batch costs few random gathers/scatters (they, not
# the arithmetic, dominate): flags_ (int64 bit fields, below), car_ (complex128: stop
# episode start in ms + 1j * CUSUM), last_ (complex64: last vibration + 1j * position),
# vib_ (complex128 per motion state: log-vibration level + 1j * mean abs deviation).
_F_MOVING = 1
_F_DOOR = 2
_F_LANDING = 4  # at a landing
_F_OCCUPIED = 8  # the current stop episode is an occupied one (entrapment candidate)
_F_STOPS = 16  # the unscheduled-stop count was at or above its threshold
_F_REOPEN_SHIFT = 8  # bits 8-15: door re-openings at this stop
_F_OCC_SHIFT = 16  # bits 16-23: occupancy, for the timer's evidence
_F_VIBN_SHIFT = 32  # bits 32-39 / 40-47: vibration readings learned, stopped / cruising
_BYTE = 0xFF


class ElevatorDetector(StateArrays):
    """Entrapment and fault early warnings for every elevator of the registry."""

    kind: ClassVar[str] = "elevator"

    def __init__(
        self,
        registry: Registry,
        params: ElevatorParams,
        model_params: ElevatorModelParams | None = None,
    ) -> None:
        self.params = params
        self.index = KindIndex(registry, DeviceKind.ELEVATOR)
        n = self.index.size
        dev = self.index.devices
        fh = registry.floor_height_m[dev].astype(np.float32)
        fh = np.where(np.isfinite(fh) & (fh > 0), fh, np.nan)
        # registry constants, packed: floor height + 1j * rated speed
        self._consts = (fh + 1j * registry.rated_speed_mps[dev]).astype(np.complex64)
        self._interval_ms = registry.interval_s[dev].astype(np.float64) * MS_PER_S
        self.flags_ = np.zeros(n, dtype=np.int64)
        self.car_ = np.full(n, -1.0 + 0j, dtype=np.complex128)
        self.last_ = np.full(n, np.nan + 0j, dtype=np.complex64)
        self.last_ts_ms_ = np.full(n, -1, dtype=np.int64)
        self.door_closed_ms_ = np.full(n, -1, dtype=np.int64)
        # unscheduled stops, a decayed count c(t) stored as T = t + tau * ln(c)
        self.stops_t_ = np.full(n, -np.inf, dtype=np.float64)
        self.vib_ = np.zeros((2, n), dtype=np.complex128)
        self.model: WindowModel | None = None
        if model_params is not None and model_params.enabled:
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
        loc = self.index.local(batch.device)
        rounds = device_rounds(loc, self.index.size)
        f = batch.fields
        cols = (
            f["position_m"],
            f["speed_mps"],
            f["vibration_mps2"],
            f["door_open"],
            f["occupancy"],
            f.get("load_kg"),
        )
        if rounds is None:
            return self._step(loc, batch.ts_ms, *cols)
        return Detections.concat(
            [
                self._step(loc[r], batch.ts_ms[r], *(None if c is None else c[r] for c in cols))
                for r in rounds
            ]
        )

    def _step(  # noqa: PLR0917
        self,
        loc: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        pos: npt.NDArray[np.float32],
        speed: npt.NDArray[np.float32],
        vib: npt.NDArray[np.float32],
        door: npt.NDArray[np.float32],
        occ: npt.NDArray[np.float32],
        load: npt.NDArray[np.float32] | None,
    ) -> Detections:
        p = self.params
        parts: list[Detections] = []
        aspeed = np.abs(speed)
        moving = aspeed >= p.stop_speed_mps
        door_open = door >= 0.5
        occupied = occ >= p.occupied_persons
        if load is not None and p.occupied_load_kg is not None:
            occupied |= load >= p.occupied_load_kg
        consts = self._consts[loc]
        fh, rated = consts.real, consts.imag
        floor_idx = np.rint(pos / fh)
        offset = pos - floor_idx * fh
        at_landing = np.abs(offset) <= p.landing_tolerance_m
        # A sensor that repeats its last reading bit for bit is frozen, not a stopped car.
        now_last = (vib + 1j * pos).astype(np.complex64)
        frozen = self.last_[loc] == now_last
        self.last_[loc] = now_last
        live = ~frozen & np.isfinite(aspeed) & np.isfinite(pos)
        stopped = live & ~moving
        flags = self.flags_[loc]
        was_moving = (flags & _F_MOVING) != 0
        was_open = (flags & _F_DOOR) != 0
        car = self.car_[loc]

        # -- stop episodes: trapped (occupied) or empty away from a landing ---------------
        shut = stopped & ~door_open
        trap = shut & occupied
        empty = shut & ~occupied & ~at_landing
        episode = trap | empty
        since = car.real
        same_kind = ((flags & _F_OCCUPIED) != 0) == trap
        since = np.where(episode & (since >= 0) & same_kind, since, ts)
        since[~episode] = -1.0
        held_s = (ts - since) * (1.0 / MS_PER_S)
        limit_s = np.where(at_landing, p.landing_closed_s, p.entrapment_s)
        hit = np.flatnonzero(trap & (held_s >= limit_s))
        if hit.size:
            parts.append(
                self._entrapment(loc[hit], ts[hit], held_s[hit], limit_s[hit], occ[hit], pos[hit])
            )
        hit = np.flatnonzero(empty & (held_s >= p.stopped_between_s))
        if hit.size:
            parts.append(
                Detections.of(
                    DetectionKind.STOPPED_BETWEEN_FLOORS,
                    self.index.devices[loc[hit]],
                    ts[hit],
                    np.minimum(1.0, 0.5 * held_s[hit] / p.stopped_between_s),
                    stopped_s=held_s[hit],
                    position_m=pos[hit],
                    landing_offset_m=offset[hit],
                    floor_no=floor_idx[hit] + 1,
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
        reopens = (flags >> _F_REOPEN_SHIFT) & _BYTE
        reopens[moving] = 0
        opened = np.flatnonzero(door_open & ~was_open)
        if opened.size:
            closed_ms = self.door_closed_ms_[loc[opened]]
            quick = (closed_ms >= 0) & (ts[opened] - closed_ms <= p.reopen_gap_s * MS_PER_S)
            reopens[opened] = np.where(quick, np.minimum(reopens[opened] + 1, _BYTE), 0)
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
        check = np.flatnonzero(live & (new_stop | ((flags & _F_STOPS) != 0)))
        stops_flag = np.zeros(loc.size, dtype=np.bool_)
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

        vib_n, cusum, det = self._vibration(
            loc, ts, vib, aspeed, rated, live, moving, flags, car.imag
        )
        parts.append(det)
        if self.model is not None:
            parts.append(self.model.update(loc, ts, vib, aspeed / rated, door_open, moving, live))

        occ_bits = np.minimum(np.nan_to_num(occ), _BYTE).astype(np.int64) << _F_OCC_SHIFT
        self.flags_[loc] = (
            moving * _F_MOVING
            | door_open * _F_DOOR
            | at_landing * _F_LANDING
            | trap * _F_OCCUPIED
            | stops_flag * _F_STOPS
            | (reopens << _F_REOPEN_SHIFT)
            | occ_bits
            | vib_n
        )
        self.car_[loc] = since + 1j * cusum
        self.last_ts_ms_[loc] = ts
        return Detections.concat(parts)

    def _overspeed(
        self,
        loc: npt.NDArray[np.int32],
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
        loc: npt.NDArray[np.int32],
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
        loc: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        vib: npt.NDArray[np.float32],
        aspeed: npt.NDArray[np.float32],
        rated: npt.NDArray[np.float32],
        live: npt.NDArray[np.bool_],
        moving: npt.NDArray[np.bool_],
        flags: npt.NDArray[np.int64],
        cusum: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], Detections]:
        """CUSUM on log vibration against the car's baseline for its motion state.

        Returns the packed learned-reading counters (for flags_), the new CUSUM per row
        and the detections.
        """
        p = self.params
        ratio = aspeed / rated
        cruise = (ratio >= p.cruise_min_ratio) & (ratio <= p.cruise_max_ratio)
        shift = np.where(cruise, _F_VIBN_SHIFT + 8, _F_VIBN_SHIFT)
        counters = flags & (0xFFFF << _F_VIBN_SHIFT)
        use = np.flatnonzero(live & (cruise | ~moving) & (vib > 0))
        cusum = cusum.copy()
        if use.size == 0:
            return counters, cusum, Detections.empty()
        li = loc[use]
        flat = li + cruise[use] * self.index.size  # row 0 stopped, row 1 cruising
        vv = self.vib_.reshape(-1)
        state = vv[flat]
        level, dev = state.real, state.imag
        n = ((counters[use] >> shift[use]) & _BYTE).astype(np.float64)
        y = np.log(vib[use].astype(np.float64))
        scale = np.maximum(dev * MAD_TO_SIGMA, p.vibration_min_rel_scale)
        r = y - level
        warm = n >= p.vibration_warmup
        s = cusum[use]
        s = np.where(warm, np.clip(s + r / scale - p.cusum_k, 0.0, 1.25 * p.cusum_h), s)
        cusum[use] = s
        # learn while quiet (or warming up), residuals clipped at 3 sigmas once warm
        learn = ~warm | (s < 0.25 * p.cusum_h)
        a = np.maximum(p.vibration_alpha, 1.0 / (n + 1.0)) * learn
        lim = np.where(warm, 3.0 * scale, np.inf)
        rc = np.clip(r, -lim, lim)
        new_dev = dev + a * (np.abs(rc) - dev)
        new_dev[n == 0] = 0.0
        vv[flat] = (level + a * rc) + 1j * new_dev
        n_new = np.minimum(n + learn, _BYTE).astype(np.int64)
        cleared = counters[use] & ~(_BYTE << shift[use])
        counters[use] = cleared | (n_new << shift[use])
        vib_u = vib[use]
        hit = np.flatnonzero(warm & ((s >= p.cusum_h) | (vib_u >= p.vibration_hard_mps2)))
        if hit.size == 0:
            return counters, cusum, Detections.empty()
        base = np.exp(level[hit])
        det = Detections.of(
            DetectionKind.VIBRATION_RISE,
            self.index.devices[li[hit]],
            ts[use][hit],
            np.minimum(
                1.0,
                np.maximum(s[hit] / (1.25 * p.cusum_h), vib_u[hit] / (2 * p.vibration_hard_mps2)),
            ),
            vibration_mps2=vib_u[hit],
            vibration_baseline_mps2=base,
            vibration_ratio=vib_u[hit] / base,
            cusum_sigmas=s[hit],
            cruising=cruise[use][hit],
        )
        return counters, cusum, det

    # -- timer -------------------------------------------------------------------

    def tick(self, now_ms: int) -> Detections:
        """Entrapments still holding at ``now_ms`` between an idle car's reports.

        Cars silent for longer than ``offline_factor`` intervals are skipped: with no
        reading there is no evidence the car is still stopped (offline is reported by
        the generic check).
        """
        p = self.params
        since = self.car_.real
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
