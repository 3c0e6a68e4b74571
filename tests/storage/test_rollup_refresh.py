"""Rollups of minutes written by any writer (partition) are refreshed, one refresher at a time.

Before ``rollup_dirty``, only partition 0's writer refreshed, and only the minutes it had
written itself: late readings written by another partition never reached the rollups.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from storage.engine import Storage
from storage.rollups import MS_PER_MINUTE, REFRESH_LOCK_KEY
from storage.sinks import make_sink
from storage.testing import split_batch, synthetic_batch
from storage.writer import ReadingWriter

NOW = time.time_ns() // 1_000_000 // MS_PER_MINUTE * MS_PER_MINUTE
KIND = DeviceKind.SEWAGE


def _halves(batch: ReadingBatch) -> tuple[ReadingBatch, ReadingBatch]:
    """Two disjoint device sets, as two partitions' grids would be."""
    even = batch.device % 2 == 0
    return batch.take(np.flatnonzero(even)), batch.take(np.flatnonzero(~even))


def _rollup_counts(storage: Storage, keys: np.ndarray, batch: ReadingBatch) -> dict[tuple, int]:
    """{(device key, minute ms): n} from the rollup table, for the batch's minutes."""
    lo = int(batch.ts_ms.min()) // MS_PER_MINUTE * MS_PER_MINUTE
    hi = int(batch.ts_ms.max()) + MS_PER_MINUTE
    with storage.connection(readonly=True) as conn:
        if storage.dialect == "postgres":
            rows = conn.execute(
                "SELECT device, (extract(epoch FROM minute) * 1000)::bigint, n "
                "FROM rollup_1m_sewage WHERE minute >= to_timestamp(%s / 1000.0) "
                "AND minute < to_timestamp(%s / 1000.0)",
                (lo, hi),
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT device, minute_ms, n FROM rollup_1m_sewage "
                "WHERE minute_ms >= ? AND minute_ms < ?",
                (lo, hi),
            ).fetchall()
    return {(int(d), int(m)): int(n) for d, m, n in rows}


def _expected(keys: np.ndarray, batch: ReadingBatch) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    minutes = batch.ts_ms // MS_PER_MINUTE * MS_PER_MINUTE
    for d, m in zip(keys[batch.device].tolist(), minutes.tolist(), strict=True):
        out[(d, m)] = out.get((d, m), 0) + 1
    return out


def _marks(storage: Storage) -> int:
    with storage.connection(readonly=True) as conn:
        return int(conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()[0])


