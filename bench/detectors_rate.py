"""Detector throughput on full-fleet batches of the 480k registry, against river.

Every device of a kind reports once per batch, in random device order (the gather /
scatter worst case: no cache locality), one batch per simulated second; each detector is
timed over the same batches after ``WARMUP_BATCHES`` untimed ones. River's
``anomaly.HalfSpaceTrees`` (what a Python user would pick) scores and learns the same
sewage level stream one reading at a time, in the same run.

Rates are per core: numpy ufuncs run single-threaded, and time is this process's CPU time
(``time.process_time``), so other load on a shared machine does not count against it
(it still costs cache, so quiet machines measure higher); wall-clock rates are printed
beside them. The bare baseline of the same run, a plain EWMA z-score over the same
480k-device shuffled batches (``reference_ewma_z_readings_per_s``), shows what the
machine gives at that moment (``shared/LIMITS.md``: ~60 M/s on a quiet machine).

Usage: ``python bench/detectors_rate.py [--quick] [--devices N] [--batches K]``.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from detectors.alloc import tune_allocator
from detectors.config import load_config
from detectors.detectorset import DetectorSet
from detectors.elevator import ElevatorDetector
from detectors.generic import GenericDetector
from detectors.highfall import HighfallDetector, fit_tracks
from detectors.sewage import SewageDetector
from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from sim.fleet import FleetSpec, build_fleet

SEED = 20261126
T0 = 1_780_000_000_000


def fleet_batches(
    reg: Registry, kind: DeviceKind, k: int, rng: np.random.Generator
) -> list[ReadingBatch]:
    """``k`` batches: every device of ``kind`` once each, shuffled, one second apart."""
    dev = reg.devices_of_kind(kind)
    n = dev.size
    out = []
    if kind is DeviceKind.ELEVATOR:
        fh = reg.floor_height_m[dev].astype(np.float64)
        floors = reg.floors[dev].astype(np.float64)
        rated = reg.rated_speed_mps[dev].astype(np.float64)
        pos = np.floor(rng.random(n) * floors) * fh
        moving = rng.random(n) < 0.3
        direction = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        occ = np.where(moving, rng.integers(1, 5, n), rng.integers(0, 2, n)).astype(np.float32)
    elif kind is DeviceKind.SEWAGE:
        depth = reg.depth_m[dev].astype(np.float64)
        base = rng.uniform(0.05, 0.15, n) * depth
        gauge = rng.random(n) < 0.5
    for i in range(k):
        order = rng.permutation(n)
        d = dev[order]
        ts = np.full(n, T0 + i * 1000, dtype=np.int64) + rng.integers(0, 1000, n)
        if kind is DeviceKind.ELEVATOR:
            speed = np.where(moving, direction * rated, 0.0)
            pos = np.clip(pos + speed, 0, (floors - 1) * fh)
            vib = 0.2 * (0.25 + 0.75 * np.abs(speed) / rated) * (1 + 0.1 * rng.standard_normal(n))
            door = (~moving & (rng.random(n) < 0.3)).astype(np.float32)
            fields = {
                "position_m": (pos + 0.002 * rng.standard_normal(n)).astype(np.float32),
                "speed_mps": speed.astype(np.float32),
                "vibration_mps2": vib.astype(np.float32),
                "door_open": door,
                "occupancy": occ,
                "load_kg": (occ * 70 + rng.standard_normal(n)).astype(np.float32),
            }
        elif kind is DeviceKind.SEWAGE:
            fields = {
                "level_m": (base + 0.003 * rng.standard_normal(n)).astype(np.float32),
                "tilt_deg": (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32),
                "rain_mmph": np.where(gauge, 0.0, np.nan).astype(np.float32),
            }
        else:
            nan = np.full(n, np.nan, np.float32)
            fields = {
                "track_id": np.zeros(n, np.int64),
                "height_m": nan,
                "horizontal_m": nan,
                "end": nan,
            }
        out.append(ReadingBatch(kind, d, ts, {k_: v[order] for k_, v in fields.items()}))
    return out


def track_batches(
    reg: Registry, n_tracks: int, rng: np.random.Generator
) -> tuple[list[ReadingBatch], int]:
    """Falling-object tracks spread over the cameras, points in 1-second batches."""
    cams = reg.devices_of_kind(DeviceKind.HIGHFALL)
    dev = rng.choice(cams, n_tracks, replace=n_tracks > cams.size)
    start = T0 + rng.integers(0, 10_000, n_tracks)
    frame_ms = rng.choice([40, 50, 67, 80, 100], n_tracks)
    h0 = rng.uniform(8, 80, n_tracks)
    dur = np.sqrt(2 * h0 / 9.81)
    n_pts = np.maximum((dur * 1000 / frame_ms).astype(int), 5)
    rows_dev, rows_ts, rows_tid, rows_h, rows_x, rows_end = [], [], [], [], [], []
    for j in range(n_tracks):
        t = np.arange(n_pts[j]) * frame_ms[j] / 1000
        rows_dev.append(np.full(t.size, dev[j], np.int32))
        rows_ts.append(start[j] + (t * 1000).astype(np.int64))
        rows_tid.append(np.full(t.size, j + 1, np.int64))
        rows_h.append((h0[j] - 4.905 * t * t + rng.normal(0, 0.05, t.size)).astype(np.float32))
        rows_x.append((10 + 0.5 * t + rng.normal(0, 0.05, t.size)).astype(np.float32))
        e = np.zeros(t.size, np.float32)
        e[-1] = 1
        rows_end.append(e)
    cat = {
        "device": np.concatenate(rows_dev),
        "ts": np.concatenate(rows_ts),
        "track_id": np.concatenate(rows_tid),
        "height_m": np.concatenate(rows_h),
        "horizontal_m": np.concatenate(rows_x),
        "end": np.concatenate(rows_end),
    }
    order = np.argsort(cat["ts"], kind="stable")
    cat = {k: v[order] for k, v in cat.items()}
    sec = (cat["ts"] - T0) // 1000
    batches = []
    for s in np.unique(sec):
        sel = np.flatnonzero(sec == s)
        batches.append(
            ReadingBatch(
                DeviceKind.HIGHFALL,
                cat["device"][sel],
                cat["ts"][sel],
                {k: cat[k][sel] for k in ("track_id", "height_m", "horizontal_m", "end")},
            )
        )
    return batches, int(cat["ts"].size)


class Clock:
    """CPU and wall seconds of a block (``with Clock() as c: ...; c.cpu, c.wall``)."""

    def __enter__(self) -> Clock:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self._c
        self.wall = time.perf_counter() - self._w


WARMUP_BATCHES = 4
"""Untimed batches first: a device's first three readings take the (one-off) warm-up path."""


