from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridwatch.contract import MAX_TS_MS
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry
from ingest.dedup import NEVER, TS_BASE_MS, Dedup
from ingest.reasons import ALL_REASONS, ROW_REASONS, RowReason
from ingest.rows import RawRows
from ingest.validate import Limits, judge

NOW = 1_780_000_000_000
DAY = 86_400_000


def _reference(rows: list[tuple[int, int]], seed: dict[int, int]) -> list[int]:
    """Infinite memory: a key seen before is a duplicate, at or before the seed is late."""
    seen: set[tuple[int, int]] = set()
    out = []
    for d, t in rows:
        if (d, t) in seen:
            out.append(1)
        elif t <= seed.get(d, NEVER):
            out.append(2)
        else:
            seen.add((d, t))
            out.append(0)
    return out


@settings(max_examples=200, deadline=None)
@given(
    flushes=st.lists(
        st.lists(st.tuples(st.integers(0, 5), st.integers(0, 12)), max_size=25), max_size=4
    ),
    seed=st.dictionaries(st.integers(0, 5), st.integers(0, 6), max_size=6),
)
def test_dedup_is_exact_within_its_window(flushes: list[Any], seed: dict[int, int]) -> None:
    seeded = np.full(6, NEVER, dtype=np.int64)
    for d, t in seed.items():
        seeded[d] = TS_BASE_MS + t
    dedup = Dedup(6, last_ts_ms=seeded)
    ref_seed = {d: t for d, t in seed.items()}
    everything = [row for flush in flushes for row in flush]
    expected = _reference(everything, ref_seed)
    got: list[int] = []
    for k, flush in enumerate(flushes):
        dev = np.array([d for d, _ in flush], dtype=np.int32)
        ts = np.array([TS_BASE_MS + t for _, t in flush], dtype=np.int64)
        codes, _ = dedup.check(dev, ts, now_s=float(k))
        got += codes.tolist()
    assert got == expected
    for d in range(6):
        accepted = [
            t for (dd, t), c in zip(everything, expected, strict=True) if dd == d and c == 0
        ]
        assert dedup.last_ts[d] == max([TS_BASE_MS + t for t in accepted] + [int(seeded[d])])


def test_forgotten_keys_raise_the_floor_and_late_readings_inside_it_are_refused() -> None:
    dedup = Dedup(3, window_s=8.0)
    base = TS_BASE_MS
    assert dedup.check(np.array([1, 1]), np.array([base + 10, base + 20]), 0.0)[0].tolist() == [
        0,
        0,
    ]
    # within the window: an exact duplicate is refused, a late unique reading accepted
    codes, reorder = dedup.check(np.array([1, 1]), np.array([base + 10, base + 15]), 1.0)
    assert codes.tolist() == [1, 0] and reorder
    assert dedup.late_accepted == 1
    dedup.check(np.array([2]), np.array([base + 5]), 20.0)  # time passes: bucket 0 expires
    assert dedup.floor[1] == base + 20
    assert dedup.check(np.array([1, 1, 1]), np.array([base + 12, base + 20, base + 21]), 21.0)[
        0
    ].tolist() == [2, 2, 0]


def test_memory_bound_forgets_oldest_first() -> None:
    dedup = Dedup(1000, max_keys=100)
    for k in range(10):
        dev = np.arange(k * 50, k * 50 + 50, dtype=np.int32) % 1000
        dedup.check(dev, np.full(50, TS_BASE_MS + k), float(k))
    assert dedup.keys_held <= 100
    assert dedup.floor.max() > NEVER  # something was forgotten, and remembered as a floor


def test_times_before_2020_skip_the_exact_test_but_stay_unique() -> None:
    dedup = Dedup(2)
    assert dedup.check(np.array([0, 0]), np.array([5, 5]), 0.0)[0].tolist() == [0, 1]
    assert dedup.check(np.array([0, 0]), np.array([4, 6]), 1.0)[0].tolist() == [2, 0]
    with pytest.raises(ValueError, match="last_ts_ms has shape"):
        Dedup(2, last_ts_ms=np.zeros(3, dtype=np.int64))


def _rows(reg: Registry, kind: DeviceKind, devices: list[int], **over: Any) -> RawRows:
    n = len(devices)
    fields = {}
    for spec in FIELDS[kind]:
        mid = 0 if spec.lo <= 0 <= spec.hi else spec.lo
        fields[spec.name] = np.array(over.pop(spec.name, [mid] * n), dtype=np.float64)
    return RawRows(
        kind,
        np.arange(n, dtype=np.int64),
        np.array(devices, dtype=np.int32),
        np.array(over.pop("grid", reg.device_grid[np.maximum(devices, 0)]), dtype=np.int32),
        np.array(over.pop("ts", [NOW + i for i in range(n)]), dtype=np.int64),
        fields,
        np.array(over.pop("code", [0] * n), dtype=np.uint8),
        np.zeros(n, dtype=np.uint8),
    )


def _judge(reg: Registry, rows: RawRows, last: Any = None, **lim: Any) -> Any:
    limits = Limits(NOW, lim.get("future", 600_000), lim.get("age", 7 * DAY))
    dedup = Dedup(len(reg), last_ts_ms=last)
    return judge(rows, reg.kind, reg.device_grid, limits, dedup=dedup, now_s=0.0), dedup.last_ts


