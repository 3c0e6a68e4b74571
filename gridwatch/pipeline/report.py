"""The replay report: ``report.json`` (everything) and ``report.png`` (three plots).

The JSON is meant to be diffed between two rule files (``gridwatch replay --compare``):
per fault kind, labels, found, recall, true/false positives, precision and time to alert
(p50/p90/max), plus throughput and what was rejected. The PNG shows readings/s over the
replay, the distribution of time to alert per fault kind, and precision/recall bars.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gridwatch.pipeline.replay import ReplayResult, latency_array


def build_report(result: ReplayResult) -> dict[str, Any]:
    sc = result.scenario
    evaluation = result.evaluation()
    alerts_by: dict[str, dict[str, int]] = {}
    for r in result.alert_rows:
        alerts_by.setdefault(r["kind"], {}).setdefault(r["grade"], 0)
        alerts_by[r["kind"]][r["grade"]] += 1
    label_counts: dict[str, int] = {}
    for lb in result.labels:
        label_counts[lb.kind] = label_counts.get(lb.kind, 0) + 1
    det = result.detector_evaluation()
    return {
        "scenario": {
            "devices": sc.devices,
            "duration_s": sc.duration_s,
            "seed": sc.seed,
            "fault_scale": sc.fault_scale,
            "rates": dict(sc.rates),
            "step_s": sc.step_s,
            "rules": str(sc.rules) if sc.rules else "shipped default_rules.toml",
            "rules_digest": result.rules_digest,
            "plans": str(sc.plans) if sc.plans else "shipped plans.toml",
            "start_ms": result.start_ms,
            "end_ms": result.end_ms,
        },
        "throughput": {
            "readings": result.readings,
            "stored": result.stored,
            "wall_s": round(result.wall_s, 3),
            "readings_per_s": round(result.readings / result.wall_s, 1) if result.wall_s else None,
            "speedup": round(sc.duration_s / result.wall_s, 1) if result.wall_s else None,
            "rejected": result.rejected,
        },
        "labels": dict(sorted(label_counts.items())),
        "alerts": alerts_by,
        "area_alerts": sum(1 for r in result.alert_rows if r["scope"] != "device"),
        "evaluation": evaluation,
        "detectors": _jsonable(det) if det is not None else None,
        "timeline": result.timeline,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def _jsonable(obj: Any) -> Any:
    return orjson.loads(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=str))


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    png_path = out_dir / "report.png"
    plot_report(report, png_path)
    return json_path, png_path


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = report["evaluation"]
    faults = [k for k in ev if not k.startswith("_") and ev[k]["labels"]]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    sc = report["scenario"]
    fig.suptitle(
        f"gridwatch replay: {sc['devices']:,} devices, {sc['duration_s'] / 3600:.2f} h simulated, "
        f"seed {sc['seed']}, rules {Path(str(sc['rules'])).name} ({sc['rules_digest'][:10]})"
    )

    ax = axes[0]
    tl = report["timeline"]
    if tl["sim_s"]:
        sim_min = np.asarray(tl["sim_s"]) / 60
        step_s = np.diff(np.concatenate([[0.0], np.asarray(tl["sim_s"])]))
        offered = np.asarray(tl["readings"]) / np.maximum(step_s, 1e-9)
        ax.plot(sim_min, tl["readings_per_s"], lw=0.8, label="pipeline (per wall second)")
        ax.plot(sim_min, offered, lw=0.8, label="fleet (per simulated second)")
        ax.set_yscale("log")
    ax.set_xlabel("simulated minutes")
    ax.set_ylabel("readings/s")
    ax.set_title(f"readings/s (mean {report['throughput']['readings_per_s']:,} per wall s)")
    ax.legend(loc="lower right", fontsize=8)

    ax = axes[1]
    lat = latency_array(ev)
    data = [lat[f] for f in faults if lat[f].size]
    names = [f for f in faults if lat[f].size]
    if data:
        ax.boxplot(data, orientation="horizontal", tick_labels=names, showfliers=True)
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("time to alert, s (alert opened - fault start, device time)")
    ax.set_title("alert latency per fault kind")

    ax = axes[2]
    x = np.arange(len(faults))
    recall = [ev[f]["recall"] or 0 for f in faults]
    precision = [ev[f]["precision"] if ev[f]["precision"] is not None else 0 for f in faults]
    ax.bar(x - 0.2, recall, 0.4, label="recall")
    ax.bar(x + 0.2, precision, 0.4, label="precision")
    ax.set_xticks(x, faults, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ov = ev["_overall"]
    ax.set_title(
        f"precision / recall per fault kind (overall R {_pct(ov['recall'])}, "
        f"P {_pct(ov['precision'])})"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"
