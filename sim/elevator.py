"""Elevator physics and faults, for every car of the fleet at once.

Each car runs a small state machine (idle at a landing, moving, doors open, halted,
door cycling) held in 1-D numpy arrays; one ``tick`` moves every car one second. A car
answers hall calls: it travels (trapezoidal speed profile, exact, so a report at any
time has the true position and speed) to the caller's landing, opens its doors 3-10 s
while passengers board, carries them to their landing and lets them out.

Each car samples at its own phase within the second (``phase_ms``), reports every
second while moving, at once on a state change, and otherwise every ``interval_s``.

Faults and confounders are *armed* when their event fires and take effect on the next
trip or stop that can show them (an entrapment needs an occupied trip), which is where
their label starts. See ``docs/simulator.md`` for each signature.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from sim.faults import FaultKind, LabelBook, json_values
from sim.schedule import Event

IDLE, MOVING, DOOR_OPEN, HALT, DOOR_CYCLE = 0, 1, 2, 3, 4
# what happens when a trip ends
M_NORMAL, M_TRAP, M_INSPECT, M_RETURN, M_TRAP_LANDING, M_RESCUE = 0, 1, 2, 3, 4, 5
# what happens when a halt ends
H_RESCUE, H_RETURN, H_OPEN = 0, 1, 2
# armed faults
A_NONE, A_ENTRAP, A_OVERSPEED, A_DOOR_MOVING, A_DOOR_CYCLE, A_INSPECT, A_HELD = range(7)

SLOW_SPEED_MPS = 0.3
"""Inspection and rescue runs move the car at this speed."""
ARM_TIMEOUT_MS = 30 * 60_000
"""An armed fault that found no trip to show itself within this time is dropped, unlabelled."""
PASSENGER_KG = 70.0
OVERSPEED_FACTOR = 1.15
"""Speed above ``rated * 1.15`` is overspeed (EN 81-20 governor tripping speed)."""
MIN_OVERSPEED_S = 3.0


class ElevatorModel:
    """Every elevator of a registry; see the module docstring."""

    kind = DeviceKind.ELEVATOR

    def __init__(
        self,
        registry: Registry,
        rng: np.random.Generator,
        start_ms: int,
        labels: LabelBook,
        call_gap_s: float = 90.0,
    ) -> None:
        self.dev = registry.devices_of_kind(DeviceKind.ELEVATOR)
        self._local = np.full(len(registry), -1, np.int64)
        self._local[self.dev] = np.arange(self.dev.size)
        self.labels = labels
        self.call_gap_ms = call_gap_s * 1000
        n = self.dev.size
        self.n = n
        fl = registry.floors[self.dev].astype(np.int64)
        self.floors = np.maximum(np.where(fl < 2, 2, fl), 2)
        fh = registry.floor_height_m[self.dev].astype(np.float64)
        self.fh = np.where(np.isfinite(fh) & (fh > 0), fh, 3.0)
        vr = registry.rated_speed_mps[self.dev].astype(np.float64)
        self.vr = np.where(np.isfinite(vr) & (vr > 0), vr, 1.0)
        self.acc = np.where(self.vr <= 1.0, 0.8, 1.0)
        self.phase = rng.integers(1, 1001, n).astype(np.int64)
        self.interval_ms = np.maximum(
            1, np.round(registry.interval_s[self.dev].astype(np.float64) * 1000)
        ).astype(np.int64)
        self.vib_base = rng.uniform(0.12, 0.35, n)

        self.st = np.zeros(n, np.int8)
        self.floor = np.where(rng.random(n) < 0.5, 0, rng.integers(0, self.floors))
        self.pos = self.floor * self.fh
        self.speed = np.zeros(n)
        self.door = np.zeros(n, np.int8)
        self.occ = np.zeros(n, np.int16)
        self.load = np.zeros(n)
        self.next_call = start_ms + (rng.exponential(call_gap_s, n) * 1000).astype(np.int64)
        self.door_close = np.zeros(n, np.int64)
        self.trip_start = np.zeros(n, np.int64)
        self.trip_from = np.zeros(n)
        self.trip_dist = np.zeros(n)
        self.trip_vpk = np.ones(n)
        self.trip_T = np.zeros(n)
        self.trip_mode = np.zeros(n, np.int8)
        self.trip_to = np.zeros(n, np.int64)
        self.next_dest = np.full(n, -1, np.int64)
        self.board = np.zeros(n, np.int16)
        self.halt_end = np.zeros(n, np.int64)
        self.halt_next = np.zeros(n, np.int8)
        self.halt_ms = np.zeros(n, np.int64)
        self.cycles = np.zeros(n, np.int16)
        self.door_force = np.zeros(n, bool)
        self.fault_trip = np.zeros(n, bool)
        self.held = np.zeros(n, bool)
        self.next_due = start_ms + rng.integers(0, self.interval_ms)

        # faults
        self.arm = np.zeros(n, np.int8)
        self._arm_seed: dict[int, int] = {}
        self.busy = np.zeros(n, bool)
        self.wear_s = np.full(n, np.iinfo(np.int64).max // 4, np.int64)
        self.wear_e = self.wear_s + 1
        self.wear_end = np.zeros(n, np.int64)
        self.wear_peak = np.ones(n)
        self.off_s = np.zeros(n, np.int64)
        self.off_e = np.zeros(n, np.int64)
        self.stuck_s = np.zeros(n, np.int64)
        self.stuck_e = np.zeros(n, np.int64)
        self.snap = np.zeros((n, 6), np.float32)
        self._timers: list[tuple[int, int, int]] = []  # (when, local, what)

    # -- events -------------------------------------------------------------------

    def activate(self, ev: Event) -> bool:
        """Start or arm ``ev``; False (dropped) when the car is already in an event."""
        li = int(self._local[ev.device])
        if self.busy[li]:
            return False
        rng = np.random.default_rng(ev.seed)
        k = ev.kind
        self.busy[li] = True
        if k is FaultKind.OFFLINE:
            end = ev.start_ms + int(rng.uniform(10, 60) * 60_000)
            self.off_s[li], self.off_e[li] = ev.start_ms, end
            self.labels.add(
                ev.device,
                k,
                ev.start_ms,
                end,
                observable_ms=ev.start_ms + 3 * int(self.interval_ms[li]),
            )
            heapq.heappush(self._timers, (end, li, 0))
        elif k is FaultKind.STUCK_SENSOR:
            end = ev.start_ms + int(rng.uniform(20, 60) * 60_000)
            self.stuck_s[li], self.stuck_e[li] = ev.start_ms, end
            self.snap[li] = self._reading_now(li, ev.start_ms, rng)
            self.labels.add(
                ev.device,
                k,
                ev.start_ms,
                end,
                observable_ms=ev.start_ms + 6 * int(self.interval_ms[li]),
                values=json_values(self.snap[li]),
            )
            heapq.heappush(self._timers, (end, li, 0))
        elif k is FaultKind.VIBRATION_WEAR:
            ramp = int(rng.uniform(60, 180) * 60_000)
            hold = int(rng.uniform(30, 60) * 60_000)
            peak = float(rng.uniform(2.0, 3.0))
            self.wear_s[li], self.wear_e[li] = ev.start_ms, ev.start_ms + ramp
            self.wear_end[li], self.wear_peak[li] = ev.start_ms + ramp + hold, peak
            self.labels.add(
                ev.device,
                k,
                ev.start_ms,
                ev.start_ms + ramp + hold,
                ramp_end_ms=ev.start_ms + ramp,
                peak_factor=peak,
                baseline_mps2=float(self.vib_base[li]),
                observable_ms=ev.start_ms + int(ramp * 0.5 / (peak - 1)),
            )
            heapq.heappush(self._timers, (ev.start_ms + ramp + hold, li, 1))
        else:
            code = {
                FaultKind.ENTRAPMENT: A_ENTRAP,
                FaultKind.OVERSPEED: A_OVERSPEED,
                FaultKind.INSPECTION_STOP: A_INSPECT,
                FaultKind.DOOR_HELD: A_HELD,
            }.get(k)
            if k is FaultKind.DOOR_FAULT:
                code = A_DOOR_MOVING if rng.random() < 0.5 else A_DOOR_CYCLE
            if code is None:
                self.busy[li] = False
                return False
            self.arm[li] = code
            self._arm_seed[li] = int(rng.integers(0, 2**63 - 1))
            heapq.heappush(self._timers, (ev.start_ms + ARM_TIMEOUT_MS, li, 2))
        return True

    def _reading_now(self, li: int, t_ms: int, r: np.random.Generator) -> npt.NDArray[np.float32]:
        """What car ``li`` reads at ``t_ms`` (as of its last tick): what a stuck sensor repeats."""
        v = float(self.speed[li])
        ramp = min(max((t_ms - self.wear_s[li]) / (self.wear_e[li] - self.wear_s[li]), 0.0), 1.0)
        wear = 1.0 + (self.wear_peak[li] - 1.0) * ramp
        vib = self.vib_base[li] * (0.25 + 0.75 * abs(v) / self.vr[li]) * wear
        noise = r.standard_normal(3)
        return np.array(
            [
                self.pos[li] + 0.002 * noise[0],
                v,
                max(vib * (1 + 0.1 * noise[1]), 0.01),
                self.door[li],
                self.occ[li],
                max(self.load[li] + noise[2], 0.0),
            ],
            np.float32,
        )

    def _expire(self, t_ms: int) -> None:
        while self._timers and self._timers[0][0] <= t_ms:
            _, li, what = heapq.heappop(self._timers)
            if what == 0:  # offline / stuck over
                self.busy[li] = False
            elif what == 1:  # bearing replaced
                self.wear_s[li] = np.iinfo(np.int64).max // 4
                self.wear_e[li] = self.wear_s[li] + 1
                self.busy[li] = False
            elif what == 2 and self.arm[li] != A_NONE:  # armed fault never found its trip
                self.arm[li] = A_NONE
                self._arm_seed.pop(li, None)
                self.busy[li] = False

    def _fault_rng(self, li: int) -> np.random.Generator:
        return np.random.default_rng(self._arm_seed.pop(li, li))

    def _done(self, li: int) -> None:
        self.arm[li] = A_NONE
        self.busy[li] = False

    # -- motion ---------------------------------------------------------------------

    def _start_trip(
        self,
        idx: npt.NDArray[np.int64],
        t: npt.NDArray[np.int64],
        target: npt.NDArray[np.float64],
        vmax: npt.NDArray[np.float64],
        *,
        mode: int | npt.NDArray[np.int8],
        to_floor: npt.NDArray[np.int64],
    ) -> None:
        a = self.acc[idx]
        d = target - self.pos[idx]
        s = np.abs(d)
        full = s >= vmax * vmax / a
        vpk = np.where(full, vmax, np.sqrt(s * a))
        self.trip_T[idx] = np.where(full, s / vmax + vmax / a, 2 * vpk / a)
        self.trip_vpk[idx] = vpk
        self.trip_start[idx] = t[idx]
        self.trip_from[idx] = self.pos[idx]
        self.trip_dist[idx] = d
        self.trip_mode[idx] = mode
        self.trip_to[idx] = to_floor
        self.st[idx] = MOVING
        self.door[idx] = self.door_force[idx]

    def _kinematics(self, idx: npt.NDArray[np.int64], tau: npt.NDArray[np.float64]) -> None:
        a, vpk, big_t = self.acc[idx], self.trip_vpk[idx], self.trip_T[idx]
        ta = vpk / a
        s = np.abs(self.trip_dist[idx])
        td = np.maximum(big_t - tau, 0.0)
        x = np.where(
            tau < ta,
            0.5 * a * tau * tau,
            np.where(tau < big_t - ta, 0.5 * a * ta * ta + vpk * (tau - ta), s - 0.5 * a * td * td),
        )
        v = np.where(tau < ta, a * tau, np.where(tau < big_t - ta, vpk, a * td))
        sign = np.sign(self.trip_dist[idx])
        self.pos[idx] = self.trip_from[idx] + sign * x
        self.speed[idx] = sign * v

    def _open_doors(
        self, idx: npt.NDArray[np.int64], t: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> None:
        """Doors open at a landing: the riders leave, waiting callers board."""
        self.st[idx] = DOOR_OPEN
        self.door[idx] = 1
        self.door_force[idx] = False
        boarding = self.next_dest[idx] >= 0
        n_in = np.where(boarding, self.board[idx], 0).astype(np.int16)
        self.occ[idx] = n_in
        self.load[idx] = n_in * PASSENGER_KG + rng.normal(0, 8, idx.size) * np.sqrt(n_in)
        self.door_close[idx] = t[idx] + (rng.uniform(3, 10, idx.size) * 1000).astype(np.int64)
        held = idx[self.arm[idx] == A_HELD]
        for li in held.tolist():
            r = self._fault_rng(li)
            start = int(t[li])
            self.door_close[li] = start + int(r.uniform(30, 120) * 1000)
            self.arm[li] = A_NONE
            self.held[li] = True
            self.labels.open(
                int(self.dev[li]),
                FaultKind.DOOR_HELD,
                start,
                int(self.door_close[li]),
                occupancy=int(self.occ[li]),
                floor=int(self.floor[li]) + 1,
                observable_ms=start + 30_000,
            )
        cyc = idx[self.arm[idx] == A_DOOR_CYCLE]
        for li in cyc.tolist():
            r = self._fault_rng(li)
            self.st[li] = DOOR_CYCLE
            self.cycles[li] = int(r.integers(4, 9))
            self.arm[li] = A_NONE
            start = int(self.door_close[li])
            self.labels.open(
                int(self.dev[li]),
                FaultKind.DOOR_FAULT,
                start,
                start + 60_000,
                variant="reopen_cycles",
                cycles=int(self.cycles[li]),
                floor=int(self.floor[li]) + 1,
                observable_ms=start + 10_000,
            )

    def _depart(
        self, idx: npt.NDArray[np.int64], t: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> None:
        """Doors closed: go to the riders' landing, or wait for the next call."""
        self.door[idx] = 0
        go = idx[self.next_dest[idx] >= 0]
        stay = idx[self.next_dest[idx] < 0]
        self.st[stay] = IDLE
        self.next_call[stay] = t[stay] + (rng.exponential(self.call_gap_ms, stay.size)).astype(
            np.int64
        )
        if go.size == 0:
            return
        dest = self.next_dest[go]
        self.next_dest[go] = -1
        target = np.asarray(dest * self.fh[go], dtype=np.float64)
        vmax = self.vr[go].copy()
        mode = np.zeros(go.size, np.int8)
        special = np.flatnonzero(self.arm[go] != A_NONE)
        after: list[tuple[int, int, float]] = []
        for j in special.tolist():
            li = int(go[j])
            code = int(self.arm[li])
            if code == A_ENTRAP:
                r = self._fault_rng(li)
                if r.random() < 0.7:
                    lo, hi = sorted((int(self.floor[li]), int(dest[j])))
                    k = int(r.integers(lo, hi))
                    target[j] = (k + r.uniform(0.25, 0.75)) * self.fh[li]
                    mode[j] = M_TRAP
                else:
                    mode[j] = M_TRAP_LANDING
                self.halt_ms[li] = int(r.uniform(5, 30) * 60_000)
                self.arm[li] = A_NONE
            elif code in (A_OVERSPEED, A_DOOR_MOVING):
                r = np.random.default_rng(self._arm_seed.get(li, li))
                factor = float(r.uniform(1.2, 1.4)) if code == A_OVERSPEED else 1.0
                v = self.vr[li] * factor
                a = self.acc[li]
                s = abs(float(target[j] - self.pos[li]))
                cruise = s / v - v / a if s >= v * v / a else 0.0
                big_t = s / v + v / a if s >= v * v / a else 2 * np.sqrt(s * a) / a
                if code == A_OVERSPEED:
                    t1 = OVERSPEED_FACTOR * self.vr[li] / a
                    over = big_t - 2 * t1
                    if cruise <= 0 or over < MIN_OVERSPEED_S + 1:
                        continue  # trip too short to show it; stay armed
                    vmax[j] = v
                    after.append((li, code, factor))
                else:
                    if big_t < MIN_OVERSPEED_S + 1:
                        continue
                    self.door_force[li] = True
                    after.append((li, code, 1.0))
                self._arm_seed.pop(li, None)
                self.arm[li] = A_NONE
        self._start_trip(go, t, target, vmax, mode=mode, to_floor=dest)
        for li, code, factor in after:
            t0 = int(self.trip_start[li])
            big_t = float(self.trip_T[li])
            if code == A_OVERSPEED:
                t1 = OVERSPEED_FACTOR * self.vr[li] / self.acc[li]
                # +/-1 s: a report's 0.5 % speed noise can cross the threshold a little early
                start = t0 + int(np.ceil(t1 * 1000)) - 1000
                end = t0 + int(np.floor((big_t - t1) * 1000)) + 1000
                self.labels.add(
                    int(self.dev[li]),
                    FaultKind.OVERSPEED,
                    start,
                    end,
                    rated_speed_mps=float(self.vr[li]),
                    peak_speed_mps=float(self.trip_vpk[li]),
                    factor=factor,
                    observable_ms=start + 2000,
                )
            else:
                end = t0 + int(big_t * 1000)
                self.labels.add(
                    int(self.dev[li]),
                    FaultKind.DOOR_FAULT,
                    t0,
                    end,
                    variant="open_while_moving",
                    observable_ms=t0 + 2000,
                )
            self.fault_trip[li] = True  # busy until this trip ends

    # -- the tick -------------------------------------------------------------------

    def tick(self, t0: int, rng: np.random.Generator) -> ReadingBatch:
        """Move every car to its sample time in ``(t0, t0 + 1000]``; the readings due."""
        self._expire(t0 + 1000)
        t = t0 + self.phase
        changed = np.zeros(self.n, bool)

        mv = np.flatnonzero(self.st == MOVING)
        if mv.size:
            tau = (t[mv] - self.trip_start[mv]) / 1000.0
            arrived = tau >= self.trip_T[mv]
            self._kinematics(mv[~arrived], tau[~arrived])
            self._arrive(mv[arrived], t, rng)
            changed[mv[arrived]] = True

        hl = np.flatnonzero(self.st == HALT)
        if hl.size:
            due = hl[t[hl] >= self.halt_end[hl]]
            if due.size:
                self._end_halt(due, t, rng)
                changed[due] = True

        dc = np.flatnonzero(self.st == DOOR_CYCLE)
        finished = np.zeros(0, np.int64)
        if dc.size:
            due = dc[t[dc] >= self.door_close[dc]]
            if due.size:
                finished = self._cycle(due, t)
                changed[due] = True

        do = np.flatnonzero(self.st == DOOR_OPEN)
        closing = do[t[do] >= self.door_close[do]]
        for li in closing[self.held[closing]].tolist():
            self.labels.close(int(self.dev[li]), FaultKind.DOOR_HELD, int(t[li]))
            self.held[li] = False
            self.busy[li] = False
        closing = np.concatenate([closing, finished])
        if closing.size:
            self._depart(closing, t, rng)
            changed[closing] = True

        idle = np.flatnonzero(self.st == IDLE)
        call = idle[t[idle] >= self.next_call[idle]]
        if call.size:
            self._call(call, t, rng)
            changed[call] = True

        return self._report(t, changed, rng)

    def _arrive(
        self, idx: npt.NDArray[np.int64], t: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> None:
        if idx.size == 0:
            return
        end_ms = self.trip_start[idx] + np.ceil(self.trip_T[idx] * 1000).astype(np.int64)
        self.pos[idx] = self.trip_from[idx] + self.trip_dist[idx]
        self.speed[idx] = 0.0
        mode = self.trip_mode[idx]
        landing = (
            (mode == M_NORMAL) | (mode == M_RETURN) | (mode == M_TRAP_LANDING) | (mode == M_RESCUE)
        )
        self.floor[idx[landing]] = self.trip_to[idx[landing]]
        ft = idx[self.fault_trip[idx]]
        self.fault_trip[ft] = False
        self.door_force[ft] = False
        self.busy[ft] = False
        normal = idx[(mode == M_NORMAL) | (mode == M_RESCUE)]
        self._open_doors(normal, t, rng)
        for j in np.flatnonzero(mode != M_NORMAL).tolist():
            li, m, end = int(idx[j]), int(mode[j]), int(end_ms[j])
            dev = int(self.dev[li])
            if m == M_RESCUE:
                self.labels.close(dev, FaultKind.ENTRAPMENT, int(t[li]))
                self._done(li)
            elif m == M_RETURN:
                self.st[li] = IDLE
                self.next_call[li] = int(t[li]) + int(rng.exponential(self.call_gap_ms))
                self._done(li)
            else:
                self.st[li] = HALT
                self.halt_end[li] = end + int(self.halt_ms[li])
                near = int(np.clip(np.round(self.pos[li] / self.fh[li]), 0, self.floors[li] - 1))
                off = abs(float(self.pos[li]) - near * float(self.fh[li]))
                if m == M_INSPECT:
                    self.halt_next[li] = H_RETURN
                    self.labels.open(
                        dev,
                        FaultKind.INSPECTION_STOP,
                        end,
                        int(self.halt_end[li]),
                        position_m=float(self.pos[li]),
                        offset_from_landing_m=off,
                        observable_ms=end + 1000,
                    )
                else:
                    self.halt_next[li] = H_RESCUE if m == M_TRAP else H_OPEN
                    self.labels.open(
                        dev,
                        FaultKind.ENTRAPMENT,
                        end,
                        int(self.halt_end[li]),
                        variant="between_floors" if m == M_TRAP else "doors_fail_at_landing",
                        occupancy=int(self.occ[li]),
                        position_m=float(self.pos[li]),
                        offset_from_landing_m=off,
                        nearest_floor=near + 1,
                        rescue_ms=int(self.halt_end[li]),
                        observable_ms=end + 1000,
                    )

    def _end_halt(
        self, idx: npt.NDArray[np.int64], t: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> None:
        nxt = self.halt_next[idx]
        opening = idx[nxt == H_OPEN]
        for li in opening.tolist():
            self.labels.close(int(self.dev[li]), FaultKind.ENTRAPMENT, int(t[li]))
            self._done(li)
        self.next_dest[opening] = -1
        self._open_doors(opening, t, rng)
        moving = idx[nxt != H_OPEN]
        if moving.size:
            near = np.clip(np.round(self.pos[moving] / self.fh[moving]), 0, self.floors[moving] - 1)
            near = near.astype(np.int64)
            mode = np.where(self.halt_next[moving] == H_RESCUE, M_RESCUE, M_RETURN).astype(np.int8)
            for li in moving[mode == M_RETURN].tolist():
                self.labels.close(int(self.dev[li]), FaultKind.INSPECTION_STOP, int(t[li]))
            self.next_dest[moving] = -1
            self._start_trip(
                moving,
                t,
                near * self.fh[moving],
                np.full(moving.size, SLOW_SPEED_MPS),
                mode=mode,
                to_floor=near,
            )

    def _cycle(self, idx: npt.NDArray[np.int64], t: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """One door movement of a car stuck re-opening; returns the cars that gave up."""
        closing = idx[self.door[idx] == 1]
        opening = idx[self.door[idx] == 0]
        self.door[closing] = 0
        self.cycles[closing] -= 1
        self.door[opening] = 1
        self.door_close[opening] = t[opening] + 3000
        self.door_close[closing] = t[closing] + 2000
        done: npt.NDArray[np.int64] = closing[self.cycles[closing] <= 0]
        for li in done.tolist():
            self.labels.close(int(self.dev[li]), FaultKind.DOOR_FAULT, int(t[li]))
            self._done(li)
        self.st[done] = DOOR_OPEN
        return done

    def _call(
        self, idx: npt.NDArray[np.int64], t: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> None:
        insp = idx[self.arm[idx] == A_INSPECT]
        if insp.size:
            up = self.floor[insp] < self.floors[insp] - 1
            frac = rng.uniform(0.35, 0.65, insp.size)
            target = (self.floor[insp] + np.where(up, frac, -frac)) * self.fh[insp]
            self.halt_ms[insp] = (rng.uniform(5, 20, insp.size) * 60_000).astype(np.int64)
            self.arm[insp] = A_NONE
            self._start_trip(
                insp,
                t,
                target,
                np.full(insp.size, SLOW_SPEED_MPS),
                mode=M_INSPECT,
                to_floor=self.floor[insp],
            )
            idx = np.setdiff1d(idx, insp)
        n = idx.size
        if n == 0:
            return
        fl = self.floors[idx]
        p = np.where(rng.random(n) < 0.5, 0, rng.integers(0, fl))
        d = np.where(
            p == 0, rng.integers(1, fl), np.where(rng.random(n) < 0.7, 0, rng.integers(0, fl))
        )
        d = np.where(d == p, np.where(p == 0, 1, 0), d)
        far = (self.arm[idx] == A_OVERSPEED) | (self.arm[idx] == A_DOOR_MOVING)
        if far.any():
            here = self.floor[idx]
            p = np.where(far, here, p)
            d = np.where(far, np.where(here * 2 >= fl - 1, 0, fl - 1), d)
        self.board[idx] = np.minimum(1 + rng.poisson(0.8, n), 12)
        self.next_dest[idx] = d
        at = idx[p == self.floor[idx]]
        self._open_doors(at, t, rng)
        go = idx[p != self.floor[idx]]
        pg = p[p != self.floor[idx]]
        self._start_trip(go, t, pg * self.fh[go], self.vr[go], mode=M_NORMAL, to_floor=pg)

    # -- readings ---------------------------------------------------------------------

    def _report(
        self, t: npt.NDArray[np.int64], changed: npt.NDArray[np.bool_], rng: np.random.Generator
    ) -> ReadingBatch:
        due = t >= self.next_due
        want = changed | (self.st == MOVING) | due
        stuck = (t >= self.stuck_s) & (t < self.stuck_e)
        want = np.where(stuck, due, want)
        want &= ~((t >= self.off_s) & (t < self.off_e))
        rep = np.flatnonzero(want)
        n = rep.size
        tr = t[rep]
        self.next_due[rep] = tr + self.interval_ms[rep]
        noise = rng.standard_normal((4, n), dtype=np.float32)
        speed = self.speed[rep]
        vr = self.vr[rep]
        ws, we = self.wear_s[rep], self.wear_e[rep]
        ramp = np.clip((tr - ws) / (we - ws), 0.0, 1.0)
        wear = 1.0 + (self.wear_peak[rep] - 1.0) * ramp
        vib = self.vib_base[rep] * (0.25 + 0.75 * np.abs(speed) / vr) * wear
        vals = np.empty((6, n), np.float32)
        vals[0] = self.pos[rep] + 0.002 * noise[0]
        vals[1] = speed * (1 + 0.005 * noise[1])
        vals[2] = np.maximum(vib * (1 + 0.1 * noise[2]), 0.01)
        vals[3] = self.door[rep]
        vals[4] = self.occ[rep]
        vals[5] = np.maximum(self.load[rep] + noise[3], 0.0)
        st = np.flatnonzero(stuck[rep])
        if st.size:
            vals[:, st] = self.snap[rep[st]].T
        return ReadingBatch(
            DeviceKind.ELEVATOR,
            self.dev[rep],
            tr,
            {
                "position_m": vals[0],
                "speed_mps": vals[1],
                "vibration_mps2": vals[2],
                "door_open": vals[3],
                "occupancy": vals[4],
                "load_kg": vals[5],
            },
        )

    def state_counts(self) -> dict[str, Any]:
        """How many cars are in each state: for the progress display and tests."""
        names = ("idle", "moving", "door_open", "halted", "door_cycling")
        return {name: int(np.count_nonzero(self.st == i)) for i, name in enumerate(names)}
