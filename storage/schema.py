"""Names and column types of the telemetry tables, derived from ``gridwatch.domain.FIELDS``.

The migration files spell the tables out (SQL a reviewer can read); this module is what
code uses, and ``tests/storage/test_schema.py`` checks that both agree, so a field added
to the domain without a migration fails the suite instead of failing at COPY time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from gridwatch.domain import FIELDS, DeviceKind

PG_TYPE: Final = {"float32": "real", "float64": "double precision", "int64": "bigint"}
SQLITE_TYPE: Final = {"float32": "REAL", "float64": "REAL", "int64": "INTEGER"}
ROLLUP_STATS: Final = ("avg", "min", "max")
"""Per field and minute; ``n`` (readings in the minute) is one column for all fields."""

MS_PER_DAY: Final = 86_400_000
SECOND_SQL: Final = "(floor(date_part('epoch', ts AT TIME ZONE 'UTC'))::bigint)"
"""The UTC second of ``ts``: the leading column of the PostgreSQL readings tables' unique
key (migration 0005). Spelled exactly as in the migration: the planner matches a query's
expression to the index by its parse tree, so a series query that says
``SECOND_SQL = ANY(seconds)`` descends the index once per second instead of scanning."""
PG_EPOCH_OFFSET_MS: Final = 946_684_800_000
"""PostgreSQL timestamps count microseconds from 2000-01-01 UTC; Unix epoch ms minus this."""


@dataclass(frozen=True, slots=True)
class ReadingTable:
    kind: DeviceKind
    name: str
    rollup: str
    fields: tuple[str, ...]
    dtypes: tuple[np.dtype, ...]

    def rollup_columns(self) -> tuple[str, ...]:
        return tuple(f"{f}_{s}" for f in self.fields for s in ROLLUP_STATS)


def reading_table(kind: DeviceKind) -> ReadingTable:
    specs = FIELDS[kind]
    return ReadingTable(
        kind=kind,
        name=f"readings_{kind.value}",
        rollup=f"rollup_1m_{kind.value}",
        fields=tuple(s.name for s in specs),
        dtypes=tuple(np.dtype(s.dtype) for s in specs),
    )


TABLES: Final = {k: reading_table(k) for k in DeviceKind}


def pg_readings_ddl(kind: DeviceKind) -> str:
    """The PostgreSQL DDL of one readings table (used to write migrations and in tests)."""
    t = TABLES[kind]
    cols = ",\n".join(f"    {f} {PG_TYPE[d.name]}" for f, d in zip(t.fields, t.dtypes, strict=True))
    return (
        f"CREATE TABLE {t.name} (\n    device integer NOT NULL,\n    ts timestamptz NOT NULL,\n"
        f"{cols}\n) PARTITION BY RANGE (ts);"
    )
