"""Score detections against labelled ground truth (the simulator's fault labels).

The rules of the match are part of the product's claims, so they live here, next to the
detectors, and ``docs/detectors.md`` repeats them:

* A **fault kind** is found by the detection kinds in ``FAULT_DETECTIONS`` (an overflow
  by ``overflow_forecast``, a door fault by ``door_open_moving`` or
  ``door_reopen_cycles``...).
* **Recall**: a label is found when a detection of one of its kinds, on the same device,
  has ``ts`` within ``[start - before_s, end + after_s]`` (``TOLERANCE_S``). Labels whose
  ``observable_ms`` is after the end of the replay are not counted (their signature
  never reached the readings). Falling objects match on ``(device, track_id)`` instead.
* **Latency** is the first matching detection's ``ts`` minus the label's ``start_ms``.
* **Precision**: detections of a kind are merged per device into *episodes* (gaps under
  ``EPISODE_GAP_S``). An episode overlapping a matching label's window is a true
  positive; one overlapping a label of a fault kind listed in ``EXPLAINED_BY`` for that
  detection kind is a symptom of another fault and not counted; any other is a false
  positive. Precision = TP / (TP + FP) over the detection kinds of the fault kind.
* **Distractors** (birds, leaves, insects, rain streaks) count as false positives of
  falling objects when a ``falling_object`` detection has their ``(device, track_id)``;
  the distractor FP rate is that count over all distractor tracks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DetectionKind

MS_PER_S = 1000
D = DetectionKind

FAULT_DETECTIONS: Final[Mapping[str, frozenset[DetectionKind]]] = {
    "entrapment": frozenset({D.ENTRAPMENT}),
    "door_fault": frozenset({D.DOOR_OPEN_MOVING, D.DOOR_REOPEN_CYCLES}),
    "overspeed": frozenset({D.OVERSPEED}),
    "vibration_wear": frozenset({D.VIBRATION_RISE}),
    "overflow": frozenset({D.OVERFLOW_FORECAST}),
    "blockage": frozenset({D.BLOCKAGE}),
    "cover_displaced": frozenset({D.COVER_DISPLACED}),
    "stuck_sensor": frozenset({D.STUCK}),
    "offline": frozenset({D.OFFLINE}),
    "falling_object": frozenset({D.FALLING_OBJECT}),
}
"""Which detection kinds find which labelled fault kind."""

TOLERANCE_S: Final[Mapping[str, tuple[float, float]]] = {
    "entrapment": (5.0, 60.0),
    "door_fault": (5.0, 30.0),
    "overspeed": (5.0, 10.0),
    "vibration_wear": (5.0, 600.0),
    "overflow": (5.0, 120.0),
    "blockage": (5.0, 120.0),
    "cover_displaced": (5.0, 60.0),
    "stuck_sensor": (5.0, 60.0),
    "offline": (5.0, 60.0),
    "falling_object": (5.0, 5.0),
}
"""(before_s, after_s) around a label's [start, end] in which a detection matches it.

After the end: the device's next reports (an offline device's first report after it
returns comes up to one interval late; a repaired bearing's CUSUM needs a few minutes
of normal vibration to fall back below its decision level)."""

EXPLAINED_BY: Final[Mapping[DetectionKind, frozenset[str]]] = {
    # a sewer that overflows in dry weather shows the blockage signature on the way up
    D.BLOCKAGE: frozenset({"overflow"}),
    # a stuck or silent sensor explains nothing else; listed for completeness
    D.STUCK: frozenset(),
    D.OFFLINE: frozenset(),
}
"""Detection kinds that are legitimate symptoms of another labelled fault on the device."""

ACCEPTANCE: Final = {
    "precision_min": 0.95,
    "recall_min": 0.95,
    "entrapment_latency_max_s": 45.0,
    "overflow_lead_s": 600.0,
    "overflow_lead_share_min": 0.90,
    "falling_recall_min": 0.95,
    "distractor_fp_rate_max": 0.01,
    "floor_within_1_share_min": 0.90,
}
"""The issue's acceptance thresholds, shared by ``bench/quality.py`` and its test."""

