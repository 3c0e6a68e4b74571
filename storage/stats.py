"""What ``gridwatch db stats`` reports: version, partitioning, table sizes, partitions.

Row counts of the telemetry tables are PostgreSQL's estimates (the larger of
``reltuples`` and the statistics' live-tuple count): an exact ``count(*)`` over billions
of readings would take minutes.
Small tables (devices, dead letters, checkpoints) are counted exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gridwatch.domain import DeviceKind
from storage.maintenance import partitioning_mode
from storage.migrate import current_version
from storage.schema import TABLES

if TYPE_CHECKING:
    from storage.engine import Storage

_SMALL = ("devices", "dead_letters", "detector_checkpoints")


def db_stats(storage: Storage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dialect": storage.dialect,
        "schema_version": current_version(storage),
    }
    if out["schema_version"] == 0:
        out["note"] = "not migrated: run `gridwatch db migrate`"
        return out
    with storage.connection(readonly=True) as conn:
        out["partitioning"] = partitioning_mode(conn)
        out["tables"] = {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in _SMALL
        }
        out["active_devices"] = int(
            conn.execute("SELECT count(*) FROM devices WHERE active").fetchone()[0]
        )
        if storage.dialect == "postgres" and out["partitioning"] == "timescale":
            out["readings"] = {
                k.value: {
                    "rows_estimate": int(
                        conn.execute(
                            "SELECT approximate_row_count(%s)", (TABLES[k].name,)
                        ).fetchone()[0]
                    )
                }
                for k in DeviceKind
            }
        elif storage.dialect == "postgres":
            out["readings"] = _pg_readings(conn)
        else:
            out["readings"] = {
                k.value: {
                    "rows": int(
                        conn.execute(f"SELECT count(*) FROM {TABLES[k].name}").fetchone()[0]
                    ),
                    "rollup_rows": int(
                        conn.execute(f"SELECT count(*) FROM {TABLES[k].rollup}").fetchone()[0]
                    ),
                }
                for k in DeviceKind
            }
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            out["database_bytes"] = int(page_count) * int(page_size)
    return out


def _pg_readings(conn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in DeviceKind:
        t = TABLES[kind]
        parts = conn.execute(
            "SELECT c.relname, greatest(c.reltuples, s.n_live_tup, 0)::bigint, "
            "pg_total_relation_size(c.oid) "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = %s AND p.relnamespace = current_schema()::regnamespace "
            "ORDER BY c.relname",
            (t.name,),
        ).fetchall()
        default_rows = int(conn.execute(f"SELECT count(*) FROM {t.name}_default").fetchone()[0])
        rollup = conn.execute(
            "SELECT greatest(c.reltuples, s.n_live_tup, 0)::bigint, pg_total_relation_size(c.oid) "
            "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace",
            (t.rollup,),
        ).fetchone()
        out[kind.value] = {
            "rows_estimate": sum(int(r[1]) for r in parts),
            "bytes": sum(int(r[2]) for r in parts),
            "partitions": [
                {"name": r[0], "rows_estimate": int(r[1]), "bytes": int(r[2])} for r in parts
            ],
            "default_partition_rows": default_rows,
            "rollup_rows_estimate": int(rollup[0]) if rollup else 0,
            "rollup_bytes": int(rollup[1]) if rollup else 0,
        }
    return out
