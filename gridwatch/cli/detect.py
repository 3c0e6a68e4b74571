"""``gridwatch score-csv`` (the streaming anomaly score, offline) and ``gridwatch train``.

``score-csv`` reads a ``timestamp,value`` CSV of one series and writes
``timestamp,value,anomaly_score`` with the generic detector's streaming score, one pass,
row by row, no look-ahead: the score of a row depends only on the rows above it, exactly
as it would live. ``train elevator`` fits the per-class IsolationForest models on windows
of simulated normal operation (or of recorded readings) for the elevator window scoring.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gridwatch.domain import DeviceKind
from gridwatch.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    s = sub.add_parser(
        "score-csv",
        help="streaming anomaly score of one timestamp,value series (offline)",
        description=(
            "Score a timestamp,value CSV with the generic detector's streaming anomaly "
            "score; writes timestamp,value,anomaly_score (empty score: value missing)."
        ),
    )
    s.add_argument("input", type=Path, help="CSV with columns timestamp,value ('-': stdin)")
    s.add_argument("output", type=Path, help="CSV to write ('-': stdout)")
    s.add_argument("--detectors", type=Path, default=None, help="detector config TOML")
    s.add_argument(
        "--min-scale",
        type=float,
        default=None,
        help="the sensor's resolution in the value's unit (default generic.series_min_scale)",
    )
    s.add_argument(
        "--channel",
        default=None,
        metavar="KIND.FIELD",
        help="use that channel's min_scale (e.g. sewage.level_m)",
    )
    s.set_defaults(func=_score_csv)

    t = sub.add_parser("train", help="fit detector models offline")
    tsub = t.add_subparsers(dest="train_what", metavar="MODEL", required=True)
    e = tsub.add_parser(
        "elevator",
        help="IsolationForest per elevator class on windows of normal operation",
        description=(
            "Simulate (or read) normal elevator operation, cut it into the window model's "
            "feature windows and fit one IsolationForest per elevator class; set "
            "elevator_model.enabled = true and model_path to use it."
        ),
    )
    e.add_argument("--out", type=Path, required=True, help="model file to write (.pkl)")
    e.add_argument("--devices", type=int, default=20_000, help="simulated fleet size")
    e.add_argument("--hours", type=float, default=2.0, help="simulated hours")
    e.add_argument("--seed", type=int, default=20261126)
    e.add_argument("--estimators", type=int, default=200, help="trees per forest")
    e.add_argument("--detectors", type=Path, default=None, help="detector config TOML")
    e.set_defaults(func=_train_elevator)


# -- score-csv -------------------------------------------------------------------------


def _min_scale(args: argparse.Namespace) -> tuple[Any, float]:
    from detectors.config import load_config

    cfg = load_config(args.detectors)
    if args.min_scale is not None:
        if not args.min_scale > 0:
            raise ConfigError(f"--min-scale = {args.min_scale}: must be > 0")
        return cfg, args.min_scale
    if args.channel:
        kind, _, field = args.channel.partition(".")
        try:
            return cfg, cfg.generic.channels[DeviceKind(kind)][field].min_scale
        except (ValueError, KeyError):
            known = [f"{k.value}.{f}" for k, v in cfg.generic.channels.items() for f in v]
            raise ConfigError(f"--channel {args.channel!r}: not one of {known}") from None
    return cfg, cfg.generic.series_min_scale


def _open_in(path: Path) -> TextIO:
    if str(path) == "-":
        return sys.stdin
    try:
        return path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None


def _score_csv(args: argparse.Namespace) -> int:
    from detectors.robust import RobustScorer

    cfg, min_scale = _min_scale(args)
    g = cfg.generic
    scorer = RobustScorer(
        1,
        warmup_readings=g.warmup_readings,
        alpha=g.alpha,
        trend_beta=g.trend_beta,
        huber_k=g.huber_k,
        score_z_lo=g.score_z_lo,
        score_z_hi=g.score_z_hi,
        shift_z=g.shift_z,
        shift_readings=g.shift_readings,
        min_scale=min_scale,
    )
    fin = _open_in(args.input)
    fout = sys.stdout if str(args.output) == "-" else args.output.open("w", newline="")
    t0 = time.perf_counter()
    rows = scored = skipped = anomalies = 0
    try:
        reader = csv.reader(fin)
        writer = csv.writer(fout, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score"])
        for lineno, row in enumerate(reader, start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != 2:
                raise ConfigError(
                    f"{args.input}:{lineno}: expected 2 columns (timestamp,value), got {len(row)}"
                )
            ts, raw = row[0].strip(), row[1].strip()
            try:
                value = float(raw)
            except ValueError:
                if lineno == 1:  # a header line
                    continue
                value = math.nan
            rows += 1
            if not math.isfinite(value):
                skipped += 1
                writer.writerow([ts, raw, ""])
                continue
            score = scorer.update_one(0, value)[0]
            scored += 1
            anomalies += score >= g.emit_score
            writer.writerow([ts, raw, f"{score:.4f}"])
    finally:
        if fin is not sys.stdin:
            fin.close()
        if fout is not sys.stdout:
            fout.close()
    seconds = time.perf_counter() - t0
    print(
        f"scored {scored} of {rows} rows ({skipped} without a finite value), "
        f"{anomalies} at or above {g.emit_score} in {seconds:.2f} s -> {args.output}",
        file=sys.stderr,
    )
    return 0


# -- train elevator ----------------------------------------------------------------------


def _train_elevator(args: argparse.Namespace) -> int:
    from detectors.alloc import tune_allocator
    from detectors.config import load_config
    from detectors.elevator import ElevatorDetector
    from detectors.elevator_model import WindowCollector, fit_models
    from sim.engine import FleetSim, SimSpec
    from sim.fleet import FleetSpec, build_fleet

    if args.devices < 1 or not args.hours > 0:
        raise ConfigError("--devices must be >= 1 and --hours > 0")
    tune_allocator()
    cfg = load_config(args.detectors)
    mp = cfg.elevator_model
    reg = build_fleet(FleetSpec(n_devices=args.devices, seed=args.seed))
    sim = FleetSim(reg, SimSpec(seed=args.seed, fault_scale=0.0))  # normal operation only
    probe = ElevatorDetector(reg, cfg.elevator)
    collector = WindowCollector(reg, probe.index, mp.window_s, mp.min_window_readings)
    det = ElevatorDetector(reg, cfg.elevator, window_model=collector)
    end = sim.now_ms + int(args.hours * 3_600_000)
    t0 = time.perf_counter()
    while sim.now_ms < end:
        for b in sim.advance(min(sim.now_ms + 60_000, end)):
            if b.kind is DeviceKind.ELEVATOR:
                det.update(b)
    features, classes = collector.windows()
    print(
        f"{features.shape[0]} windows of {mp.window_s:g} s from "
        f"{probe.index.size} simulated cars in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    try:
        trained = fit_models(
            features, classes, mp.window_s, n_estimators=args.estimators, seed=args.seed
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    trained.save(args.out)
    counts = ", ".join(f"{k} m/s: {v}" for k, v in sorted((trained.n_windows or {}).items()))
    print(f"wrote {args.out} ({counts} windows per class)", file=sys.stderr)
    log.info(
        "elevator model trained", extra={"path": str(args.out), "windows": int(features.shape[0])}
    )
    return 0
