"""Fixtures for detector tests: a tiny hand-made registry with round numbers, and batch
builders that take plain lists, so each test states its readings in a few lines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from detectors.config import DetectorConfig, load_config
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry

T0 = 1_780_000_000_000
"""Device time of the first reading in hand-built scenarios (epoch ms)."""


def tiny_columns() -> dict[str, list[Any]]:
    """3 elevators (10 floors of 3.0 m, rated 1.0 / 1.75 / 2.5 m/s), 4 manholes (4.0 m
    deep, overflow at 3.95 m; two grids), 2 cameras (20 floors of 3.0 m)."""
    rows = [
        # id, kind, grid, building, floors, fh, rated, depth, overflow, interval
        ("el1", "elevator", "g1", "b1", 10, 3.0, 1.0, "", "", 10),
        ("el2", "elevator", "g1", "b1", 10, 3.0, 1.75, "", "", 10),
        ("el3", "elevator", "g2", "b2", 10, 3.0, 2.5, "", "", 10),
        ("sw1", "sewage", "g1", "", "", "", "", 4.0, 3.95, 10),
        ("sw2", "sewage", "g1", "", "", "", "", 4.0, 3.95, 10),
        ("sw3", "sewage", "g2", "", "", "", "", 4.0, 3.95, 10),
        ("sw4", "sewage", "g2", "", "", "", "", 4.0, 3.95, 10),
        ("hf1", "highfall", "g1", "b1", 20, 3.0, "", "", "", 30),
        ("hf2", "highfall", "g2", "b2", 20, 3.0, "", "", "", 30),
    ]
    cols: dict[str, list[Any]] = {
        c: []
        for c in (
            "device_id",
            "kind",
            "street",
            "community",
            "grid",
            "building",
            "floors",
            "floor_height_m",
            "rated_speed_mps",
            "depth_m",
            "overflow_level_m",
            "interval_s",
        )
    }
    for dev, kind, grid, bld, floors, fh, rated, depth, ovf, iv in rows:
        cols["device_id"].append(dev)
        cols["kind"].append(kind)
        cols["street"].append("s1")
        cols["community"].append("c1")
        cols["grid"].append(grid)
        cols["building"].append(bld)
        cols["floors"].append(floors)
        cols["floor_height_m"].append(fh)
        cols["rated_speed_mps"].append(rated)
        cols["depth_m"].append(depth)
        cols["overflow_level_m"].append(ovf)
        cols["interval_s"].append(iv)
    return cols


@pytest.fixture(scope="session")
def tiny() -> Registry:
    return Registry(tiny_columns())


@pytest.fixture(scope="session")
def cfg() -> DetectorConfig:
    return load_config()


def batch(
    registry: Registry,
    kind: DeviceKind,
    devices: Sequence[str],
    ts_ms: Sequence[int],
    **fields: Sequence[float],
) -> ReadingBatch:
    """A batch from plain lists; fields not given are NaN (absent)."""
    n = len(devices)
    cols = {}
    for spec in FIELDS[kind]:
        values = fields.get(spec.name)
        if values is None:
            default = 0 if spec.dtype == "int64" else np.nan
            cols[spec.name] = np.full(n, default, dtype=spec.dtype)
        else:
            cols[spec.name] = np.asarray(values, dtype=spec.dtype)
    unknown = set(fields) - {s.name for s in FIELDS[kind]}
    if unknown:
        raise KeyError(f"{kind.value} has no fields {sorted(unknown)}")
    return ReadingBatch(
        kind,
        registry.index_of(np.asarray(devices)),
        np.asarray(ts_ms, dtype=np.int64),
        cols,
    )


def elevator_reading(
    registry: Registry,
    device: str,
    ts_ms: int,
    *,
    position_m: float,
    speed_mps: float = 0.0,
    vibration_mps2: float = 0.1,
    door_open: float = 0.0,
    occupancy: float = 0.0,
    load_kg: float = float("nan"),
) -> ReadingBatch:
    return batch(
        registry,
        DeviceKind.ELEVATOR,
        [device],
        [ts_ms],
        position_m=[position_m],
        speed_mps=[speed_mps],
        vibration_mps2=[vibration_mps2],
        door_open=[door_open],
        occupancy=[occupancy],
        load_kg=[load_kg],
    )


def assert_identical_detections(a: Detections, b: Detections) -> None:
    """The same detections in the same order, bit for bit (a chunked run against a whole one)."""
    np.testing.assert_array_equal(a.device, b.device)
    np.testing.assert_array_equal(a.kind, b.kind)
    np.testing.assert_array_equal(a.ts_ms, b.ts_ms)
    np.testing.assert_array_equal(a.score, b.score)
    assert sorted(a.evidence) == sorted(b.evidence)
    for k in a.evidence:
        np.testing.assert_array_equal(a.evidence[k], b.evidence[k], err_msg=k)
