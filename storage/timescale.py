"""The TimescaleDB path, used only when the extension is installed (it is not everywhere).

After the migrations have made the native schema, ``enable_timescale`` converts each
readings table into a hypertable (1-day chunks, compressed after ``compress_after_days``
segmented by device, dropped after ``retention_days``) and replaces each plain rollup
table by a continuous aggregate with the same name and columns, refreshed every minute.
Queries do not change; the writer stops managing partitions and rollups (it reads
``storage_meta.partitioning``). Everything else in ``storage`` is the native path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from storage.schema import ROLLUP_STATS, SECOND_SQL, TABLES

if TYPE_CHECKING:
    from storage.engine import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TimescalePolicy:
    chunk_days: int = 1
    compress_after_days: int = 2
    retention_days: int | None = 30
    rollup_refresh_lag_s: int = 60

    def __post_init__(self) -> None:
        for name in ("chunk_days", "compress_after_days", "rollup_refresh_lag_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retention_days is not None and self.retention_days <= self.compress_after_days:
            raise ValueError(
                f"retention_days ({self.retention_days}) must exceed compress_after_days "
                f"({self.compress_after_days})"
            )


def hypertable_sql(kind: DeviceKind, policy: TimescalePolicy | None = None) -> list[str]:
    """Statements converting one native readings table (and its rollup) to TimescaleDB."""
    p = policy or TimescalePolicy()
    t = TABLES[kind]
    native = f"{t.name}_native"
    aggs = ",\n    ".join(f'{s}("{f}") AS {f}_{s}' for f in t.fields for s in ROLLUP_STATS)
    out = [
        f"ALTER TABLE {t.name} RENAME TO {native}",
        f"CREATE TABLE {t.name} (LIKE {native} INCLUDING DEFAULTS)",
        f"SELECT create_hypertable('{t.name}', 'ts', "
        f"chunk_time_interval => INTERVAL '{p.chunk_days} days')",
        # the native tables' time-first key (migration 0005): inserts stay on the newest
        # part of the chunk's index, and the queries' second = ANY(...) descents use it
        f"CREATE UNIQUE INDEX {t.name}_second_device_ts ON {t.name} ({SECOND_SQL}, device, ts)",
        f"INSERT INTO {t.name} SELECT * FROM {native}",
        f"DROP TABLE {native} CASCADE",
        f"ALTER TABLE {t.name} SET (timescaledb.compress, "
        f"timescaledb.compress_segmentby = 'device', timescaledb.compress_orderby = 'ts DESC')",
        f"SELECT add_compression_policy('{t.name}', INTERVAL '{p.compress_after_days} days')",
    ]
    if p.retention_days is not None:
        out.append(f"SELECT add_retention_policy('{t.name}', INTERVAL '{p.retention_days} days')")
    out += [
        f"DROP TABLE {t.rollup}",
        f"CREATE MATERIALIZED VIEW {t.rollup} WITH (timescaledb.continuous) AS\n"
        f"SELECT device, time_bucket(INTERVAL '1 minute', ts) AS minute, "
        f"count(*)::integer AS n,\n    {aggs}\n"
        f"FROM {t.name} GROUP BY device, time_bucket(INTERVAL '1 minute', ts) WITH NO DATA",
        f"SELECT add_continuous_aggregate_policy('{t.rollup}', "
        f"start_offset => INTERVAL '{max(p.compress_after_days, 1)} days', "
        f"end_offset => INTERVAL '{p.rollup_refresh_lag_s} seconds', "
        "schedule_interval => INTERVAL '1 minute')",
    ]
    return out


def available(conn: Any) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        is not None
    )


def enable_timescale(
    storage: Storage, mode: str = "auto", policy: TimescalePolicy | None = None
) -> bool:
    """Convert to TimescaleDB if ``mode`` allows and the extension exists; True if converted.

    ``mode``: ``auto`` (convert when available), ``off``, ``require`` (error if absent).
    Idempotent: a database already converted is left alone.
    """
    if mode not in ("auto", "off", "require"):
        raise StorageError(f"timescale mode {mode!r}: use auto, off or require")
    if storage.dialect != "postgres" or mode == "off":
        return False
    with storage.connection() as conn:
        if not available(conn):
            if mode == "require":
                raise StorageError(
                    "timescale='require' but the timescaledb extension is not installed on "
                    "this server; install it or use timescale='auto' for native partitions"
                )
            return False
        row = conn.execute("SELECT value FROM storage_meta WHERE key = 'partitioning'").fetchone()
        if row and row[0] == "timescale":
            return False
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        for kind in DeviceKind:
            for statement in hypertable_sql(kind, policy):
                conn.execute(statement)
        conn.execute("UPDATE storage_meta SET value = 'timescale' WHERE key = 'partitioning'")
    log.info(
        "converted to TimescaleDB hypertables", extra={"schema": getattr(storage, "schema", "")}
    )
    return True
