"""The matching rules of the quality evaluation, on hand-built detections and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from detectors.evaluate import checks, evaluate
from gridwatch.batch import Detections
from gridwatch.domain import DetectionKind

K = DetectionKind
T = 1_780_000_000_000
END = T + 7_200_000


@dataclass
class Label:
    device: int
    kind: str
    start_ms: int
    end_ms: int
    extra: dict[str, Any] = field(default_factory=dict)


def dets(*rows: tuple[int, DetectionKind, int], **evidence: list[float]) -> Detections:
    parts = [Detections.of(kind, [dev], [ts], 1.0) for dev, kind, ts in rows]
    d = Detections.concat(parts)
    if evidence:
        d = Detections(
            d.device,
            d.kind,
            d.ts_ms,
            d.score,
            {k: np.asarray(v, float) for k, v in evidence.items()},
        )
    return d


def test_recall_latency_and_precision_by_episode() -> None:
    labels = [
        Label(1, "entrapment", T + 100_000, T + 700_000),
        Label(2, "entrapment", T + 200_000, T + 900_000),  # never detected
    ]
    d = dets(
        (1, K.ENTRAPMENT, T + 130_000),
        (1, K.ENTRAPMENT, T + 140_000),  # same episode
        (3, K.ENTRAPMENT, T + 500_000),  # no label on device 3: a false episode
    )
    r = evaluate(d, labels, END)["per_fault"]["entrapment"]
    assert (r["labels"], r["found"], r["recall"]) == (2, 1, 0.5)
    assert r["latency_p50_s"] == 30.0
    assert (r["true_episodes"], r["false_episodes"], r["precision"]) == (1, 1, 0.5)


def test_a_detection_outside_the_tolerance_window_does_not_match() -> None:
    labels = [Label(1, "overspeed", T + 100_000, T + 110_000)]
    late = dets((1, K.OVERSPEED, T + 110_000 + 11_000))  # after end + 10 s
    r = evaluate(late, labels, END)["per_fault"]["overspeed"]
    assert r["found"] == 0 and r["false_episodes"] == 1


def test_labels_not_yet_observable_are_not_counted() -> None:
    labels = [Label(1, "blockage", END - 60_000, END + 3_600_000, {"observable_ms": END + 600_000})]
    r = evaluate(Detections.empty(), labels, END)["per_fault"]["blockage"]
    assert r["labels"] == 0


def test_blockage_during_an_overflow_is_explained_not_false() -> None:
    labels = [Label(5, "overflow", T, T + 3_000_000, {"overflow_ms": T + 2_000_000})]
    d = dets((5, K.BLOCKAGE, T + 600_000), (5, K.OVERFLOW_FORECAST, T + 900_000))
    res = evaluate(d, labels, END)
    assert res["per_fault"]["blockage"]["false_episodes"] == 0
    assert res["per_fault"]["blockage"]["explained_episodes"] == 1
    assert res["overflow"]["lead_ge_600s_share"] == 1.0  # warned 1,100 s ahead


def test_overflow_lead_counts_misses_as_failures() -> None:
    labels = [
        Label(5, "overflow", T, T + 3_000_000, {"overflow_ms": T + 2_000_000}),
        Label(6, "overflow", T, T + 3_000_000, {"overflow_ms": T + 2_000_000}),
    ]
    d = dets((5, K.OVERFLOW_FORECAST, T + 1_700_000))  # 300 s ahead: too late
    o = evaluate(d, labels, END)["overflow"]
    assert o["events"] == 2 and o["lead_ge_600s_share"] == 0.0


def test_falling_objects_match_by_track_and_check_the_floor() -> None:
    labels = [
        Label(
            9,
            "falling_object",
            T,
            T + 3_000,
            {"track_id": 4, "origin_floor": 12, "last_point_ms": T + 2_500},
        ),
        Label(9, "bird", T + 5_000, T + 8_000, {"track_id": 5}),
        Label(9, "rain_streak", T + 9_000, T + 9_500, {"track_id": 6}),
    ]
    d = dets(
        (9, K.FALLING_OBJECT, T + 2_500),
        (9, K.FALLING_OBJECT, T + 7_900),
        track_id=[4, 5],
        origin_floor=[13, 20],
    )
    res = evaluate(d, labels, END)
    fo = res["falling_object"]
    assert fo["recall"] == 1.0
    assert fo["floor_within_1_share"] == 1.0
    assert fo["distractor_fp"] == 1 and fo["distractor_fp_rate"] == 0.5
    assert res["per_fault"]["falling_object"]["precision"] == 0.5
    assert fo["latency_after_last_point_max_s"] == 0.0


def test_checks_fail_on_nan_and_on_each_threshold() -> None:
    labels = [Label(1, "entrapment", T, T + 600_000)]
    res = evaluate(dets((1, K.ENTRAPMENT, T + 50_000)), labels, END)
    c = checks(res)
    assert c["entrapment.recall"] and c["entrapment.precision"]
    assert not c["entrapment_latency"]  # 50 s > 45 s
    assert not c["overspeed.recall"]  # NaN: no labels, never passes
    assert not c["distractor_fp_rate"]


@pytest.mark.parametrize("gap_s", [200, 400])
def test_episodes_split_on_gaps_longer_than_five_minutes(gap_s: int) -> None:
    labels = [Label(1, "offline", T, T + 100_000)]
    d = dets((1, K.OFFLINE, T + 50_000), (1, K.OFFLINE, T + 50_000 + gap_s * 1000))
    r = evaluate(d, labels, END)["per_fault"]["offline"]
    assert r["episodes"] == (1 if gap_s < 300 else 2)
