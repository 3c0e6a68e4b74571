from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from gridwatch.pipeline.metrics import PipelineMetrics, histogram_quantile, quantile_of_buckets


def test_quantile_interpolates_inside_the_bucket() -> None:
    # 10 observations in (0, 1], 10 in (1, 2]: the median is the top of the first bucket
    buckets = [(1.0, 10.0), (2.0, 20.0), (float("inf"), 20.0)]
    assert quantile_of_buckets(buckets, 0.5) == pytest.approx(1.0)
    assert quantile_of_buckets(buckets, 0.75) == pytest.approx(1.5)
    assert quantile_of_buckets(buckets, 0.25) == pytest.approx(0.5)


def test_quantile_of_nothing_is_none_and_overflow_reports_the_last_bound() -> None:
    assert quantile_of_buckets([], 0.5) is None
    assert quantile_of_buckets([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert quantile_of_buckets([(1.0, 0.0), (float("inf"), 4.0)], 0.99) == 1.0


def test_histogram_quantile_selects_by_label() -> None:
    reg = CollectorRegistry()
    h = Histogram("x_seconds", "x", ["grade"], buckets=(0.5, 1.0, 2.0), registry=reg)
    for _ in range(99):
        h.labels("red").observe(0.3)
    h.labels("red").observe(1.8)
    h.labels("yellow").observe(30.0)
    assert histogram_quantile(h, 0.5, grade="red") == pytest.approx(0.5 * 50 / 99, rel=1e-6)
    assert 1.0 < histogram_quantile(h, 0.999, grade="red") <= 2.0
    assert histogram_quantile(h, 0.5, grade="green") is None


def test_pipeline_metrics_live_on_their_own_registry() -> None:
    a, b = PipelineMetrics(), PipelineMetrics()  # no clash: nothing on the global registry
    a.alerts.labels("red", "opened").inc()
    assert (
        a.registry.get_sample_value(
            "gridwatch_pipeline_alerts_total", {"grade": "red", "event": "opened"}
        )
        == 1.0
    )
    assert (
        b.registry.get_sample_value(
            "gridwatch_pipeline_alerts_total", {"grade": "red", "event": "opened"}
        )
        == 0.0
    )
    assert a.registry.get_sample_value("gridwatch_ingest_flushes_total") == 0.0
