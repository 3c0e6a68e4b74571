"""Detection quality on the simulator's labelled faults: precision, recall, latency.

Replays a simulated district (default 50,000 devices, 2 simulated hours, the
simulator's default fault rates) through a ``DetectorSet`` second by second, ticking its
timers after each second, then matches detections to the ground-truth labels with the
rules of ``detectors.evaluate`` (documented in ``docs/detectors.md``) and checks the
issue's thresholds (``detectors.evaluate.ACCEPTANCE``).

Writes a PNG plot (precision / recall per fault kind and median latency) and prints, as
its last line, one JSON object: ``{"per_fault": {kind: {"precision", "recall",
"latency_p50_s", ...}}, "entrapment_latency_max_s", "overflow_lead_ge_600s_share",
"falling_object_recall", "distractor_fp_rate", "origin_floor_within_1_share",
"passed", ...}``.

Usage: ``python bench/quality.py [--quick] [--devices N] [--hours H] [--seed S]
[--plot PATH]``; ``--quick`` replays 8,000 devices with 6x the fault rates (< 1 min).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import orjson

from detectors.alloc import tune_allocator
from detectors.config import load_config
from detectors.detectorset import DetectorSet
from detectors.evaluate import ACCEPTANCE, checks, evaluate, replay
from sim.engine import FleetSim, SimSpec
from sim.fleet import FleetSpec, build_fleet

SEED = 20261126


def run(
    devices: int, hours: float, seed: int, fault_scale: float = 1.0, config: Path | None = None
) -> dict[str, Any]:
    """Replay and evaluate; the result of ``detectors.evaluate.evaluate`` plus run facts."""
    reg = build_fleet(FleetSpec(n_devices=devices, seed=seed))
    sim = FleetSim(reg, SimSpec(seed=seed, fault_scale=fault_scale))
    ds = DetectorSet(reg, load_config(config))
    start = sim.now_ms
    end = start + int(hours * 3_600_000)
    t0 = time.perf_counter()
    det, readings = replay(ds, sim.advance, start, end)
    wall = time.perf_counter() - t0
    result = evaluate(det, sim.labels, end)
    result["devices"] = devices
    result["hours"] = hours
    result["seed"] = seed
    result["fault_scale"] = fault_scale
    result["readings"] = readings
    result["detections"] = len(det)
    result["replay_wall_s"] = round(wall, 2)
    result["detector_cpu_s"] = {k: round(v, 2) for k, v in ds.timings_s.items()}
    result["checks"] = checks(result)
    result["passed"] = all(result["checks"].values())
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: headline figures first, then per fault kind."""
    fo = result["falling_object"]
    per_fault = {
        k: {
            key: v[key]
            for key in (
                "precision",
                "recall",
                "latency_p50_s",
                "latency_max_s",
                "labels",
                "found",
                "true_episodes",
                "false_episodes",
            )
            if key in v
        }
        for k, v in result["per_fault"].items()
    }
    return {
        "per_fault": per_fault,
        "entrapment_latency_max_s": result["entrapment_latency_max_s"],
        "overflow_lead_ge_600s_share": result["overflow"]["lead_ge_600s_share"],
        "overflow_events": result["overflow"]["events"],
        "overflow_lead_p50_s": result["overflow"]["lead_p50_s"],
        "falling_object_recall": fo["recall"],
        "distractor_tracks": fo["distractor_tracks"],
        "distractor_fp_rate": fo["distractor_fp_rate"],
        "origin_floor_within_1_share": fo["floor_within_1_share"],
        "devices": result["devices"],
        "hours": result["hours"],
        "seed": result["seed"],
        "fault_scale": result["fault_scale"],
        "readings": result["readings"],
        "replay_wall_s": result["replay_wall_s"],
        "failed_checks": sorted(k for k, ok in result["checks"].items() if not ok),
        "passed": result["passed"],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(result["per_fault"])
    prec = [result["per_fault"][k]["precision"] for k in kinds]
    rec = [result["per_fault"][k]["recall"] for k in kinds]
    lat = [result["per_fault"][k]["latency_p50_s"] for k in kinds]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    x = range(len(kinds))
    ax1.bar([i - 0.2 for i in x], prec, width=0.4, label="precision")
    ax1.bar([i + 0.2 for i in x], rec, width=0.4, label="recall")
    ax1.axhline(ACCEPTANCE["precision_min"], color="k", lw=0.8, ls="--", label="goal 0.95")
    ax1.set_ylim(0.8, 1.01)
    ax1.set_ylabel("share")
    ax1.legend(loc="lower left")
    ax1.set_title(
        f"gridwatch detectors on {result['devices']:,} simulated devices, "
        f"{result['hours']:g} h (seed {result['seed']})"
    )
    ax2.bar(list(x), [v if not math.isnan(v) and v > 0 else 0.01 for v in lat], color="tab:green")
    ax2.set_yscale("log")
    ax2.set_ylabel("median latency, s (log)")
    ax2.set_xticks(list(x), kinds, rotation=30, ha="right")
    for i, v in enumerate(lat):
        if not math.isnan(v):
            ax2.text(
                i,
                max(v, 0.01),
                f"{v:.0f}" if v >= 1 else f"{v:.1f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8,000 devices, 6x fault rates")
    ap.add_argument("--devices", type=int, default=None, help="fleet size (default 50000)")
    ap.add_argument("--hours", type=float, default=2.0, help="simulated hours (default 2)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--fault-scale", type=float, default=None, help="multiply fault rates")
    ap.add_argument("--config", type=Path, default=None, help="detector config TOML")
    ap.add_argument(
        "--plot",
        type=Path,
        default=Path("bench/out/quality.png"),
        help="PNG output (default bench/out/quality.png, git-ignored)",
    )
    args = ap.parse_args(argv)
    tune_allocator()
    devices = args.devices or (8_000 if args.quick else 50_000)
    scale = args.fault_scale or (6.0 if args.quick else 1.0)
    result = run(devices, args.hours, args.seed, scale, args.config)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.plot)
    for k, v in result["per_fault"].items():
        print(
            f"{k:16s} precision {v['precision']:.3f}  recall {v['recall']:.3f}  "
            f"labels {v['labels']:4d}  latency p50 {v['latency_p50_s']:8.1f} s"
        )
    s = summary(result)
    print(
        f"entrapment latency max {s['entrapment_latency_max_s']:.1f} s; overflow warned >= "
        f"10 min ahead {s['overflow_lead_ge_600s_share']:.3f} of {s['overflow_events']}; "
        f"falling recall {s['falling_object_recall']:.3f}, distractor FP rate "
        f"{s['distractor_fp_rate']:.4f}, floor within 1 {s['origin_floor_within_1_share']:.3f}"
    )
    print(f"plot: {args.plot}; passed: {s['passed']} {s['failed_checks'] or ''}")
    print(orjson.dumps(s, option=orjson.OPT_SERIALIZE_NUMPY, default=_nan).decode())
    return 0 if s["passed"] else 1


def _nan(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    raise TypeError


if __name__ == "__main__":
    raise SystemExit(main())
