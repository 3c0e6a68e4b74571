"""The TimescaleDB path: SQL generation is checked here; the extension is absent on this
machine, so conversion itself is exercised only up to the availability check."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from storage.engine import PostgresStorage, Storage
from storage.maintenance import partitioning_mode
from storage.testing import temp_storage
from storage.timescale import TimescalePolicy, enable_timescale, hypertable_sql


def test_hypertable_sql_for_sewage() -> None:
    sql = hypertable_sql(
        DeviceKind.SEWAGE, TimescalePolicy(compress_after_days=3, retention_days=60)
    )
    text = "\n".join(sql)
    assert sql[0] == "ALTER TABLE readings_sewage RENAME TO readings_sewage_native"
    assert (
        "SELECT create_hypertable('readings_sewage', 'ts', "
        "chunk_time_interval => INTERVAL '1 days')" in sql
    )
    assert (
        "CREATE UNIQUE INDEX readings_sewage_second_device_ts ON readings_sewage "
        "((floor(date_part('epoch', ts AT TIME ZONE 'UTC'))::bigint), device, ts)"
    ) in sql
    assert "INSERT INTO readings_sewage SELECT * FROM readings_sewage_native" in sql
    assert "timescaledb.compress_segmentby = 'device'" in text
    assert "SELECT add_compression_policy('readings_sewage', INTERVAL '3 days')" in sql
    assert "SELECT add_retention_policy('readings_sewage', INTERVAL '60 days')" in sql
    assert "DROP TABLE rollup_1m_sewage" in sql
    assert "CREATE MATERIALIZED VIEW rollup_1m_sewage WITH (timescaledb.continuous)" in text
    # The aggregate keeps the rollup table's column names, so queries do not change.
    for col in ("n", "level_m_avg", "level_m_min", "level_m_max", "rain_mmph_max"):
        assert f" AS {col}" in text
    assert "time_bucket(INTERVAL '1 minute', ts) AS minute" in text
    assert text.index("create_hypertable") < text.index("INSERT INTO readings_sewage")
    assert text.index("DROP TABLE rollup_1m_sewage") < text.index("CREATE MATERIALIZED VIEW")


def test_quoting_of_reserved_field_names() -> None:
    text = "\n".join(hypertable_sql(DeviceKind.HIGHFALL))
    assert 'max("end") AS end_max' in text


def test_no_retention_policy_when_kept_forever() -> None:
    sql = hypertable_sql(DeviceKind.ELEVATOR, TimescalePolicy(retention_days=None))
    assert not any("add_retention_policy" in s for s in sql)


def test_policy_is_checked() -> None:
    with pytest.raises(
        ValueError, match=r"retention_days \(2\) must exceed compress_after_days \(2\)"
    ):
        TimescalePolicy(retention_days=2)
    with pytest.raises(ValueError, match="chunk_days must be >= 1, got 0"):
        TimescalePolicy(chunk_days=0)


@pytest.mark.postgres
def test_auto_keeps_native_partitions_without_the_extension(pg_storage: Storage) -> None:
    assert isinstance(pg_storage, PostgresStorage)
    assert enable_timescale(pg_storage, "auto") is False
    with pg_storage.connection() as conn:
        assert partitioning_mode(conn) == "native"
    with pytest.raises(StorageError, match="timescale='require' but the timescaledb extension"):
        enable_timescale(pg_storage, "require")
    with pytest.raises(StorageError, match="timescale mode 'maybe'"):
        enable_timescale(pg_storage, "maybe")


def test_sqlite_never_converts(tmp_path: Path) -> None:
    with temp_storage("sqlite", tmp_dir=tmp_path) as storage:
        assert enable_timescale(storage, "require") is False
        with storage.connection() as conn:
            assert partitioning_mode(conn) == "none"
