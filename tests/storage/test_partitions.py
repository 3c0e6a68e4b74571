from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gridwatch.batch import ReadingBatch
from gridwatch.clock import ManualClock
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from storage import partitions
from storage.engine import Storage
from storage.partitions import PartitionPolicy, day_of, partition_name
from storage.queries import reading_count
from storage.schema import MS_PER_DAY
from storage.testing import synthetic_batch
from storage.writer import ReadingWriter

pytestmark = pytest.mark.postgres
DAY0 = 1_780_000_000_000 // MS_PER_DAY * MS_PER_DAY  # midnight UTC


def _spread(reg: Registry, days: list[int], seed: int = 0) -> ReadingBatch:
    """One round of sewage readings per listed day offset (relative to DAY0)."""
    parts = [
        synthetic_batch(
            reg, DeviceKind.SEWAGE, start_ms=DAY0 + d * MS_PER_DAY + 3_600_000, seed=seed + i
        )
        for i, d in enumerate(days)
    ]
    return ReadingBatch.concat(parts)


def _count(storage: Storage, table: str) -> int:
    with storage.connection(readonly=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _days(storage: Storage) -> set[int]:
    with storage.connection(readonly=True) as conn:
        return partitions.existing_days(conn, DeviceKind.SEWAGE)


def test_writes_spanning_days_create_their_partitions(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = pg_storage.save_registry(small_registry)
    clock = ManualClock(DAY0 + 12 * 3_600_000)
    batch = _spread(small_registry, [-2, -1, 0, 1])
    policy = PartitionPolicy(ahead_days=2, retention_days=7)
    with ReadingWriter(
        pg_storage, keys, spill_dir=tmp_path / "s", clock=clock, policy=policy, commit_rows=10_000
    ) as w:
        w.submit(batch)
        assert w.flush(timeout=60)
    d0 = day_of(DAY0)
    assert {d0 - 2, d0 - 1, d0, d0 + 1} <= _days(pg_storage)
    per_day = len(batch) // 4
    for off in (-2, -1, 0, 1):
        assert _count(pg_storage, partition_name(DeviceKind.SEWAGE, d0 + off)) == per_day
    assert _count(pg_storage, "readings_sewage_default") == 0
    assert reading_count(pg_storage, DeviceKind.SEWAGE) == len(batch)


def test_retention_drops_old_partitions_and_maintain_creates_ahead(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = pg_storage.save_registry(small_registry)
    clock = ManualClock(DAY0 + 3_600_000)
    policy = PartitionPolicy(ahead_days=1, retention_days=3)
    batch = _spread(small_registry, [-2, -1, 0])
    with ReadingWriter(pg_storage, keys, spill_dir=tmp_path / "s", clock=clock, policy=policy) as w:
        w.submit(batch)
        assert w.flush(timeout=60)
    d0 = day_of(DAY0)
    assert d0 + 1 in _days(pg_storage)  # the writer's start-up maintenance made it ahead
    clock.advance(2 * 86_400)  # two days later: day -2 and -1 fall out of a 3-day window
    with pg_storage.connection() as conn:
        report = partitions.maintain(conn, clock.now_ms(), policy)
    assert sorted(report["dropped"]) == [
        partition_name(DeviceKind.SEWAGE, d0 - 2),
        partition_name(DeviceKind.SEWAGE, d0 - 1),
    ]
    assert partition_name(DeviceKind.SEWAGE, d0 + 3) in report["created"]
    assert _days(pg_storage) == {d0, d0 + 1, d0 + 2, d0 + 3}
    assert reading_count(pg_storage, DeviceKind.SEWAGE) == len(batch) // 3
    with pg_storage.connection() as conn:  # a second run changes nothing
        assert partitions.maintain(conn, clock.now_ms(), policy) == {"created": [], "dropped": []}


def test_reading_for_a_day_without_partition_is_never_lost(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = pg_storage.save_registry(small_registry)
    clock = ManualClock(DAY0 + 3_600_000)
    policy = PartitionPolicy(ahead_days=1, retention_days=30)
    far = 400  # a device clock a year ahead: outside the window, no partition is made
    batch = _spread(small_registry, [0, far])
    with ReadingWriter(pg_storage, keys, spill_dir=tmp_path / "s", clock=clock, policy=policy) as w:
        w.submit(batch)
        assert w.flush(timeout=60)
    d0 = day_of(DAY0)
    assert d0 + far not in _days(pg_storage)
    half = len(batch) // 2
    assert _count(pg_storage, "readings_sewage_default") == half
    assert reading_count(pg_storage, DeviceKind.SEWAGE) == len(batch)
    # The day's partition appears later: its rows move out of the default, none lost or doubled.
    with pg_storage.connection() as conn:
        assert partitions.ensure_days(conn, DeviceKind.SEWAGE, [d0 + far]) == [
            partition_name(DeviceKind.SEWAGE, d0 + far)
        ]
    assert _count(pg_storage, "readings_sewage_default") == 0
    assert _count(pg_storage, partition_name(DeviceKind.SEWAGE, d0 + far)) == half
    assert reading_count(pg_storage, DeviceKind.SEWAGE) == len(batch)


def test_partition_dropped_behind_the_writers_back(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = pg_storage.save_registry(small_registry)
    clock = ManualClock(DAY0 + 3_600_000)
    d0 = day_of(DAY0)
    with ReadingWriter(pg_storage, keys, spill_dir=tmp_path / "s", clock=clock) as w:
        w.submit(_spread(small_registry, [0]))
        assert w.flush(timeout=60)
        with pg_storage.connection() as conn:  # another process applies retention
            conn.execute(f"DROP TABLE {partition_name(DeviceKind.SEWAGE, d0)}")
        late = _spread(small_registry, [0], seed=99)
        late = late.take(np.arange(len(late)))
        w.submit(ReadingBatch(late.kind, late.device, late.ts_ms + 1, dict(late.fields)))
        assert w.flush(timeout=60)
    assert _count(pg_storage, "readings_sewage_default") == len(late)


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="retention_days must be >= 1 or None, got 0"):
        PartitionPolicy(retention_days=0)
    with pytest.raises(ValueError, match="ahead_days must be >= 0, got -1"):
        PartitionPolicy(ahead_days=-1)
    assert PartitionPolicy(retention_days=None).window(DAY0)[0] < -100_000
