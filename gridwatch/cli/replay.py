"""``gridwatch replay``: a labelled simulated scenario end to end, and a report.

The simulator's readings go through ingest, the detectors, the rules and the alert
dispatcher into a fresh database as fast as they go (the clock is the simulation's), then
the alerts are scored against the simulator's labels. Writes ``report.json`` and
``report.png`` (readings/s, time to alert per fault kind, precision/recall) to ``--out``.
Compare a rule change with the shipped rules::

    gridwatch replay --out reports/base
    gridwatch replay --rules my_rules.toml --out reports/mine --compare reports/base/report.json
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson

from gridwatch.errors import ConfigError

log = logging.getLogger(__name__)


def _rate(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND.FAULT=RATE")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: rate {value!r} is not a number") from None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a labelled scenario through the pipeline; report precision/recall",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=10_000, help="fleet size (default 10000)")
    p.add_argument(
        "--duration", type=float, default=7200.0, help="simulated seconds (default 7200)"
    )
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--rules", type=Path, help="rules file to evaluate (default: shipped)")
    p.add_argument("--plans", type=Path, help="plans file (default: shipped)")
    p.add_argument("--fault-scale", type=float, default=1.0, help="multiply every fault rate")
    p.add_argument("--rate", type=_rate, action="append", default=[], metavar="KIND.FAULT=RATE")
    p.add_argument("--step", type=float, default=2.0, help="simulated seconds per step")
    p.add_argument("--out", type=Path, default=Path("replay-report"), help="report directory")
    p.add_argument("--db", help="database for the replay (default: a fresh SQLite in --out)")
    p.add_argument(
        "--no-store-readings", action="store_true", help="skip raw telemetry storage (faster)"
    )
    p.add_argument("--compare", type=Path, help="an earlier report.json to compare with")
    p.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    from gridwatch.pipeline.evaluate import compare
    from gridwatch.pipeline.replay import Scenario, run_replay
    from gridwatch.pipeline.report import build_report, write_report

    if args.devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {args.devices}")
    if args.duration <= 0:
        raise ConfigError(f"--duration must be > 0, got {args.duration}")
    old = None
    if args.compare is not None:
        try:
            old = orjson.loads(args.compare.read_bytes())["evaluation"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"--compare {args.compare}: not a replay report: {exc!r}") from exc
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    db = args.db or f"sqlite:///{(work / 'replay.db').resolve()}"
    scenario = Scenario(
        devices=args.devices,
        duration_s=args.duration,
        seed=args.seed,
        fault_scale=args.fault_scale,
        rates=dict(args.rate),
        step_s=args.step,
        rules=args.rules,
        plans=args.plans,
        store_readings=not args.no_store_readings,
    )
    shown = [-1]

    def progress(frac: float, readings: int) -> None:
        pct = int(frac * 10)
        if pct != shown[0]:
            shown[0] = pct
            log.info("replay progress", extra={"percent": pct * 10, "readings": readings})

    readings_db = None if args.db else f"sqlite:///{(work / 'readings.db').resolve()}"
    result = run_replay(scenario, db, work, readings_url=readings_db, progress=progress)
    report = build_report(result)
    json_path, png_path = write_report(report, out)
    _print_table(report["evaluation"])
    if old is not None:
        _print_compare(compare(old, report["evaluation"]))
    print(f"report: {json_path}  plot: {png_path}")
    summary = {
        "readings": result.readings,
        "readings_per_s": report["throughput"]["readings_per_s"],
        "recall": report["evaluation"]["_overall"]["recall"],
        "precision": report["evaluation"]["_overall"]["precision"],
        "report": str(json_path),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:5.1f}%" if pct else f"{v:7.1f}"


def _print_table(ev: dict[str, Any]) -> None:
    print(
        f"{'fault':16s} {'labels':>6s} {'found':>6s} {'recall':>7s} {'alerts':>6s} "
        f"{'FP':>4s} {'precis.':>7s} {'p50 s':>7s} {'p90 s':>7s}"
    )
    for fault, v in ev.items():
        if fault.startswith("_"):
            continue
        print(
            f"{fault:16s} {v['labels']:6d} {v['found']:6d} {_fmt(v['recall']):>7s} "
            f"{v['alerts']:6d} {v['false_positives']:4d} {_fmt(v['precision']):>7s} "
            f"{_fmt(v['time_to_alert_p50_s'], False)} {_fmt(v['time_to_alert_p90_s'], False)}"
        )
    o = ev["_overall"]
    print(
        f"{'overall':16s} {o['labels']:6d} {o['found']:6d} {_fmt(o['recall']):>7s} "
        f"{'':6s} {o['false_positives']:4d} {_fmt(o['precision']):>7s}"
    )


def _print_compare(rows: list[dict[str, Any]]) -> None:
    print("\ncompared with the earlier report (old -> new):")
    for r in rows:
        parts = []
        for key in ("recall", "precision", "time_to_alert_p50_s"):
            a, b, _ = r[key]
            pct = key != "time_to_alert_p50_s"
            parts.append(f"{key} {_fmt(a, pct).strip()} -> {_fmt(b, pct).strip()}")
        print(f"  {r['fault']:16s} " + "  ".join(parts))