def test_late_readings_of_another_partition_reach_the_rollups(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = storage.save_registry(small_registry)
    now = synthetic_batch(small_registry, KIND, start_ms=NOW - 5 * MS_PER_MINUTE, rounds=6)
    late = synthetic_batch(small_registry, KIND, start_ms=NOW - 3 * 3_600_000, rounds=12, seed=7)
    mine, _ = _halves(now)
    _, theirs_late = _halves(late)  # replayed after an outage, by the *other* partition
    # partition 1 never refreshes here; partition 0 writes only current minutes
    with ReadingWriter(
        storage, keys, spill_dir=tmp_path / "p1", rollup_interval_s=None, name="p1"
    ) as p1:
        for part in split_batch(theirs_late, 500):
            p1.submit(part)
        assert p1.flush(timeout=60)
    assert _marks(storage) > 0  # the late minutes are marked, durably
    with ReadingWriter(
        storage, keys, spill_dir=tmp_path / "p0", rollup_interval_s=0.0, rollup_grace_s=0.0,
        name="p0",
    ) as p0:  # fmt: skip
        for part in split_batch(mine, 500):
            p0.submit(part)
        assert p0.flush(timeout=60)
    assert _rollup_counts(storage, keys, theirs_late) == _expected(keys, theirs_late)
    assert _rollup_counts(storage, keys, mine) == _expected(keys, mine)
    assert _marks(storage) == 0


def test_concurrent_writers_refresh_every_minute_once_all_is_written(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    """Two writers on the same minutes, both refreshing at every turn: no deadlock, and the
    rollups end equal to the readings (a refresh that ran before the other writer's rows
    were committed is repeated, because those rows left their own marks)."""
    keys = storage.save_registry(small_registry)
    batch = synthetic_batch(
        small_registry, KIND, start_ms=NOW - 10 * MS_PER_MINUTE, rounds=40, interval_ms=15_000
    )
    a, b = _halves(batch)
    opts = {"rollup_interval_s": 0.0, "rollup_grace_s": 0.0, "commit_rows": 300}
    with (
        ReadingWriter(storage, keys, spill_dir=tmp_path / "a", name="a", **opts) as wa,  # type: ignore[arg-type]
        ReadingWriter(storage, keys, spill_dir=tmp_path / "b", name="b", **opts) as wb,  # type: ignore[arg-type]
    ):
        for pa, pb in zip(split_batch(a, 200), split_batch(b, 200), strict=False):
            wa.submit(pa)
            wb.submit(pb)
        assert wa.flush(timeout=60) and wb.flush(timeout=60)
    assert wa.stats().errors == 0 and wb.stats().errors == 0
    assert _rollup_counts(storage, keys, batch) == _expected(keys, batch)
    assert _marks(storage) == 0


def test_one_refresher_at_a_time(pg_storage: Storage, small_registry: Registry) -> None:
    """While another session holds the refresher's lock, a refresh takes nothing."""
    keys = pg_storage.save_registry(small_registry)
    batch = synthetic_batch(small_registry, KIND, start_ms=NOW - 30 * MS_PER_MINUTE, rounds=3)
    sink = make_sink(pg_storage)
    try:
        from storage.rows import Rows

        sink.write([Rows.from_batch(batch, keys)])
        marked = _marks(pg_storage)
        assert marked > 0
        holder = pg_storage.connect_raw("test-holder")
        try:
            holder.autocommit = True
            holder.execute(
                "SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (REFRESH_LOCK_KEY,)
            )
            assert sink.refresh_dirty(None) is None
            assert _marks(pg_storage) == marked
            holder.execute(  # not just close(): the server ends the session a bit later
                "SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (REFRESH_LOCK_KEY,)
            )
        finally:
            holder.close()
        assert sink.refresh_dirty(NOW - 60 * MS_PER_MINUTE) == 0  # nothing ended that early
        assert _marks(pg_storage) == marked
        assert (sink.refresh_dirty(None) or 0) > 0
        assert _marks(pg_storage) == 0
    finally:
        sink.close()
    assert _rollup_counts(pg_storage, keys, batch) == _expected(keys, batch)


def test_refresh_summarizes_the_brin_ranges_it_reads(
    pg_storage: Storage, small_registry: Registry
) -> None:
    """Unsummarized BRIN ranges are read by every scan: a refresh summarizes them first,
    so a minute's refresh reads that minute's pages, not the whole day's partition."""
    from storage.rows import Rows

    keys = pg_storage.save_registry(small_registry)
    batch = synthetic_batch(small_registry, KIND, start_ms=NOW - 30 * MS_PER_MINUTE, rounds=20)
    sink = make_sink(pg_storage)
    try:
        sink.write([Rows.from_batch(batch, keys)])
        assert (sink.refresh_dirty(None) or 0) > 0
    finally:
        sink.close()
    with pg_storage.connection() as conn:
        left = conn.execute(
            "SELECT coalesce(sum(brin_summarize_new_values(i.indexrelid)), 0) "
            "FROM pg_inherits h JOIN pg_index i ON i.indrelid = h.inhrelid "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
            "WHERE h.inhparent = 'readings_sewage'::regclass AND a.amname = 'brin'"
        ).fetchone()[0]
    assert left == 0


def test_refresh_waits_while_raw_storage_is_behind_but_not_forever(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    """Rollups are derived: while the owner says raw storage is behind they wait (marks
    kept), for at most ``rollup_max_defer_s``; a stop refreshes regardless."""
    keys = storage.save_registry(small_registry)
    batch = synthetic_batch(small_registry, KIND, start_ms=NOW - 20 * MS_PER_MINUTE, rounds=6)
    behind = {"now": True}
    w = ReadingWriter(
        storage, keys, spill_dir=tmp_path / "w", rollup_interval_s=0.0, rollup_grace_s=0.0,
        rollup_max_defer_s=3600.0,
    )  # fmt: skip
    w.rollup_defer = lambda: behind["now"]
    with w:
        w.submit(batch)
        assert w.flush(timeout=60)
        time.sleep(1.0)  # idle turns: each would refresh if it were not deferred
        assert w.stats().rollup_rows == 0 and _marks(storage) > 0
        behind["now"] = False
        deadline = time.monotonic() + 30
        while w.stats().rollup_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.stats().rollup_rows > 0
    assert _rollup_counts(storage, keys, batch) == _expected(keys, batch)
    # bounded: with a zero bound a refresh happens although the owner still says behind
    w2 = ReadingWriter(
        storage, keys, spill_dir=tmp_path / "w2", rollup_interval_s=0.0, rollup_grace_s=0.0,
        rollup_max_defer_s=0.0,
    )  # fmt: skip
    w2.rollup_defer = lambda: True
    later = synthetic_batch(small_registry, KIND, start_ms=NOW - 40 * MS_PER_MINUTE, rounds=2)
    with w2:
        w2.submit(later)
        assert w2.flush(timeout=60)
        deadline = time.monotonic() + 30
        while w2.stats().rollup_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w2.stats().rollup_rows > 0
