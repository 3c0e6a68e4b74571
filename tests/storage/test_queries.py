from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from gridwatch.deadletter import DeadLetter
from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from gridwatch.registry import Registry
from storage.engine import Storage
from storage.queries import grid_counts, last_readings, series
from storage.testing import synthetic_batch
from storage.writer import ReadingWriter

T0 = time.time_ns() // 1_000_000 // 3_600_000 * 3_600_000 - 2 * 3_600_000


@pytest.fixture
def filled(storage: Storage, small_registry: Registry, tmp_path: Path) -> Storage:
    keys = storage.save_registry(small_registry)
    with ReadingWriter(storage, keys, spill_dir=tmp_path / "spill", rollup_interval_s=0.0) as w:
        for kind, rounds in ((DeviceKind.SEWAGE, 4), (DeviceKind.ELEVATOR, 3)):
            w.submit(synthetic_batch(small_registry, kind, start_ms=T0, rounds=rounds, seed=3))
        assert w.flush(timeout=60)
    return storage


def test_last_reading_per_device(filled: Storage, small_registry: Registry) -> None:
    batch = synthetic_batch(small_registry, DeviceKind.SEWAGE, start_ms=T0, rounds=4, seed=3)
    res = last_readings(filled, DeviceKind.SEWAGE, since_ms=T0 - 1)
    devs = small_registry.devices_of_kind(DeviceKind.SEWAGE)
    assert len(res) == devs.size
    for i in (0, 17, devs.size - 1):
        dev = int(devs[i])
        mine = np.flatnonzero(batch.device == dev)
        newest = mine[np.argmax(batch.ts_ms[mine])]
        row = int(np.flatnonzero(res.device_id == small_registry.device_ids[dev])[0])
        assert res.ts_ms[row] == batch.ts_ms[newest]
        assert res.columns["level_m"][row] == batch.fields["level_m"][newest]
    some = [str(small_registry.device_ids[d]) for d in devs[:3]]
    only = last_readings(filled, DeviceKind.SEWAGE, device_ids=some)
    assert sorted(only.device_id.tolist()) == sorted(some)
    assert len(last_readings(filled, DeviceKind.SEWAGE, since_ms=T0 + 86_400_000)) == 0
    assert len(last_readings(filled, DeviceKind.SEWAGE, device_ids=[])) == 0


def test_series_raw_and_rollup(filled: Storage, small_registry: Registry) -> None:
    dev = str(small_registry.device_ids[small_registry.devices_of_kind(DeviceKind.ELEVATOR)[5]])
    raw = series(filled, dev, T0, T0 + 3_600_000)
    assert raw.resolution == "raw" and len(raw) == 3
    assert np.all(np.diff(raw.ts_ms) > 0)
    assert set(raw.columns) == {
        "position_m",
        "speed_mps",
        "vibration_mps2",
        "door_open",
        "occupancy",
        "load_kg",
    }
    roll = series(filled, dev, T0 - 86_400_000, T0 + 86_400_000)
    assert roll.resolution == "1m"
    assert int(roll.columns["n"].sum()) == 3
    assert "speed_mps_avg" in roll.columns
    assert series(filled, dev, T0, T0 + 60_000, limit=1).ts_ms.size <= 1
    with pytest.raises(StorageError, match="unknown device 'nope'"):
        series(filled, "nope", T0, T0 + 1)
    with pytest.raises(ValueError, match="must be after since_ms"):
        series(filled, dev, T0, T0)


def test_grid_counts(filled: Storage, small_registry: Registry) -> None:
    counts = {c.grid: c for c in grid_counts(filled, since_ms=T0 - 1)}
    assert set(counts) == set(small_registry.grid_ids.tolist())
    g = small_registry.grid_ids[0]
    in_grid = small_registry.device_grid == 0
    sewage = int(np.count_nonzero(in_grid & (small_registry.kind == DeviceKind.SEWAGE.code)))
    elevator = int(np.count_nonzero(in_grid & (small_registry.kind == DeviceKind.ELEVATOR.code)))
    c = counts[str(g)]
    assert c.devices == int(in_grid.sum())
    assert c.devices_by_kind.get("sewage", 0) == sewage
    assert c.readings == 4 * sewage + 3 * elevator
    assert c.reporting_devices == sewage + elevator
    later = {x.grid: x for x in grid_counts(filled, since_ms=T0 + 86_400_000)}
    assert later[str(g)].readings == 0 and later[str(g)].devices == c.devices


def test_dead_letters_by_reason(storage: Storage) -> None:
    letters = [
        DeadLetter.of("gw/t/a", "bad_json", b"{nope", 1_000),
        DeadLetter.of("gw/t/b", "out_of_range", b'{"level_m": 99}', 2_000, rows=40, detail="x"),
        DeadLetter.of("gw/t/c", "out_of_range", b"\xff\xfe", 3_000),
    ]
    assert storage.write_dead_letters(letters) == 3
    assert storage.write_dead_letters([]) == 0
    got = storage.dead_letters(reason="out_of_range")
    assert [d.topic for d in got] == ["gw/t/c", "gw/t/b"]
    assert got[1] == letters[1]
    assert got[0].excerpt == b"\xff\xfe"
    assert [d.reason for d in storage.dead_letters(since_ms=2_000)] == ["out_of_range"] * 2
    assert storage.dead_letter_counts() == {"out_of_range": (2, 41), "bad_json": (1, 1)}
    assert storage.dead_letter_counts(since_ms=3_000) == {"out_of_range": (1, 1)}
    with pytest.raises(ValueError, match="limit must be >= 1"):
        storage.dead_letters(limit=0)
