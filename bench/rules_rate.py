"""Rules and dispatch throughput on PostgreSQL: a detection storm, then alert latency.

Two measurements, one run, fixed seed:

1. **Storm** (``detections_per_s``): a street-wide sewage storm. Every storm manhole emits
   a ``level_high`` detection per device second, so after the first wave almost every
   detection is a repeat (a dedup update), plus a trickle of new alerts per batch. Each
   batch goes through the rules engine into PostgreSQL (new alerts, audit, queue items,
   outbox in one transaction; counts written behind every second), with the pipeline's
   timer (``tick``) run every device second. The bare baseline is the same batches through
   the rules engine alone, no storage (``engine_only_detections_per_s``).
2. **Latency** (``alert_latency_p99_ms``): 1,000 new red alerts per second (trapped
   passengers), paced in 50 ms batches over a background of repeats; latency runs from the
   moment a batch was due (its detections exist) to the commit that makes its queue items
   claimable. A late batch counts its waiting time, so falling behind shows.

Usage: ``python bench/rules_rate.py [--quick] [--pg URL]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.dispatch import Dispatcher, DispatchSettings
from alerts.model import Scope
from alerts.service import AlertService
from gridwatch.batch import Detections
from gridwatch.clock import SystemClock
from gridwatch.domain import DetectionKind, DeviceKind
from rules.engine import RulesEngine
from rules.load import load_rules
from sim.fleet import FleetSpec, build_fleet
from storage.testing import PG_TEST_URL, temp_storage

SEED = 20261126


def storm_batches(
    storm: np.ndarray, fresh: np.ndarray, *, n_batches: int, per_batch_new: int, t0: int
) -> list[Detections]:
    """Batch k: every storm device once (repeats) plus ``per_batch_new`` new devices."""
    rng = np.random.default_rng(SEED)
    out = []
    for k in range(n_batches):
        new = fresh[k * per_batch_new : (k + 1) * per_batch_new]
        dev = np.concatenate([storm, new])
        frac = rng.uniform(0.85, 0.99, dev.size)
        out.append(
            Detections.of(DetectionKind.LEVEL_HIGH, dev, t0 + k * 1000, frac, level_fraction=frac)
        )
    return out


def run_storm(
    storage: object, reg: object, batches: list[Detections], warm: list[Detections]
) -> dict:
    clock = SystemClock()
    rules = load_rules(registry=reg)
    engine = RulesEngine(rules, reg, clock)
    d = Dispatcher(storage, engine, settings=DispatchSettings(outbox=True))
    d.start()
    for w in warm:  # the storm's first waves: every storm manhole's alert opens
        d.handle(w)
    d.tick()
    n = sum(len(b) for b in batches)
    t = time.perf_counter()
    for b in batches:
        d.handle(b)
        d.tick()
    d.close()
    elapsed = time.perf_counter() - t
    return {
        "detections": n,
        "seconds": elapsed,
        "detections_per_s": n / elapsed,
        "alerts_opened": d.stats.alerts_opened,
        "updates_written": d.stats.updates_written,
    }


def run_engine_only(reg: object, batches: list[Detections], warm: list[Detections]) -> float:
    clock = SystemClock()
    engine = RulesEngine(load_rules(registry=reg), reg, clock)
    next_id = 1
    for w in warm:
        ch = engine.process(w)
        engine.bind(ch.opened, list(range(next_id, next_id + len(ch.opened))))
        next_id += len(ch.opened)
    n = sum(len(b) for b in batches)
    t = time.perf_counter()
    for b in batches:
        ch = engine.process(b)
        engine.bind(ch.opened, list(range(next_id, next_id + len(ch.opened))))
        next_id += len(ch.opened)
        engine.tick()
        engine.drain_updates()
    return n / (time.perf_counter() - t)


def run_latency(
    storage: object, reg: object, seconds: float, rate: int, background: np.ndarray
) -> dict:
    clock = SystemClock()
    engine = RulesEngine(load_rules(registry=reg), reg, clock)
    d = Dispatcher(storage, engine)
    d.start()
    elevators = reg.devices_of_kind(DeviceKind.ELEVATOR)
    step_s = 0.05
    per_step = int(rate * step_s)
    steps = int(seconds / step_s)
    if per_step * steps > elevators.size:
        raise SystemExit(f"not enough elevators for {rate}/s over {seconds} s")
    # The background manholes' alerts are open already: their detections are repeats.
    d.handle(Detections.of(DetectionKind.STUCK, background, clock.now_ms(), 1.0))
    d.flush()
    lat_ms: list[float] = []
    start = time.perf_counter()
    next_tick = start + 1.0
    for k in range(steps):
        due = start + k * step_s
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        new = elevators[k * per_step : (k + 1) * per_step]
        now_ms = clock.now_ms()
        batch = Detections.concat(
            [
                Detections.of(DetectionKind.ENTRAPMENT, new, now_ms, 1.0, stopped_s=40.0),
                Detections.of(DetectionKind.STUCK, background, now_ms, 1.0),
            ]
        )
        d.handle(batch)  # returns after the commit: the items are claimable now
        done = time.perf_counter()
        lat_ms += [(done - due) * 1000.0] * per_step
        if done >= next_tick:
            d.tick()
            next_tick = done + 1.0
    d.close()
    elapsed = time.perf_counter() - start
    svc = AlertService(storage, reg, clock=clock)
    claimable = sum(q["ready"] for q in svc.queue_depths(Scope.everything(), level="grid"))
    arr = np.asarray(lat_ms)
    return {
        "new_alerts": per_step * steps,
        "new_alerts_per_s": per_step * steps / elapsed,
        "alert_latency_p50_ms": float(np.percentile(arr, 50)),
        "alert_latency_p99_ms": float(np.percentile(arr, 99)),
        "alert_latency_max_ms": float(arr.max()),
        "claimable_items": claimable,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    ap.add_argument("--pg", default=PG_TEST_URL, help="PostgreSQL URL (a temporary schema is used)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n_devices = 120_000 if args.quick else 480_000
    storm_n = 10_000 if args.quick else 40_000
    n_batches = 10 if args.quick else 30
    per_batch_new = 50
    latency_s = 5.0 if args.quick else 15.0
    reg = build_fleet(FleetSpec(n_devices=n_devices, seed=SEED))
    sewage = reg.devices_of_kind(DeviceKind.SEWAGE)
    rng = np.random.default_rng(SEED)
    chosen = rng.permutation(sewage)
    storm = np.sort(chosen[:storm_n])
    fresh = chosen[storm_n : storm_n + n_batches * per_batch_new]
    t0 = SystemClock().now_ms()
    warm = [  # level_high must hold 20 s (for_s) before its alert opens
        Detections.of(DetectionKind.LEVEL_HIGH, storm, t0 - dt, 0.9, level_fraction=0.9)
        for dt in (60_000, 30_000)
    ]
    batches = storm_batches(storm, fresh, n_batches=n_batches, per_batch_new=per_batch_new, t0=t0)
    print(f"registry {reg!r}; storm {storm_n} manholes x {n_batches} device-seconds", flush=True)

    baseline = run_engine_only(reg, batches, warm)
    print(f"engine only (no storage): {baseline:,.0f} detections/s", flush=True)
    with temp_storage("postgres", pg_url=args.pg) as storage:
        storm_res = run_storm(storage, reg, batches, warm)
    print(
        f"storm through rules into PostgreSQL: {storm_res['detections_per_s']:,.0f} detections/s "
        f"({storm_res['alerts_opened']} alerts opened)",
        flush=True,
    )
    background = np.sort(chosen[-500:])  # 10k repeats/s beside the new alerts
    with temp_storage("postgres", pg_url=args.pg) as storage:
        lat = run_latency(storage, reg, latency_s, 1000, background)
    print(
        f"latency at {lat['new_alerts_per_s']:,.0f} new alerts/s: "
        f"p50 {lat['alert_latency_p50_ms']:.1f} ms, p99 {lat['alert_latency_p99_ms']:.1f} ms",
        flush=True,
    )
    result = {
        "bench": "rules_rate",
        "quick": args.quick,
        "backend": "postgres",
        "devices": n_devices,
        "storm_devices": storm_n,
        "detections_per_s": round(storm_res["detections_per_s"]),
        "engine_only_detections_per_s": round(baseline),
        "ratio_vs_engine_only": round(storm_res["detections_per_s"] / baseline, 3),
        "storm_alerts_opened": storm_res["alerts_opened"],
        "alert_latency_p50_ms": round(lat["alert_latency_p50_ms"], 2),
        "alert_latency_p99_ms": round(lat["alert_latency_p99_ms"], 2),
        "alert_latency_max_ms": round(lat["alert_latency_max_ms"], 2),
        "new_alerts_per_s": round(lat["new_alerts_per_s"]),
        "claimable_items": lat["claimable_items"],
    }
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