def test_every_row_check_marks_its_reason(small_registry: Registry) -> None:
    reg = small_registry
    sw = reg.devices_of_kind(DeviceKind.SEWAGE).tolist()
    el = int(reg.devices_of_kind(DeviceKind.ELEVATOR)[0])
    other_grid = int((reg.device_grid[sw[0]] + 1) % reg.grid_ids.size)
    cases = {
        RowReason.OK: {},
        RowReason.UNKNOWN_DEVICE: {"device": -1},
        RowReason.WRONG_KIND: {"device": el},
        RowReason.WRONG_GRID: {"grid": other_grid},
        RowReason.BAD_TS: {"ts": MAX_TS_MS},
        RowReason.NOT_FINITE: {"level_m": np.inf},
        RowReason.OUT_OF_RANGE: {"tilt_deg": 181.0},
        RowReason.TS_FUTURE: {"ts": NOW + 600_001},
        RowReason.TS_TOO_OLD: {"ts": NOW - 7 * DAY - 1},
        RowReason.MISSING_FIELD: {"code": RowReason.MISSING_FIELD},
    }
    devices, grids, ts, level, tilt, code = [], [], [], [], [], []
    for i, (_reason, case) in enumerate(cases.items()):
        d = case.get("device", sw[i])
        devices.append(d)
        grids.append(case.get("grid", int(reg.device_grid[max(d, 0)])))
        ts.append(case.get("ts", NOW))
        level.append(case.get("level_m", 1.0))
        tilt.append(case.get("tilt_deg", 1.0))
        code.append(case.get("code", 0))
    rows = _rows(
        reg, DeviceKind.SEWAGE, devices, grid=grids, ts=ts, level_m=level, tilt_deg=tilt, code=code
    )
    batch, last = _judge(reg, rows)
    assert rows.code.tolist() == [int(r) for r in cases]
    assert batch.device.tolist() == [sw[0]]
    assert int(last[sw[0]]) == NOW
    assert (last[sw[1:]] == NEVER).all()  # nothing refused moves the duplicate horizon


def test_nan_is_absent_for_optional_fields_but_not_finite_for_required(
    small_registry: Registry,
) -> None:
    reg = small_registry
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)[:2].tolist()
    rows = _rows(
        reg, DeviceKind.SEWAGE, sw, level_m=[1.0, np.nan], tilt_deg=[1, 1], rain_mmph=[np.nan, 1]
    )
    batch, _ = _judge(reg, rows)
    assert rows.code.tolist() == [0, RowReason.NOT_FINITE]
    assert rows.bad_field.tolist() == [0, 1]
    assert np.isnan(batch.fields["rain_mmph"][0])


def test_integer_fields_refuse_fractions_and_come_out_int64(small_registry: Registry) -> None:
    reg = small_registry
    hf = reg.devices_of_kind(DeviceKind.HIGHFALL)[:3].tolist()
    rows = _rows(reg, DeviceKind.HIGHFALL, hf, track_id=[7, 7.5, 2.0**32])
    batch, _ = _judge(reg, rows)
    assert rows.code.tolist() == [0, RowReason.NOT_INTEGER, RowReason.OUT_OF_RANGE]
    assert batch.fields["track_id"].dtype == np.int64
    assert batch.fields["track_id"].tolist() == [7]
    for spec in FIELDS[DeviceKind.HIGHFALL][1:]:
        assert batch.fields[spec.name].dtype == np.float32


def test_first_failing_field_wins_and_is_recorded(small_registry: Registry) -> None:
    reg = small_registry
    el = reg.devices_of_kind(DeviceKind.ELEVATOR)[:1].tolist()
    rows = _rows(reg, DeviceKind.ELEVATOR, el, speed_mps=[99.0], occupancy=[np.inf])
    _judge(reg, rows)
    assert rows.code.tolist() == [RowReason.OUT_OF_RANGE]
    assert FIELDS[DeviceKind.ELEVATOR][rows.bad_field[0] - 1].name == "speed_mps"


@pytest.mark.parametrize(("future", "age"), [(None, None), (0, 1)])
def test_clock_limits_are_optional(small_registry: Registry, future: Any, age: Any) -> None:
    reg = small_registry
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)[:2].tolist()
    rows = _rows(reg, DeviceKind.SEWAGE, sw, ts=[NOW + DAY, NOW - 30 * DAY])
    batch, _ = _judge(reg, rows, future=future, age=age)
    if future is None:
        assert len(batch) == 2
    else:
        assert rows.code.tolist() == [RowReason.TS_FUTURE, RowReason.TS_TOO_OLD]


def test_duplicates_late_and_seeded_horizon(small_registry: Registry) -> None:
    reg = small_registry
    d = int(reg.devices_of_kind(DeviceKind.SEWAGE)[0])
    last = np.full(len(reg), NEVER, dtype=np.int64)
    last[d] = NOW
    ts = [NOW, NOW + 3, NOW + 3, NOW + 1, NOW - 1]
    rows = _rows(reg, DeviceKind.SEWAGE, [d] * 5, ts=ts, level_m=[0, 3, 3, 1, 0])
    batch, last = _judge(reg, rows, last=last)
    assert rows.code.tolist() == [RowReason.LATE, 0, RowReason.DUPLICATE, 0, RowReason.LATE]
    assert batch.ts_ms.tolist() == [NOW + 1, NOW + 3]  # the late reading: back in time order
    assert batch.fields["level_m"].tolist() == [1, 3]
    assert int(last[d]) == NOW + 3


def test_reason_tables_are_consistent() -> None:
    assert ROW_REASONS[0] == "ok"
    assert len(set(ALL_REASONS)) == len(ALL_REASONS)
    assert "ok" not in ALL_REASONS
    assert max(RowReason) < 32  # the collector packs codes into 5 bits
    assert ROW_REASONS[RowReason.LATE] == "late"
