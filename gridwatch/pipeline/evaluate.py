"""Alerts against the simulator's labels: what a dispatcher would have been told.

``detectors.evaluate`` scores detections; this scores the alerts the rules made of them,
after for-durations, dedup and inhibition, because that is what a rule change moves.

* A fault kind is announced by the alert kinds in ``FAULT_ALERTS``.
* **Recall** per fault kind: a label whose ``observable_ms`` falls inside the replay is
  found when a device alert of one of its kinds, on the same device, was open at some
  time in ``[start - before, end + after]`` (``detectors.evaluate.TOLERANCE_S``).
  An alert stays open across repeats, so a second fault while the first alert is open is
  found by that alert (the dispatcher already has it).
* **Time to alert**: the matching alert's ``opened_ms`` minus the label's ``start_ms``
  (device time: the replay's clock is the simulation's), never negative.
* **Precision** per fault kind: of the device alerts of its alert kinds, those matching a
  label of the fault are true positives; those overlapping another *fault's* label on the
  device are symptoms of it and not counted; any other (including distractors: a bird
  called a falling object) is a false positive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from detectors.evaluate import TOLERANCE_S
from gridwatch.domain import AlertKind

A = AlertKind
FAULT_ALERTS: Final[Mapping[str, frozenset[AlertKind]]] = {
    "entrapment": frozenset({A.TRAPPED_PASSENGER}),
    "door_fault": frozenset({A.DOOR_FAULT}),
    "overspeed": frozenset({A.OVERSPEED}),
    "vibration_wear": frozenset({A.VIBRATION_RISING}),
    "overflow": frozenset({A.OVERFLOW_IMMINENT, A.LEVEL_HIGH}),
    "blockage": frozenset({A.BLOCKAGE_SUSPECTED}),
    "cover_displaced": frozenset({A.COVER_DISPLACED}),
    "stuck_sensor": frozenset({A.SENSOR_STUCK}),
    "offline": frozenset({A.DEVICE_OFFLINE}),
    "falling_object": frozenset({A.FALLING_OBJECT}),
}
"""Which alert kinds announce which labelled fault kind (a fault may have several)."""

MS = 1000


@dataclass(frozen=True, slots=True)
class AlertRow:
    """The columns of a stored device alert that the evaluation needs."""

    device_id: str
    kind: str
    grade: str
    first_seen_ms: int
    opened_ms: int
    end_ms: int  # resolved, or last seen, or the end of the replay


def _window(label: Any, fault: str) -> tuple[int, int]:
    before, after = TOLERANCE_S.get(fault, (5.0, 60.0))
    return label.start_ms - round(before * MS), label.end_ms + round(after * MS)


def _overlaps(a: AlertRow, lo: int, hi: int) -> bool:
    return a.first_seen_ms <= hi and a.end_ms >= lo


def evaluate_alerts(
    alerts: Sequence[AlertRow], labels: Iterable[Any], replay_end_ms: int
) -> dict[str, Any]:
    """Per fault kind: labels, found, recall, alerts, TP, FP, precision, time to alert."""
    labels = list(labels)
    by_dev: dict[str, list[AlertRow]] = defaultdict(list)
    for a in alerts:
        by_dev[a.device_id].append(a)
    faults_by_dev: dict[str, list[Any]] = defaultdict(list)
    for lb in labels:
        if lb.is_fault:
            faults_by_dev[lb.device_id].append(lb)

    out: dict[str, Any] = {}
    for fault, kinds in FAULT_ALERTS.items():
        names = {k.value for k in kinds}
        relevant = [
            lb
            for lb in labels
            if lb.kind == fault and lb.extra.get("observable_ms", lb.start_ms) <= replay_end_ms
        ]
        found = 0
        delays: list[float] = []
        grades: dict[str, int] = defaultdict(int)
        for lb in relevant:
            lo, hi = _window(lb, fault)
            hits = [
                a for a in by_dev.get(lb.device_id, []) if a.kind in names and _overlaps(a, lo, hi)
            ]
            if hits:
                found += 1
                first = min(hits, key=lambda a: a.opened_ms)
                delays.append(max(0, first.opened_ms - lb.start_ms) / MS)
                grades[first.grade] += 1
        tp = fp = explained = 0
        kind_alerts = [a for a in alerts if a.kind in names]
        for a in kind_alerts:
            mine = False
            other = False
            for lb in faults_by_dev.get(a.device_id, []):
                lo, hi = _window(lb, lb.kind)
                if not _overlaps(a, lo, hi):
                    continue
                if lb.kind == fault:
                    mine = True
                    break
                other = True
            if mine:
                tp += 1
            elif other:
                explained += 1
            else:
                fp += 1
        d = np.asarray(delays, dtype=float)
        out[fault] = {
            "labels": len(relevant),
            "found": found,
            "recall": found / len(relevant) if relevant else None,
            "alerts": len(kind_alerts),
            "true_positives": tp,
            "false_positives": fp,
            "explained_by_other_fault": explained,
            "precision": tp / (tp + fp) if tp + fp else None,
            "time_to_alert_p50_s": float(np.percentile(d, 50)) if d.size else None,
            "time_to_alert_p90_s": float(np.percentile(d, 90)) if d.size else None,
            "time_to_alert_max_s": float(d.max()) if d.size else None,
            "time_to_alert_s": [round(x, 3) for x in d.tolist()],
            "grades": dict(grades),
        }
    total_labels = sum(v["labels"] for v in out.values())
    total_found = sum(v["found"] for v in out.values())
    tp = sum(v["true_positives"] for v in out.values())
    fp = sum(v["false_positives"] for v in out.values())
    out["_overall"] = {
        "labels": total_labels,
        "found": total_found,
        "recall": total_found / total_labels if total_labels else None,
        "true_positives": tp,
        "false_positives": fp,
        "precision": tp / (tp + fp) if tp + fp else None,
    }
    return out


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per fault kind, recall/precision/time-to-alert of two reports side by side."""
    rows = []
    for fault in [*FAULT_ALERTS, "_overall"]:
        a, b = old.get(fault) or {}, new.get(fault) or {}
        row: dict[str, Any] = {"fault": fault}
        for key in ("recall", "precision", "time_to_alert_p50_s"):
            va, vb = a.get(key), b.get(key)
            row[key] = (va, vb, None if va is None or vb is None else vb - va)
        rows.append(row)
    return rows