EPISODE_GAP_S: Final = 300.0
DISTRACTOR_KINDS: Final = frozenset({"bird", "leaf", "insect", "rain_streak"})


class LabelLike(Protocol):
    """What the matching reads of a label (``sim.faults.FaultLabel``, frozen: read-only)."""

    @property
    def device(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def start_ms(self) -> int: ...
    @property
    def end_ms(self) -> int: ...
    @property
    def extra(self) -> dict[str, Any]: ...


@dataclass
class _Episode:
    device: int
    kind: DetectionKind
    first_ms: int
    last_ms: int


def _episodes(det: Detections, kinds: frozenset[DetectionKind]) -> list[_Episode]:
    codes = np.array([k.code for k in kinds], dtype=np.uint8)
    sel = np.flatnonzero(np.isin(det.kind, codes))
    if sel.size == 0:
        return []
    dev, kind, ts = det.device[sel], det.kind[sel], det.ts_ms[sel]
    order = np.lexsort((ts, kind, dev))
    dev, kind, ts = dev[order], kind[order], ts[order]
    brk = np.ones(dev.size, dtype=bool)
    brk[1:] = (
        (dev[1:] != dev[:-1])
        | (kind[1:] != kind[:-1])
        | ((ts[1:] - ts[:-1]) > EPISODE_GAP_S * MS_PER_S)
    )
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], dev.size) - 1
    return [
        _Episode(int(dev[s]), DetectionKind.from_code(int(kind[s])), int(ts[s]), int(ts[e]))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def _stat(fn: Callable[[npt.NDArray[np.float64]], Any], a: npt.NDArray[np.float64]) -> float:
    return float(fn(a)) if a.size else float("nan")


def _window(lb: LabelLike, fault: str) -> tuple[int, int]:
    before, after = TOLERANCE_S.get(fault, (5.0, 60.0))
    return lb.start_ms - int(before * MS_PER_S), lb.end_ms + int(after * MS_PER_S)


def evaluate(det: Detections, labels: Sequence[LabelLike], replay_end_ms: int) -> dict[str, Any]:
    """Per fault kind precision, recall, latency; plus the issue's headline figures."""
    by_dev: dict[int, list[LabelLike]] = defaultdict(list)
    for lb in labels:
        by_dev[lb.device].append(lb)
    out: dict[str, Any] = {"per_fault": {}}
    for fault, kinds in FAULT_DETECTIONS.items():
        if fault == "falling_object":
            continue
        out["per_fault"][fault] = _score_fault(
            det, labels=labels, by_dev=by_dev, fault=fault, kinds=kinds, replay_end_ms=replay_end_ms
        )
    fo = _falling(det, labels, replay_end_ms)
    out["per_fault"]["falling_object"] = fo.pop("per_fault")
    out["falling_object"] = fo
    out["entrapment_latency_max_s"] = out["per_fault"]["entrapment"]["latency_max_s"]
    out["overflow"] = _overflow_lead(det, labels, replay_end_ms)
    return out


def _score_fault(
    det: Detections,
    *,
    labels: Sequence[LabelLike],
    by_dev: Mapping[int, list[LabelLike]],
    fault: str,
    kinds: frozenset[DetectionKind],
    replay_end_ms: int,
) -> dict[str, Any]:
    targets = [
        lb
        for lb in labels
        if lb.kind == fault and int(lb.extra.get("observable_ms", lb.start_ms)) <= replay_end_ms
    ]
    codes = np.array([k.code for k in kinds], dtype=np.uint8)
    sel = np.flatnonzero(np.isin(det.kind, codes))
    dev, ts = det.device[sel], det.ts_ms[sel]
    order = np.lexsort((ts, dev))
    dev, ts = dev[order], ts[order]
    latencies: list[float] = []
    found = 0
    for lb in targets:
        lo, hi = _window(lb, fault)
        a, b = np.searchsorted(dev, lb.device, "left"), np.searchsorted(dev, lb.device, "right")
        t = ts[a:b]
        i = np.searchsorted(t, lo, "left")
        if i < t.size and t[i] <= hi:
            found += 1
            latencies.append(max(0.0, (int(t[i]) - lb.start_ms) / MS_PER_S))
    tp = fp = explained = 0
    false_eps: list[_Episode] = []
    for ep in _episodes(det, kinds):
        match = other = False
        for lb in by_dev.get(ep.device, ()):
            lo, hi = _window(lb, lb.kind)
            if ep.first_ms <= hi and ep.last_ms >= lo:
                if lb.kind == fault:
                    match = True
                elif lb.kind in EXPLAINED_BY.get(ep.kind, frozenset()):
                    other = True
        if match:
            tp += 1
        elif other:
            explained += 1
        else:
            fp += 1
            false_eps.append(ep)
    lat = np.array(latencies, dtype=np.float64)
    return {
        "labels": len(targets),
        "found": found,
        "recall": found / len(targets) if targets else float("nan"),
        "episodes": tp + fp,
        "true_episodes": tp,
        "false_episodes": fp,
        "explained_episodes": explained,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "latency_p50_s": _stat(np.median, lat),
        "latency_p95_s": _stat(lambda a: np.percentile(a, 95), lat),
        "latency_max_s": _stat(np.max, lat),
        "false_examples": [
            {"device": e.device, "kind": e.kind.value, "first_ms": e.first_ms, "last_ms": e.last_ms}
            for e in false_eps[:5]
        ],
    }


def _falling(det: Detections, labels: Sequence[LabelLike], replay_end_ms: int) -> dict[str, Any]:
    sel = np.flatnonzero(det.kind == D.FALLING_OBJECT.code)
    tid = det.evidence.get("track_id", np.full(len(det), np.nan))[sel]
    floor = det.evidence.get("origin_floor", np.full(len(det), np.nan))[sel]
    found: dict[tuple[int, int], tuple[int, float]] = {}
    for d, t, f, ts in zip(
        det.device[sel].tolist(),
        tid.tolist(),
        floor.tolist(),
        det.ts_ms[sel].tolist(),
        strict=True,
    ):
        found.setdefault((d, int(t)), (ts, f))
    visible = [
        lb for lb in labels if int(lb.extra.get("observable_ms", lb.start_ms)) <= replay_end_ms
    ]
    objects = [lb for lb in visible if lb.kind == "falling_object"]
    distractors = [lb for lb in visible if lb.kind in DISTRACTOR_KINDS]
    hits = floors_ok = 0
    lat: list[float] = []
    for lb in objects:
        key = (lb.device, int(lb.extra.get("track_id", -1)))
        if key in found:
            hits += 1
            ts, f = found.pop(key)
            last = int(lb.extra.get("last_point_ms", lb.end_ms))
            lat.append(max(0.0, (ts - last) / MS_PER_S))
            if abs(f - int(lb.extra["origin_floor"])) <= 1:
                floors_ok += 1
    fp_by_kind: dict[str, int] = defaultdict(int)
    for lb in distractors:
        key = (lb.device, int(lb.extra.get("track_id", -1)))
        if key in found:
            fp_by_kind[lb.kind] += 1
            found.pop(key)
    fp = sum(fp_by_kind.values())
    unlabelled = len(found)
    latency = np.array(lat, dtype=np.float64)
    tp = hits
    return {
        "per_fault": {
            "labels": len(objects),
            "found": hits,
            "recall": hits / len(objects) if objects else float("nan"),
            "episodes": tp + fp + unlabelled,
            "true_episodes": tp,
            "false_episodes": fp + unlabelled,
            "precision": tp / (tp + fp + unlabelled) if tp + fp + unlabelled else float("nan"),
            "latency_p50_s": _stat(np.median, latency),
            "latency_max_s": _stat(np.max, latency),
        },
        "recall": hits / len(objects) if objects else float("nan"),
        "distractor_tracks": len(distractors),
        "distractor_fp": fp,
        "distractor_fp_by_kind": dict(fp_by_kind),
        "distractor_fp_rate": fp / len(distractors) if distractors else float("nan"),
        "floor_within_1_share": floors_ok / hits if hits else float("nan"),
        "latency_after_last_point_max_s": _stat(np.max, latency),
    }


def _overflow_lead(
    det: Detections, labels: Sequence[LabelLike], replay_end_ms: int
) -> dict[str, Any]:
    """Share of overflows (labelled overflow time within the replay) warned >= 10 min ahead."""
    sel = np.flatnonzero(det.kind == D.OVERFLOW_FORECAST.code)
    first: dict[int, list[int]] = defaultdict(list)
    for d, ts in zip(det.device[sel].tolist(), det.ts_ms[sel].tolist(), strict=True):
        first[d].append(ts)
    leads: list[float] = []
    for lb in labels:
        if lb.kind != "overflow" or int(lb.extra["overflow_ms"]) > replay_end_ms:
            continue
        o = int(lb.extra["overflow_ms"])
        ts = [t for t in first.get(lb.device, []) if lb.start_ms - 5_000 <= t <= o]
        leads.append((o - min(ts)) / MS_PER_S if ts else -np.inf)
    arr = np.array(leads, dtype=np.float64)
    return {
        "events": int(arr.size),
        "lead_ge_600s_share": float((arr >= 600).mean()) if arr.size else float("nan"),
        "lead_p50_s": float(np.median(arr)) if arr.size else float("nan"),
        "lead_min_s": float(arr.min()) if arr.size else float("nan"),
    }


def checks(result: Mapping[str, Any]) -> dict[str, bool]:
    """Each acceptance threshold against an ``evaluate`` result (NaN never passes)."""
    a = ACCEPTANCE
    out: dict[str, bool] = {}
    for fault, r in result["per_fault"].items():
        out[f"{fault}.precision"] = bool(r["precision"] >= a["precision_min"])
        out[f"{fault}.recall"] = bool(r["recall"] >= a["recall_min"])
    out["entrapment_latency"] = bool(
        result["entrapment_latency_max_s"] <= a["entrapment_latency_max_s"]
    )
    out["overflow_lead"] = bool(
        result["overflow"]["lead_ge_600s_share"] >= a["overflow_lead_share_min"]
    )
    fo = result["falling_object"]
    out["falling_recall"] = bool(fo["recall"] >= a["falling_recall_min"])
    out["distractor_fp_rate"] = bool(fo["distractor_fp_rate"] <= a["distractor_fp_rate_max"])
    out["origin_floor"] = bool(fo["floor_within_1_share"] >= a["floor_within_1_share_min"])
    return out


def replay(
    detectors: Any,
    advance: Callable[[int], Sequence[ReadingBatch]],
    start_ms: int,
    end_ms: int,
    step_ms: int = 1000,
) -> tuple[Detections, int]:
    """Feed ``advance(until_ms)`` batches (a simulator's) through ``detectors`` (a
    ``DetectorSet``) step by step, ticking after each step; all detections, readings."""
    parts: list[Detections] = []
    readings = 0
    t = start_ms
    while t < end_ms:
        t = min(t + step_ms, end_ms)
        for b in advance(t):
            readings += len(b)
            parts.append(detectors.update(b))
        parts.append(detectors.tick(t))
    return Detections.concat(parts), readings


def as_label_arrays(labels: Sequence[LabelLike]) -> dict[str, npt.NDArray[Any]]:
    """Columns of labels (for plots and quick filters)."""
    return {
        "device": np.array([lb.device for lb in labels], dtype=np.int64),
        "kind": np.array([lb.kind for lb in labels]),
        "start_ms": np.array([lb.start_ms for lb in labels], dtype=np.int64),
        "end_ms": np.array([lb.end_ms for lb in labels], dtype=np.int64),
    }
