"""1-minute rollups of the readings tables (native path; Timescale uses a continuous aggregate).

A refresh recomputes whole minutes from the readings and replaces their rollup rows, so
it is idempotent and late readings (a replay after an outage) are folded in by simply
refreshing the minutes they touched. The reading writer tracks those minutes and
refreshes them on a timer; ``refresh_rollups`` is also callable directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gridwatch.domain import DeviceKind
from storage.schema import ROLLUP_STATS, TABLES

if TYPE_CHECKING:
    from storage.engine import Storage

MS_PER_MINUTE = 60_000


def _q(name: str) -> str:
    return f'"{name}"'


def refresh_sql(kind: DeviceKind, dialect: str) -> str:
    """Upsert rollups of minutes in ``[lo, hi)``; parameters ``(lo, hi)`` in the dialect's time."""
    t = TABLES[kind]
    aggs = ", ".join(f"{s}({_q(f)})" for f in t.fields for s in ROLLUP_STATS)
    cols = ", ".join(t.rollup_columns())
    sets = ", ".join(f"{c} = excluded.{c}" for c in ("n", *t.rollup_columns()))
    if dialect == "postgres":
        return (
            f"INSERT INTO {t.rollup} (device, minute, n, {cols}) "
            f"SELECT device, date_trunc('minute', ts), count(*), {aggs} FROM {t.name} "
            "WHERE ts >= %s AND ts < %s GROUP BY 1, 2 "
            f"ON CONFLICT (device, minute) DO UPDATE SET {sets}"
        )
    return (
        f"INSERT INTO {t.rollup} (device, minute_ms, n, {cols}) "
        f"SELECT device, (ts_ms / {MS_PER_MINUTE}) * {MS_PER_MINUTE}, count(*), {aggs} "
        f"FROM {t.name} WHERE ts_ms >= ? AND ts_ms < ? GROUP BY 1, 2 "
        f"ON CONFLICT (device, minute_ms) DO UPDATE SET {sets}"
    )


def minute_floor(ms: int) -> int:
    return ms // MS_PER_MINUTE * MS_PER_MINUTE


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open ``[lo, hi)`` ms ranges, widened to whole minutes.

    >>> merge_ranges([(61_000, 62_000), (0, 1), (119_999, 130_000)])
    [(0, 180000)]
    >>> merge_ranges([(0, 1), (600_000, 600_001)])
    [(0, 60000), (600000, 660000)]
    """
    spans = sorted((minute_floor(lo), minute_floor(hi - 1) + MS_PER_MINUTE) for lo, hi in ranges)
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def time_param(ms: int, dialect: str) -> Any:
    """A bound time parameter: a UTC datetime for PostgreSQL, epoch ms for SQLite."""
    if dialect == "postgres":
        import datetime as dt

        return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return int(ms)


def refresh_with(conn: Any, dialect: str, kind: DeviceKind, lo_ms: int, hi_ms: int) -> int:
    """Refresh whole minutes covering ``[lo_ms, hi_ms)`` on an open connection."""
    total = 0
    for lo, hi in merge_ranges([(lo_ms, hi_ms)]):
        cur = conn.execute(
            refresh_sql(kind, dialect), (time_param(lo, dialect), time_param(hi, dialect))
        )
        total += max(cur.rowcount, 0)
    return total


def refresh_rollups(storage: Storage, kind: DeviceKind, since_ms: int, until_ms: int) -> int:
    """Recompute the rollups of every minute overlapping ``[since_ms, until_ms)``.

    Returns the number of rollup rows written.
    """
    if until_ms <= since_ms:
        return 0
    with storage.connection() as conn:
        return refresh_with(conn, storage.dialect, kind, since_ms, until_ms)
