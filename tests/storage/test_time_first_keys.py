"""PostgreSQL keys lead with time (migration 0005), and the device queries still use them.

Inserting into a device-first btree costs a random leaf page per reading once the day's
index outgrows memory; the time-first keys keep inserts on the newest pages. What could
silently break is the other side: a device's series or latest reading no longer finding
its rows through the index (the planner matches the second's expression by its parse
tree) and scanning the whole range instead. These tests EXPLAIN the very statements the
queries run, and check an upgraded database keeps its rows and its uniqueness.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from storage.engine import Storage
from storage.queries import (
    device_info,
    last_readings,
    latest_sql,
    newest_second_sql,
    series,
    series_statement,
)
from storage.rollups import time_param
from storage.testing import migrations_through, synthetic_batch, temp_storage
from storage.writer import ReadingWriter

T0 = time.time_ns() // 1_000_000 // 60_000 * 60_000 - 30 * 60_000
KIND = DeviceKind.SEWAGE


def _plan(storage: Storage, sql: str, params: tuple) -> str:
    with storage.connection() as conn:
        conn.execute("SET LOCAL enable_seqscan = off")  # tiny tables: show the index is usable
        rows = conn.execute(f"EXPLAIN {sql}", params).fetchall()
    return "\n".join(r[0] for r in rows)


def _write(storage: Storage, registry: Registry, tmp_path: Path) -> tuple[str, list[int]]:
    """Six rounds of every sewage device; one device's id and its reading times."""
    keys = storage.save_registry(registry)
    batch = synthetic_batch(registry, KIND, start_ms=T0, rounds=6, seed=5)
    with ReadingWriter(storage, keys, spill_dir=tmp_path / "spill", rollup_interval_s=0.0) as w:
        w.submit(batch)
        assert w.flush(timeout=60)
    dev = int(registry.devices_of_kind(KIND)[3])
    return str(registry.device_ids[dev]), sorted(batch.ts_ms[batch.device == dev].tolist())


def test_series_and_latest_descend_the_time_first_keys(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    dev, times = _write(pg_storage, small_registry, tmp_path)
    key, kind = device_info(pg_storage, dev)
    # (partitions name their copy of the parent's index after its first column: floor_...)
    for use_rollup, index in ((False, "floor_device_ts"), (True, "rollup_1m_sewage_pkey")):
        sql, params, _ = series_statement(
            "postgres",
            kind,
            use_rollup=use_rollup,
            device_id=dev,
            key=key,
            since_ms=T0,
            until_ms=T0 + 3_600_000,
            limit=100,
        )
        plan = _plan(pg_storage, sql, params)
        cond = [line for line in plan.splitlines() if "Index Cond" in line]
        assert index in plan and cond and "= ANY" in cond[0], plan
    plan = _plan(pg_storage, latest_sql(kind), (key, time_param(T0, "postgres"), T0 // 1000))
    assert "Index Scan Backward" in plan and "floor_device_ts" in plan, plan
    assert "Sort  (" not in plan, plan  # the key's order is the answer's: no sort node
    plan = _plan(pg_storage, newest_second_sql(kind), ())
    assert "Scan Backward" in plan and "Sort  (" not in plan, plan
    # and the answers are right
    raw = series(pg_storage, dev, T0, T0 + 3_600_000)
    assert raw.ts_ms.tolist() == times and len(times) == 6
    assert series(pg_storage, dev, times[1], times[4]).ts_ms.tolist() == times[1:4]
    latest = last_readings(pg_storage, kind, device_ids=[dev, "no-such-device"])
    assert latest.device_id.tolist() == [dev] and latest.ts_ms[0] == times[-1]


def test_latest_reading_is_looked_for_within_the_lookback(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    dev, _ = _write(pg_storage, small_registry, tmp_path)
    assert len(last_readings(pg_storage, KIND, device_ids=[dev])) == 1
    # this device's rows a day older than the rest: outside the 6 h lookback from the
    # newest stored reading, unless the caller says since
    key, _ = device_info(pg_storage, dev)
    with pg_storage.connection() as conn:
        conn.execute(
            f"UPDATE readings_{KIND.value} SET ts = ts - interval '1 day' WHERE device = %s",
            (key,),
        )
    assert len(last_readings(pg_storage, KIND, device_ids=[dev])) == 0
    # all rows a day older (a replay of yesterday): the lookback follows the newest row
    with pg_storage.connection() as conn:
        conn.execute(
            f"UPDATE readings_{KIND.value} SET ts = ts - interval '1 day' WHERE device <> %s",
            (key,),
        )
    assert len(last_readings(pg_storage, KIND, device_ids=[dev])) == 1
    old = last_readings(pg_storage, KIND, device_ids=[dev], since_ms=T0 - 2 * 86_400_000)
    assert len(old) == 1 and old.ts_ms[0] < T0


def test_upgrade_to_time_first_keys_keeps_rows_and_uniqueness(
    tmp_path: Path, pg_url: str, small_registry: Registry
) -> None:
    old = migrations_through("postgres", 4, tmp_path / "old")
    with temp_storage("postgres", pg_url=pg_url, tmp_dir=tmp_path, migrate=False) as s:
        s.migrate(old)
        dev, times = _write(s, small_registry, tmp_path)
        assert s.migrate() == ["0005_time_first_keys"]
        with s.connection(readonly=True) as conn:
            indexes = {
                r[0]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                ).fetchall()
            }
            n = conn.execute(f"SELECT count(*) FROM readings_{KIND.value}").fetchone()[0]
        assert f"readings_{KIND.value}_second_device_ts" in indexes
        assert f"readings_{KIND.value}_device_ts" not in indexes
        assert n == 6 * small_registry.devices_of_kind(KIND).size
        assert series(s, dev, T0, T0 + 3_600_000).ts_ms.tolist() == times
        with s.connection() as conn, pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                f"INSERT INTO readings_{KIND.value} (device, ts) "
                f"SELECT device, ts FROM readings_{KIND.value} LIMIT 1"
            )
