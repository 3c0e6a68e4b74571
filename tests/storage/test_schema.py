"""The readings tables the migrations create match ``gridwatch.domain.FIELDS``."""

from __future__ import annotations

from gridwatch.domain import FIELDS, DeviceKind
from storage.engine import Storage
from storage.schema import PG_TYPE, SQLITE_TYPE, TABLES


def _columns(storage: Storage, table: str) -> list[tuple[str, str]]:
    with storage.connection(readonly=True) as conn:
        if storage.dialect == "postgres":
            rows = conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum",
                (table,),
            ).fetchall()
        else:
            rows = [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]
    return [(str(n), str(t)) for n, t in rows]


def test_readings_tables_have_one_typed_column_per_field(storage: Storage) -> None:
    types = PG_TYPE if storage.dialect == "postgres" else SQLITE_TYPE
    time_col = (
        ("ts", "timestamp with time zone")
        if storage.dialect == "postgres"
        else (
            "ts_ms",
            "INTEGER",
        )
    )
    for kind in DeviceKind:
        cols = _columns(storage, TABLES[kind].name)
        expected = [
            ("device", "integer" if storage.dialect == "postgres" else "INTEGER"),
            time_col,
            *((f.name, types[f.dtype]) for f in FIELDS[kind]),
        ]
        assert cols == expected, kind


def test_rollup_tables_have_stats_per_field(storage: Storage) -> None:
    for kind in DeviceKind:
        names = [n for n, _ in _columns(storage, TABLES[kind].rollup)]
        assert names[:3] == [
            "device",
            "minute" if storage.dialect == "postgres" else "minute_ms",
            "n",
        ]
        assert names[3:] == list(TABLES[kind].rollup_columns())
