"""Detector throughput on full-fleet batches of the 480k registry, against river.

Every device of a kind reports once per batch, in random device order (the gather /
scatter worst case: no cache locality), one batch per simulated second, from a fleet in
normal operation (elevators on trips with stops at landings, manholes in dry weather,
cameras sending heartbeats; see ``elevator_batches``). Devices join over the first
``JOIN_SPREAD_S`` seconds, and each detector first runs ``WARMUP_READINGS`` untimed
batches (the generated batches again, later in time), so the timed batches meet detectors
that have been running, with their per-device cycles (a sewage ring wrapping and being
fitted) spread over time as in a pipeline. Each figure is the median of ``REPEATS`` timed
runs. ``--warmup 4`` measures the first readings of a fleet instead (the previous
definition of this benchmark).

River's ``anomaly.HalfSpaceTrees`` (what a Python user would pick) scores and learns the
sewage level stream one reading at a time, in the same run; ``speedup_vs_river`` compares
it with the generic checks on that very stream (sewage batches: the streaming score of
the level, plus range and stuck checks, with per-manhole state for 300,000 manholes);
``speedup_vs_river_generic_all_kinds`` uses the generic rate over every kind instead.

Per-detector rates are each detector on its own (each sorts its batch by device, see
``detectors/_core.py``); ``detectorset_readings_per_s`` is what the pipeline runs (one
sort per batch shared by the kind's detectors, and the timers), and
``detectorset_10_batches_per_s_readings_per_s`` the same with each second's readings
split into 10 batches of random device subsets (the ingest stage flushes every 50 ms).

Rates are per core: numpy ufuncs run single-threaded, and time is this process's CPU time
(``time.process_time``), so other load on a shared machine does not count against it
(it still costs cache, so quiet machines measure higher); wall-clock rates are printed
beside them. The bare baseline of the same run, a plain EWMA z-score over the same
480k-device shuffled batches (``reference_ewma_z_readings_per_s``), shows what the
machine gives at that moment (``shared/LIMITS.md``: ~60 M/s on a quiet machine).

Usage: ``python bench/detectors_rate.py [--quick] [--devices N] [--batches K]
[--warmup N]``. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
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


ELEVATOR_CYCLE_S = 60
"""Elevator batches repeat after this many seconds: every car's trip pattern divides it."""


def elevator_batches(reg: Registry, rng: np.random.Generator) -> list[ReadingBatch]:
    """``ELEVATOR_CYCLE_S`` one-second batches of cars in normal operation.

    Each car shuttles between two floors: up at rated speed, doors open for 5 s at the
    landing while passengers leave and board, then idle and empty with doors shut; then
    the same downwards. Half-trips last 10, 15 or 30 s, so the pattern repeats exactly
    after ``ELEVATOR_CYCLE_S`` and the batches can be replayed later in time (``later``).
    Faults are rare in a working fleet, and so are detections here.
    """
    dev = reg.devices_of_kind(DeviceKind.ELEVATOR)
    n = dev.size
    fh = reg.floor_height_m[dev].astype(np.float64)
    floors = reg.floors[dev].astype(np.float64)
    rated = reg.rated_speed_mps[dev].astype(np.float64)
    half = rng.choice([10, 15, 30], n)
    phase = rng.integers(0, ELEVATOR_CYCLE_S, n)
    hop = np.minimum(rng.integers(1, 4, n), np.maximum(floors - 1, 1))  # floors per trip
    low = np.floor(rng.random(n) * np.maximum(floors - hop, 1)) * fh
    top = low + hop * fh
    move_s = np.ceil(hop * fh / rated).astype(int)  # seconds at rated speed, < half
    persons = rng.integers(1, 5, n).astype(np.float32)
    out = []
    for i in range(ELEVATOR_CYCLE_S):
        c = (i + phase) % (2 * half)
        up = c < half
        t = np.where(up, c, c - half)  # seconds into this half-trip
        moving = t < move_s
        door = (t >= move_s) & (t < move_s + 5)
        travelled = np.minimum(t, move_s) * rated
        pos = np.where(up, np.minimum(low + travelled, top), np.maximum(top - travelled, low))
        speed = np.where(moving, np.where(up, rated, -rated), 0.0)
        occ = np.where(moving | door, persons, 0.0).astype(np.float32)
        vib = 0.2 * (0.25 + 0.75 * np.abs(speed) / rated) * (1 + 0.1 * rng.standard_normal(n))
        fields = {
            "position_m": (pos + 0.002 * rng.standard_normal(n)).astype(np.float32),
            "speed_mps": speed.astype(np.float32),
            "vibration_mps2": vib.astype(np.float32),
            "door_open": door.astype(np.float32),
            "occupancy": occ,
            "load_kg": (occ * 70 + rng.standard_normal(n)).astype(np.float32),
        }
        out.append(shuffled(DeviceKind.ELEVATOR, dev, i, fields, rng))
    return out


