"""The storage stage: direct commits, the disk backlog under overload, and its replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gridwatch.domain import DeviceKind
from gridwatch.pipeline.metrics import PipelineMetrics
from gridwatch.pipeline.store import StorageStage
from gridwatch.registry import Registry
from storage import ReadingWriter
from storage.testing import split_batch, synthetic_batch, temp_storage

T0 = 1_780_000_000_000


def _count(storage, kind: DeviceKind) -> int:  # type: ignore[no-untyped-def]
    with storage.connection(readonly=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM readings_{kind.value}").fetchone()[0])


@pytest.fixture
def storage(tmp_path: Path):  # type: ignore[no-untyped-def]
    with temp_storage("sqlite", tmp_dir=tmp_path) as st:
        yield st


def _stage(storage, registry: Registry, tmp: Path, delay: int) -> StorageStage:  # type: ignore[no-untyped-def]
    keys = storage.save_registry(registry)
    writer = ReadingWriter(
        storage, keys, spill_dir=tmp / "spill", rollup_interval_s=None, commit_rows=1000,
        max_memory_rows=10_000,
    ).start()  # fmt: skip
    return StorageStage(
        writer, registry, tmp / "backlog", metrics=PipelineMetrics(), delay_after_rows=delay
    )


def test_direct_path_commits_before_sync_returns(
    storage, small_registry: Registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    st = _stage(storage, small_registry, tmp_path, delay=1_000_000).start()
    try:
        batch = synthetic_batch(small_registry, DeviceKind.SEWAGE, start_ms=T0, rounds=3)
        st.write(batch)
        st.sync()
        assert _count(storage, DeviceKind.SEWAGE) == len(batch)
        assert st.delayed_rows == 0 and st.backlog_bytes() == 0
    finally:
        st.stop()


def test_behind_the_database_goes_to_the_backlog_then_drains_exactly_once(
    storage, small_registry: Registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    st = _stage(storage, small_registry, tmp_path, delay=0)  # always "behind"
    batch = synthetic_batch(small_registry, DeviceKind.ELEVATOR, start_ms=T0, rounds=20)
    parts = split_batch(batch, 700)
    for p in parts:
        st.write(p)
        st.sync()  # returns at once: fsynced in the backlog, not committed
    assert st.delayed_rows == len(batch)
    assert st.backlog_bytes() > 0
    assert _count(storage, DeviceKind.ELEVATOR) == 0
    assert st.metrics.registry.get_sample_value(
        "gridwatch_pipeline_storage_delayed_readings_total"
    ) == len(batch)
    st.start()
    try:
        assert st.wait_drained(30)
        assert _count(storage, DeviceKind.ELEVATOR) == len(batch)
        assert st.drained_rows == len(batch)
    finally:
        st.stop()
    with storage.connection(readonly=True) as conn:
        dup = conn.execute(
            "SELECT count(*) FROM (SELECT device, ts_ms FROM readings_elevator "
            "GROUP BY device, ts_ms HAVING count(*) > 1)"
        ).fetchone()[0]
    assert dup == 0


def test_a_backlog_left_by_a_stop_is_replayed_by_the_next_start(
    storage, small_registry: Registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    first = _stage(storage, small_registry, tmp_path, delay=0)  # never started: no drain
    batch = synthetic_batch(small_registry, DeviceKind.HIGHFALL, start_ms=T0, rounds=5)
    first.write(batch)
    first.stop()
    assert first.backlog_bytes() > 0
    second = _stage(storage, small_registry, tmp_path, delay=1_000_000).start()
    try:
        assert second.wait_drained(30)
    finally:
        second.stop()
    assert _count(storage, DeviceKind.HIGHFALL) == len(batch)
    assert second.backlog_bytes() == 0
    # the int64 track ids and NaN optional fields survived the round trip through the log
    with storage.connection(readonly=True) as conn:
        ids = np.array([r[0] for r in conn.execute("SELECT track_id FROM readings_highfall")])
    assert np.array_equal(np.sort(ids), np.sort(batch.fields["track_id"]))
