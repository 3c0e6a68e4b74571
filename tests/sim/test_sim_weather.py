"""Storms: reproducible whatever the order of questions, and shaped as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.weather import RainSpec, Weather


def test_storms_do_not_depend_on_how_far_ahead_one_looks() -> None:
    a = Weather(5, RainSpec(per_street_hour=1.0), seed=3, start_ms=0)
    b = Weather(5, RainSpec(per_street_hour=1.0), seed=3, start_ms=0)
    a.ensure(10 * 3_600_000)
    for h in range(1, 11):
        b.ensure(h * 3_600_000)
    assert a.storms() == b.storms() and len(a.storms()) > 20
    c = Weather(5, RainSpec(per_street_hour=1.0), seed=4, start_ms=0)
    c.ensure(10 * 3_600_000)
    assert c.storms() != a.storms()


def test_rain_profile_dry_check_and_runoff_lag() -> None:
    w = Weather(3, RainSpec(per_street_hour=0.5), seed=1, start_ms=0)
    w.ensure(20 * 3_600_000)
    storms = w.storms()
    alone = [  # a storm that no other storm on its street overlaps
        x
        for x in storms
        if not any(
            y is not x
            and y["street"] == x["street"]
            and y["start_ms"] < x["end_ms"] + 7_200_000
            and y["end_ms"] > x["start_ms"] - 7_200_000
            for y in storms
        )
    ]
    storm = alone[0]
    s, start, end = storm["street"], storm["start_ms"], storm["end_ms"]
    mid = (start + end) // 2
    assert w.rain(mid)[s] >= storm["peak_mmph"] * 0.99
    quarter = start + (end - start) // 4
    assert w.rain(quarter)[s] == pytest.approx(
        storm["peak_mmph"] * math.sin(math.pi / 4) ** 2, rel=0.01
    )
    assert w.rain_at(np.array([s], np.int32), np.array([mid], np.int64))[0] == pytest.approx(
        w.rain(mid)[s]
    )
    assert not w.dry(s, start - 1, end + 1)
    t, peak_runoff_t, best = start, start, 0.0
    while t < end + 3_600_000:
        w.step(t)
        if w.runoff[s] > best:
            best, peak_runoff_t = float(w.runoff[s]), t
        t += 10_000
    assert peak_runoff_t > mid, "drainage lags the rain"
    assert best < storm["peak_mmph"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_street_hour": -1}, "per_street_hour must be >= 0"),
        ({"duration_s": (10, 5)}, "duration_s must be 0 < lo <= hi"),
        ({"peak_mmph": (5, 900)}, "peak_mmph must be 0 <= lo <= hi <= 400"),
    ],
)
def test_bad_rain_spec(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RainSpec(**kwargs)  # type: ignore[arg-type]