def shuffled(
    kind: DeviceKind,
    dev: npt.NDArray[np.int32],
    i: int,
    fields: dict[str, npt.NDArray[Any]],
    rng: np.random.Generator,
) -> ReadingBatch:
    """Second ``i``'s batch: every device once, in random order, within that second."""
    order = rng.permutation(dev.size)
    ts = np.full(dev.size, T0 + i * 1000, dtype=np.int64) + rng.integers(0, 1000, dev.size)
    return ReadingBatch(kind, dev[order], ts, {k: v[order] for k, v in fields.items()})


def fleet_batches(
    reg: Registry, kind: DeviceKind, k: int, rng: np.random.Generator
) -> list[ReadingBatch]:
    """``k`` batches: every device of ``kind`` once each, shuffled, one second apart
    (elevators: ``elevator_batches``, whatever ``k``)."""
    if kind is DeviceKind.ELEVATOR:
        return elevator_batches(reg, rng)
    dev = reg.devices_of_kind(kind)
    n = dev.size
    out = []
    if kind is DeviceKind.SEWAGE:
        depth = reg.depth_m[dev].astype(np.float64)
        base = rng.uniform(0.05, 0.15, n) * depth
        gauge = rng.random(n) < 0.5
    for i in range(k):
        if kind is DeviceKind.SEWAGE:
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
        out.append(shuffled(kind, dev, i, fields, rng))
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


WARMUP_READINGS = 100
"""Untimed readings per device first, so that the timed batches see detectors that have
been running, as in the pipeline: the generic score is past its median-of-three start,
its 20-reading warm-up and its cumulative-mean phase (1/alpha = 50 readings), the sewage
ring has wrapped. Not quite over: an elevator's vibration baselines per motion state
(30-reading warm-up, then a cumulative mean until 100 readings in that state; a car
cruises ~20 % of the time), so the elevator figure still includes some of that slower
path (about 10 % slower than with every baseline settled)."""


JOIN_SPREAD_S = 30
"""Devices join the stream over the first 30 s (one sewage ring window), so their
per-device cycles (a ring wrapping, a window fit) are spread over time as in a running
fleet, instead of all falling on the same batch every 30 s."""