def timed(update: Callable[[ReadingBatch], Any], batches: list[ReadingBatch]) -> Clock:
    for b in batches[:WARMUP_BATCHES]:
        update(b)
    with Clock() as c:
        for b in batches[WARMUP_BATCHES:]:
            update(b)
    return c


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def reference_rate(batches: list[ReadingBatch], n_devices: int) -> float:
    """The bare baseline: EWMA mean/variance z-score, gather + scatter, same batches."""
    mean = np.zeros(n_devices)
    var = np.ones(n_devices)
    with Clock() as c:
        for b in batches:
            x = b.fields["level_m"].astype(np.float64)
            idx = b.device
            m, v = mean[idx], var[idx]
            d = x - m
            _z = d / np.sqrt(v + 1e-9)
            mean[idx] = m + 0.01 * d
            var[idx] = v + 0.01 * (d * d - v)
    return rate(sum(len(b) for b in batches), c.cpu)


def river_rate(values: np.ndarray) -> float:
    from river import anomaly

    hst = anomaly.HalfSpaceTrees(seed=SEED)
    lo, hi = float(values.min()), float(values.max())
    xs = ((values - lo) / (hi - lo + 1e-12)).tolist()
    with Clock() as c:
        for v in xs:
            x = {"level": v}
            hst.score_one(x)
            hst.learn_one(x)
    return rate(len(xs), c.cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches and tracks (< 1 min)")
    ap.add_argument("--devices", type=int, default=480_000, help="fleet size (default 480000)")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per kind")
    args = ap.parse_args(argv)
    k = args.batches or (3 if args.quick else 10)
    n_tracks = 20_000 if args.quick else 100_000
    n_river = 20_000 if args.quick else 100_000
    tuned = tune_allocator()
    rng = np.random.default_rng(SEED)
    reg = build_fleet(FleetSpec(n_devices=args.devices, seed=SEED))
    cfg = load_config()
    print(f"registry {reg!r}; {k} timed batches per kind; allocator tuned: {tuned}", flush=True)

    data = {kind: fleet_batches(reg, kind, k + WARMUP_BATCHES, rng) for kind in DeviceKind}
    counts = {kind: sum(len(b) for b in bs[WARMUP_BATCHES:]) for kind, bs in data.items()}
    out: dict[str, Any] = {"devices": len(reg), "batches": k}
    out["reference_ewma_z_readings_per_s"] = reference_rate(data[DeviceKind.SEWAGE], len(reg))

    el = ElevatorDetector(reg, cfg.elevator)
    c = timed(el.update, data[DeviceKind.ELEVATOR])
    out["elevator_readings_per_s"] = rate(counts[DeviceKind.ELEVATOR], c.cpu)
    out["elevator_readings_per_s_wall"] = rate(counts[DeviceKind.ELEVATOR], c.wall)
    sw = SewageDetector(reg, cfg.sewage)
    c = timed(sw.update, data[DeviceKind.SEWAGE])
    out["sewage_readings_per_s"] = rate(counts[DeviceKind.SEWAGE], c.cpu)
    out["sewage_readings_per_s_wall"] = rate(counts[DeviceKind.SEWAGE], c.wall)

    cpu = wall = 0.0
    for kind in DeviceKind:
        g = GenericDetector(reg, kind, cfg.generic)
        c = timed(g.update, data[kind])
        out[f"generic_{kind.value}_readings_per_s"] = rate(counts[kind], c.cpu)
        cpu, wall = cpu + c.cpu, wall + c.wall
    out["generic_readings_per_s"] = rate(sum(counts.values()), cpu)
    out["generic_readings_per_s_wall"] = rate(sum(counts.values()), wall)
    with Clock() as c:
        GenericDetector(reg, DeviceKind.SEWAGE, cfg.generic).tick(T0 + 3_600_000)
    out["offline_check_devices_per_s"] = rate(counts[DeviceKind.SEWAGE] // k, c.cpu)

    ds = DetectorSet(reg, cfg)
    for i in range(WARMUP_BATCHES):
        for kind in DeviceKind:
            ds.update(data[kind][i])
    with Clock() as c:
        for i in range(WARMUP_BATCHES, k + WARMUP_BATCHES):
            for kind in DeviceKind:
                ds.update(data[kind][i])
            ds.tick(T0 + i * 1000 + 1000)
    out["detectorset_readings_per_s"] = rate(sum(counts.values()), c.cpu)

    batches, n_points = track_batches(reg, n_tracks, rng)
    hf = HighfallDetector(reg, cfg.highfall)
    with Clock() as c:
        found = sum(len(hf.update(b)) for b in batches)
    out["highfall_tracks_per_s"] = rate(n_tracks, c.cpu)
    out["highfall_tracks_per_s_wall"] = rate(n_tracks, c.wall)
    out["highfall_points_per_s"] = rate(n_points, c.cpu)
    out["highfall_found"] = found
    m, p = 10_000, 40
    tt = np.sort(rng.uniform(0, 3, (m, p)), axis=1)
    hh = 60 - 4.9 * tt**2 + rng.normal(0, 0.05, (m, p))
    xx = 5 + 0.3 * tt
    ww = np.ones((m, p))
    with Clock() as c:
        fit_tracks(tt, hh, xx, ww)
    out["highfall_fit_only_tracks_per_s"] = rate(m, c.cpu)

    levels = np.concatenate([b.fields["level_m"] for b in data[DeviceKind.SEWAGE]])[:n_river]
    out["river_readings_per_s"] = river_rate(levels.astype(np.float64))
    out["speedup_vs_river"] = out["generic_readings_per_s"] / out["river_readings_per_s"]
    goals = {
        "elevator_readings_per_s": 10e6,
        "sewage_readings_per_s": 10e6,
        "generic_readings_per_s": 20e6,
        "highfall_tracks_per_s": 200e3,
        "speedup_vs_river": 300,
    }
    for key, goal in goals.items():
        verdict = "ok" if out[key] >= goal else "BELOW"
        print(f"{key:38s} {out[key]:>14,.0f}   goal {goal:>12,.0f}  {verdict}")
    for key in sorted(set(out) - set(goals)):
        v = out[key]
        print(f"{key:38s} {v:>14,.0f}" if isinstance(v, float) else f"{key:38s} {v}")
    print(orjson.dumps(out).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
