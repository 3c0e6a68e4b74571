from __future__ import annotations

import pytest

from gridwatch.pipeline.evaluate import AlertRow, compare, evaluate_alerts
from sim.faults import FaultLabel

S = 1000


def _label(dev: str, kind: str, start_s: float, end_s: float, **extra: object) -> FaultLabel:
    return FaultLabel(0, dev, kind, int(start_s * S), int(end_s * S), dict(extra))


def _alert(dev: str, kind: str, first_s: float, opened_s: float, end_s: float = 10_000) -> AlertRow:
    return AlertRow(dev, kind, "red", int(first_s * S), int(opened_s * S), int(end_s * S))


def test_recall_precision_and_time_to_alert() -> None:
    labels = [
        _label("hf1", "falling_object", 100, 103),
        _label("hf2", "falling_object", 200, 202),  # missed
        _label("hf3", "bird", 300, 302),  # a distractor
        _label("sw1", "cover_displaced", 50, 400),
    ]
    alerts = [
        _alert("hf1", "falling_object", 103, 103.5),
        _alert("hf3", "falling_object", 302, 302.2),  # the bird, called a falling object
        _alert("sw1", "cover_displaced", 60, 60.4),
    ]
    ev = evaluate_alerts(alerts, labels, replay_end_ms=1000 * S)
    fo = ev["falling_object"]
    assert (fo["labels"], fo["found"], fo["true_positives"], fo["false_positives"]) == (2, 1, 1, 1)
    assert fo["recall"] == 0.5 and fo["precision"] == 0.5
    assert fo["time_to_alert_p50_s"] == pytest.approx(3.5)
    cd = ev["cover_displaced"]
    assert cd["recall"] == 1.0 and cd["precision"] == 1.0
    assert cd["time_to_alert_s"] == [pytest.approx(10.4)]
    assert ev["entrapment"]["recall"] is None
    assert ev["_overall"]["labels"] == 3 and ev["_overall"]["found"] == 2


def test_an_alert_already_open_finds_a_second_fault_and_late_labels_do_not_count() -> None:
    labels = [
        _label("el1", "entrapment", 100, 400),
        _label("el1", "entrapment", 500, 900),  # same car again, alert still open
        _label("el2", "entrapment", 990, 1200, observable_ms=1100 * S),  # after the end
    ]
    alerts = [_alert("el1", "trapped_passenger", 130, 131)]
    ev = evaluate_alerts(alerts, labels, replay_end_ms=1000 * S)["entrapment"]
    assert (ev["labels"], ev["found"]) == (2, 2)


def test_symptoms_of_another_fault_are_not_false_positives() -> None:
    labels = [_label("sw9", "overflow", 0, 3000)]
    alerts = [_alert("sw9", "blockage_suspected", 100, 100)]
    ev = evaluate_alerts(alerts, labels, replay_end_ms=5000 * S)["blockage"]
    assert ev["false_positives"] == 0 and ev["explained_by_other_fault"] == 1


def test_compare_reports_old_new_and_delta() -> None:
    old = {"falling_object": {"recall": 0.5, "precision": 1.0, "time_to_alert_p50_s": 2.0}}
    new = {"falling_object": {"recall": 0.75, "precision": 0.9, "time_to_alert_p50_s": 1.0}}
    row = next(r for r in compare(old, new) if r["fault"] == "falling_object")
    assert row["recall"] == (0.5, 0.75, 0.25)
    assert row["time_to_alert_p50_s"][2] == -1.0