def later(
    batches: list[ReadingBatch],
    count: int,
    start: int = 0,
    join_s: npt.NDArray[np.int64] | None = None,
) -> Iterator[ReadingBatch]:
    """``count`` batches cycling through ``batches`` from position ``start``, moved on in
    time by a whole cycle each round, so every device's readings stay in time order.
    With ``join_s`` (per registry device), batch ``i`` holds only the devices that
    joined by second ``i``."""
    k = len(batches)
    for i in range(start, start + count):
        b = batches[i % k]
        shift = (i // k) * k * 1000
        if shift:
            b = ReadingBatch(b.kind, b.device, b.ts_ms + shift, b.fields)
        if join_s is not None and i < JOIN_SPREAD_S:
            b = b.take(np.flatnonzero(join_s[b.device] <= i))
        yield b


REPEATS = 5
"""Each figure is the median of this many timed runs (3 with ``--quick``): a shared machine
preempts and evicts, and one timed elevator run is only ~50 ms of CPU."""


def median_clock(clocks: list[Clock]) -> Clock:
    return sorted(clocks, key=lambda c: c.cpu)[len(clocks) // 2]


def timed(  # noqa: PLR0917
    update: Callable[[ReadingBatch], Any],
    batches: list[ReadingBatch],
    k: int,
    warmup: int,
    repeats: int,
    join_s: npt.NDArray[np.int64] | None,
) -> Clock:
    """Warm ``update`` up on ``warmup`` batches, then time the next ``k``, ``repeats``
    times (the stream goes on), and return the median run."""
    for b in later(batches, warmup, join_s=join_s):
        update(b)
    clocks = []
    for r in range(repeats):
        timed_batches = list(later(batches, k, warmup + r * k))
        with Clock() as c:
            for b in timed_batches:
                update(b)
        clocks.append(c)
    return median_clock(clocks)


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
            hst.score_one(x)  # type: ignore[no-untyped-call]
            hst.learn_one(x)  # type: ignore[no-untyped-call]
    return rate(len(xs), c.cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches and tracks (< 1 min)")
    ap.add_argument("--devices", type=int, default=480_000, help="fleet size (default 480000)")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per kind")
    ap.add_argument(
        "--warmup",
        type=int,
        default=WARMUP_READINGS,
        help=f"untimed readings per device first (default {WARMUP_READINGS}: steady state; "
        "a few measures the warm-up transient instead)",
    )
    args = ap.parse_args(argv)
    k = args.batches or (5 if args.quick else 10)
    w = args.warmup
    reps = 3 if args.quick else REPEATS
    if w >= JOIN_SPREAD_S:
        joins = np.random.default_rng(SEED + 1)
        join_s: npt.NDArray[np.int64] | None = joins.integers(0, JOIN_SPREAD_S, args.devices)
    else:  # a short warm-up measures the start of a fleet: everyone joins at once
        join_s = None
    n_tracks = 20_000 if args.quick else 100_000
    n_river = 20_000 if args.quick else 100_000
    tuned = tune_allocator()
    rng = np.random.default_rng(SEED)
    reg = build_fleet(FleetSpec(n_devices=args.devices, seed=SEED))
    cfg = load_config()
    print(f"registry {reg!r}; {k} timed batches per kind; allocator tuned: {tuned}", flush=True)

    data = {kind: fleet_batches(reg, kind, k + 4, rng) for kind in DeviceKind}
    counts = {kind: k * len(bs[0]) for kind, bs in data.items()}
    out: dict[str, Any] = {"devices": len(reg), "batches": k}
    out["warmup_readings_per_device"] = w
    out["reference_ewma_z_readings_per_s"] = reference_rate(data[DeviceKind.SEWAGE], len(reg))

    el = ElevatorDetector(reg, cfg.elevator)
    c = timed(el.update, data[DeviceKind.ELEVATOR], k, w, reps, join_s)
    out["elevator_readings_per_s"] = rate(counts[DeviceKind.ELEVATOR], c.cpu)
    out["elevator_readings_per_s_wall"] = rate(counts[DeviceKind.ELEVATOR], c.wall)
    sw = SewageDetector(reg, cfg.sewage)
    c = timed(sw.update, data[DeviceKind.SEWAGE], k, w, reps, join_s)
    out["sewage_readings_per_s"] = rate(counts[DeviceKind.SEWAGE], c.cpu)
    out["sewage_readings_per_s_wall"] = rate(counts[DeviceKind.SEWAGE], c.wall)

    cpu = wall = 0.0
    for kind in DeviceKind:
        g = GenericDetector(reg, kind, cfg.generic)
        c = timed(g.update, data[kind], k, w, reps, join_s)
        out[f"generic_{kind.value}_readings_per_s"] = rate(counts[kind], c.cpu)
        cpu, wall = cpu + c.cpu, wall + c.wall
    out["generic_readings_per_s"] = rate(sum(counts.values()), cpu)
    out["generic_readings_per_s_wall"] = rate(sum(counts.values()), wall)
    with Clock() as c:
        GenericDetector(reg, DeviceKind.SEWAGE, cfg.generic).tick(T0 + 3_600_000)
    out["offline_check_devices_per_s"] = rate(len(data[DeviceKind.SEWAGE][0]), c.cpu)

    # The pipeline's path: each second's readings of every kind, then the timers; one
    # warmed-up DetectorSet, timed on whole seconds, then on seconds split in 10 batches.
    ds = DetectorSet(reg, cfg)
    warm = {kind: later(bs, w, join_s=join_s) for kind, bs in data.items()}
    for i in range(w):
        for kind in DeviceKind:
            ds.update(next(warm[kind]))
        ds.tick(T0 + i * 1000 + 1000)

    def detectorset_rate(first: int, parts: int) -> float:
        """Seconds from ``first`` on with each kind's readings in ``parts`` batches
        (random device subsets: the rows are in random device order); the median of
        ``reps`` runs of ``k`` seconds."""
        clocks, n = [], 0
        for r in range(reps):
            seconds = []
            for i in range(first + r * k, first + (r + 1) * k):
                split = []
                for bs in data.values():
                    b = next(later(bs, 1, i))
                    cuts = np.linspace(0, len(b), parts + 1).astype(np.intp)
                    split += [b.take(np.arange(lo, hi)) for lo, hi in itertools.pairwise(cuts)]
                seconds.append(split)
            n = sum(len(b) for split in seconds for b in split)
            with Clock() as c:
                for split in seconds:
                    for b in split:
                        ds.update(b)
                    ds.tick(int(max(b.ts_ms.max() for b in split)) + 1)
            clocks.append(c)
        return rate(n, median_clock(clocks).cpu)

    out["detectorset_readings_per_s"] = detectorset_rate(w, 1)
    out["detectorset_10_batches_per_s_readings_per_s"] = detectorset_rate(w + reps * k, 10)

    batches, n_points = track_batches(reg, n_tracks, rng)
    clocks = []
    for _ in range(reps):
        hf = HighfallDetector(reg, cfg.highfall)
        with Clock() as c:
            found = sum(len(hf.update(b)) for b in batches)
        clocks.append(c)
    c = median_clock(clocks)
    out["highfall_tracks_per_s"] = rate(n_tracks, c.cpu)
    out["highfall_tracks_per_s_wall"] = rate(n_tracks, c.wall)
    out["highfall_points_per_s"] = rate(n_points, c.cpu)
    out["highfall_found"] = found
    m, p = 10_000, 40
    tt = np.sort(rng.uniform(0, 3, (m, p)), axis=1)
    hh = 60 - 4.9 * tt**2 + rng.normal(0, 0.05, (m, p))
    xx = 5 + 0.3 * tt
    ww = np.ones((m, p))
    clocks = []
    for _ in range(reps):
        with Clock() as c:
            fit_tracks(tt, hh, xx, ww)
        clocks.append(c)
    out["highfall_fit_only_tracks_per_s"] = rate(m, median_clock(clocks).cpu)

    levels = np.concatenate([b.fields["level_m"] for b in data[DeviceKind.SEWAGE]])[:n_river]
    out["river_readings_per_s"] = river_rate(levels.astype(np.float64))
    # the same readings: the generic checks on the sewage stream that river scored
    out["speedup_vs_river"] = out["generic_sewage_readings_per_s"] / out["river_readings_per_s"]
    out["speedup_vs_river_generic_all_kinds"] = (
        out["generic_readings_per_s"] / out["river_readings_per_s"]
    )
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
