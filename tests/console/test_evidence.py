"""What a dispatcher reads first from an alert's evidence."""

from __future__ import annotations

import doctest
import math

import pytest

from alerts.console import evidence
from alerts.console.evidence import duration, floor_of, headline


def test_doctests() -> None:
    assert doctest.testmod(evidence).failed == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59.4, "59 s"),
        (60, "1 min"),
        (250, "4 min 10 s"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("ev", "lines", "floor"),
    [
        ({"stopped_s": 95.0, "floor_no": 7.0}, ["stopped for 1 min 35 s", "car at floor 7"], 7),
        ({"origin_floor": 15.4, "release_height_m": 44.0}, ["fell from about floor 15 (44 m)"], 15),
        ({"time_to_overflow_s": 1200.0}, ["overflow in 20 min"], None),
        ({"speed_mps": -2.6, "rated_speed_mps": 1.75}, ["speed 2.60 m/s (rated 1.75)"], None),
        ({"tilt_deg": 35.2}, ["cover tilted 35°"], None),
        ({"silent_s": 900.0}, ["silent for 15 min"], None),
        ({"devices": 12, "grids": ["a", "b", "c"]}, ["12 devices in 3 grids"], None),
        ({"time_to_overflow_s": math.nan, "floor_no": math.inf, "stopped_s": True}, [], None),
        ({"score": 0.9, "ts_ms": 1}, [], None),
    ],
)
def test_headline_and_floor(ev: dict[str, object], lines: list[str], floor: int | None) -> None:
    assert headline(ev) == lines
    assert floor_of(ev) == floor


def test_headline_keeps_the_four_most_urgent() -> None:
    ev = {
        "time_to_overflow_s": 60.0,
        "level_m": 3.9,
        "overflow_level_m": 4.0,
        "stopped_s": 10.0,
        "floor_no": 2.0,
        "tilt_deg": 10.0,
    }
    assert headline(ev) == [
        "overflow in 1 min",
        "level 3.90 m of 4.00 m",
        "stopped for 10 s",
        "car at floor 2",
    ]
