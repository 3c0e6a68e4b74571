"""What the console and engineers ask the store: last readings, a device's series, counts.

Results are columnar (``ReadingColumns``: numpy arrays by name), like everything else in
gridwatch; ``rows()`` turns them into dicts for printing. Times are epoch milliseconds
on both backends. A series longer than ``ROLLUP_AFTER_MS`` is answered from the
1-minute rollups unless raw rows are asked for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from storage.rollups import time_param
from storage.schema import SECOND_SQL, TABLES

if TYPE_CHECKING:
    from storage.engine import Storage

ROLLUP_AFTER_MS = 6 * 3_600_000
"""Series over more than 6 h come from rollups: 6 h of 1 s elevator data is 21,600 rows."""

LATEST_LOOKBACK_MS = (600_000, 3_600_000, 6 * 3_600_000)
"""PostgreSQL: a device's latest reading is looked for in the 10 min, then 1 h, then 6 h
before the newest stored reading of its kind (or now, if that is later). The readings'
key leads with the second (migration 0005), so each try is a backward scan of that
window's part of the index, short for a device that reports; a device silent for longer
has no "latest" reading unless the caller passes ``since_ms``."""

Resolution = Literal["auto", "raw", "1m"]


@dataclass(frozen=True, slots=True)
class ReadingColumns:
    """Rows of one kind as columns. ``resolution`` is ``raw`` or ``1m`` (rollup columns)."""

    kind: DeviceKind
    resolution: str
    device_id: npt.NDArray[np.str_]
    ts_ms: npt.NDArray[np.int64]
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])

    def rows(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        cols = [self.columns[n].tolist() for n in names]
        out = []
        for i, (d, t) in enumerate(zip(self.device_id.tolist(), self.ts_ms.tolist(), strict=True)):
            row: dict[str, Any] = {"device_id": d, "ts_ms": t}
            for n, c in zip(names, cols, strict=True):
                v = c[i]
                row[n] = None if isinstance(v, float) and np.isnan(v) else v
            out.append(row)
        return out


def _ts_select(dialect: str, column: str = "ts") -> str:
    if dialect == "postgres":
        return f"(extract(epoch FROM r.{column}) * 1000)::bigint"
    return f"r.{column}_ms"


def _columns_result(
    kind: DeviceKind, resolution: str, names: Sequence[str], rows: list[Any]
) -> ReadingColumns:
    dev = np.array([r[0] for r in rows], dtype=np.str_) if rows else np.zeros(0, np.str_)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    cols: dict[str, npt.NDArray[Any]] = {}
    t = TABLES[kind]
    dtypes = dict(zip(t.fields, t.dtypes, strict=True))
    for j, name in enumerate(names):
        values = [r[2 + j] for r in rows]
        if name == "n":
            cols[name] = np.array(values, dtype=np.int64)
        elif resolution == "raw" and dtypes[name].kind == "i":
            cols[name] = np.array([-1 if v is None else v for v in values], dtype=dtypes[name])
        else:
            dt = dtypes[name] if resolution == "raw" else np.float64
            cols[name] = np.array([np.nan if v is None else v for v in values], dtype=dt)
    return ReadingColumns(kind, resolution, dev, ts, cols)


def device_info(storage: Storage, device_id: str) -> tuple[int, DeviceKind]:
    """``(device_key, kind)`` of a registered device; ``StorageError`` if unknown."""
    with storage.connection(readonly=True) as conn:
        row = conn.execute(
            storage.sql("SELECT device_key, kind FROM devices WHERE device_id = %s"), (device_id,)
        ).fetchone()
    if row is None:
        raise StorageError(f"unknown device {device_id!r}: not in the stored registry")
    return int(row[0]), DeviceKind(row[1])


def series_statement(
    dialect: str,
    kind: DeviceKind,
    *,
    use_rollup: bool,
    device_id: str,
    key: int,
    since_ms: int,
    until_ms: int,
    limit: int,
) -> tuple[str, tuple[Any, ...], Sequence[str]]:
    """The SQL, parameters and value columns of ``series`` (exposed so a test can EXPLAIN
    the very statement the query runs)."""
    d = dialect
    t = TABLES[kind]
    if use_rollup:
        names: Sequence[str] = ("n", *t.rollup_columns())
        table, tcol = t.rollup, "minute"
    else:
        names = t.fields
        table, tcol = t.name, "ts"
    where_col = tcol if d == "postgres" else f"{tcol}_ms"
    cols = ", ".join(f'r."{n}"' for n in names)
    lo, hi = time_param(since_ms, d), time_param(until_ms, d)
    keys, key_params = "", ()
    if d == "postgres":
        # The keys lead with time (migration 0005): one index descent per second (raw) or
        # minute (rollups) of the range, rather than a scan of every device's rows in it.
        if use_rollup:
            keys = (
                " AND r.minute = ANY(ARRAY(SELECT generate_series("
                "date_trunc('minute', %s::timestamptz), %s::timestamptz, interval '1 minute')))"
            )
            key_params = (lo, hi)
        else:
            keys = f" AND {SECOND_SQL} = ANY(ARRAY(SELECT generate_series(%s::bigint, %s::bigint)))"
            key_params = (since_ms // 1000, (until_ms - 1) // 1000)
    query = (
        f"SELECT %s, {_ts_select(d, tcol)}, {cols} FROM {table} r "
        f"WHERE r.device = %s AND r.{where_col} >= %s AND r.{where_col} < %s{keys} "
        f"ORDER BY r.{where_col} LIMIT %s"
    )
    params = (device_id, key, lo, hi, *key_params, limit)
    return query, params, names


def series(
    storage: Storage,
    device_id: str,
    since_ms: int,
    until_ms: int,
    *,
    resolution: Resolution = "auto",
    limit: int = 100_000,
) -> ReadingColumns:
    """A device's readings in ``[since_ms, until_ms)``, oldest first.

    ``auto`` picks rollups (``n`` and ``<field>_avg/_min/_max`` per minute) when the range
    exceeds ``ROLLUP_AFTER_MS``.
    """
    if until_ms <= since_ms:
        raise ValueError(f"until_ms ({until_ms}) must be after since_ms ({since_ms})")
    key, kind = device_info(storage, device_id)
    use_rollup = resolution == "1m" or (
        resolution == "auto" and until_ms - since_ms > ROLLUP_AFTER_MS
    )
    query, params, names = series_statement(
        storage.dialect,
        kind,
        use_rollup=use_rollup,
        device_id=device_id,
        key=key,
        since_ms=since_ms,
        until_ms=until_ms,
        limit=limit,
    )
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(storage.sql(query), params).fetchall()
    return _columns_result(kind, "1m" if use_rollup else "raw", names, rows)


def last_readings(
    storage: Storage,
    kind: DeviceKind,
    *,
    device_ids: Sequence[str] | None = None,
    since_ms: int | None = None,
) -> ReadingColumns:
    """The newest reading of each device of ``kind`` (optionally only ``device_ids``).

    ``since_ms`` bounds how far back to look; on PostgreSQL it prunes partitions, so pass
    it for fleet-wide questions ("last reading of every manhole in the last hour").
    """
    t = TABLES[kind]
    d = storage.dialect
    tcol = "ts" if d == "postgres" else "ts_ms"
    cols = ", ".join(f'r."{n}"' for n in t.fields)
    params: list[Any] = []
    where = []
    if since_ms is not None:
        where.append(f"r.{tcol} >= %s")
        params.append(time_param(since_ms, d))
    if device_ids is not None:
        if not device_ids:
            return _columns_result(kind, "raw", t.fields, [])
        if d == "postgres":
            return _latest_of_devices(storage, kind, device_ids, since_ms)
        where.append(f"dv.device_id IN ({', '.join(['%s'] * len(device_ids))})")
        params.extend(device_ids)
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    if d == "postgres":
        query = (
            f"SELECT DISTINCT ON (r.device) dv.device_id, {_ts_select(d)}, {cols} "
            f"FROM {t.name} r JOIN devices dv ON dv.device_key = r.device{cond} "
            "ORDER BY r.device, r.ts DESC"
        )
    else:  # SQLite: a bare column next to max() comes from the row holding the max
        query = (
            f"SELECT dv.device_id, max(r.ts_ms), {cols} "
            f"FROM {t.name} r JOIN devices dv ON dv.device_key = r.device{cond} "
            "GROUP BY r.device ORDER BY r.device"
        )
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(storage.sql(query), params).fetchall()
    return _columns_result(kind, "raw", t.fields, rows)


def latest_sql(kind: DeviceKind) -> str:
    """PostgreSQL: one device's newest reading at or after a time; parameters
    ``(device key, since, since's second)``."""
    t = TABLES[kind]
    cols = ", ".join(f'r."{n}"' for n in t.fields)
    return (
        f"SELECT {_ts_select('postgres')}, {cols} FROM {t.name} r "
        f"WHERE r.device = %s AND r.ts >= %s AND {SECOND_SQL} >= %s "
        f"ORDER BY {SECOND_SQL} DESC, r.ts DESC LIMIT 1"
    )


def newest_second_sql(kind: DeviceKind) -> str:
    """PostgreSQL: the newest stored second of a kind (the key's last entry per partition)."""
    return f"SELECT {SECOND_SQL} FROM {TABLES[kind].name} ORDER BY 1 DESC LIMIT 1"


def _latest_of_devices(
    storage: Storage, kind: DeviceKind, device_ids: Sequence[str], since_ms: int | None
) -> ReadingColumns:
    """PostgreSQL: each device's newest reading by a backward scan of the time-first key.

    The scan is bounded by a window (``since_ms``, else ``LATEST_LOOKBACK_MS`` in turn):
    without one, a device with no rows would make it read the whole index.
    """
    t = TABLES[kind]
    query = latest_sql(kind)
    out: list[Any] = []
    with storage.connection(readonly=True) as conn:
        if since_ms is not None:
            windows = [since_ms]
        else:
            # Anchored at the newest stored second (a replay of last year's data still has
            # a latest reading), but not past now: one device with a clock years ahead
            # must not hide everyone's readings.
            newest = conn.execute(newest_second_sql(kind)).fetchone()
            now_ms = time.time_ns() // 1_000_000
            anchor = now_ms if newest is None else min(now_ms, (int(newest[0]) + 1) * 1000)
            windows = [anchor - w for w in LATEST_LOOKBACK_MS]
        found = conn.execute(
            "SELECT device_id, device_key FROM devices WHERE device_id = ANY(%s)",
            (list(device_ids),),
        ).fetchall()
        for device_id, key in sorted(found):
            for lo in windows:
                row = conn.execute(
                    query, (int(key), time_param(lo, "postgres"), lo // 1000)
                ).fetchone()
                if row is not None:
                    out.append((device_id, *row))
                    break
    return _columns_result(kind, "raw", t.fields, out)


@dataclass(frozen=True, slots=True)
class GridCount:
    grid: str
    devices: int
    devices_by_kind: dict[str, int]
    readings: int
    reporting_devices: int


def grid_counts(storage: Storage, *, since_ms: int | None = None) -> list[GridCount]:
    """Per grid: active devices (by kind), readings and devices that reported since ``since_ms``.

    Without ``since_ms`` the reading counts cover all retained data (a full scan).
    """
    d = storage.dialect
    with storage.connection(readonly=True) as conn:
        dev_rows = conn.execute(
            "SELECT grid, kind, count(*) FROM devices WHERE active GROUP BY grid, kind"
        ).fetchall()
        counts: dict[str, list[int]] = {}
        for kind in DeviceKind:
            t = TABLES[kind]
            tcol = "ts" if d == "postgres" else "ts_ms"
            cond: str = ""
            params: tuple[Any, ...] = ()
            if since_ms is not None:
                cond, params = f" WHERE r.{tcol} >= %s", (time_param(since_ms, d),)
            rows = conn.execute(
                storage.sql(
                    f"SELECT dv.grid, count(*), count(DISTINCT r.device) FROM {t.name} r "
                    f"JOIN devices dv ON dv.device_key = r.device{cond} GROUP BY dv.grid"
                ),
                params,
            ).fetchall()
            for grid, n, devices in rows:
                c = counts.setdefault(str(grid), [0, 0])
                c[0] += int(n)
                c[1] += int(devices)
    by_grid: dict[str, dict[str, int]] = {}
    for grid, kind, n in dev_rows:
        by_grid.setdefault(str(grid), {})[str(kind)] = int(n)
    grids = sorted(set(by_grid) | set(counts))
    return [
        GridCount(
            grid=g,
            devices=sum(by_grid.get(g, {}).values()),
            devices_by_kind=by_grid.get(g, {}),
            readings=counts.get(g, [0, 0])[0],
            reporting_devices=counts.get(g, [0, 0])[1],
        )
        for g in grids
    ]


def reading_count(storage: Storage, kind: DeviceKind) -> int:
    """Exact number of stored readings of ``kind`` (a full count: tests and small stores)."""
    with storage.connection(readonly=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {TABLES[kind].name}").fetchone()[0])


def duplicate_keys(storage: Storage, kind: DeviceKind) -> int:
    """Rows sharing a (device, ts) with another row; always 0 (the key is unique)."""
    tcol = "ts" if storage.dialect == "postgres" else "ts_ms"
    with storage.connection(readonly=True) as conn:
        row = conn.execute(
            f"SELECT count(*) - count(DISTINCT (device, {tcol})) FROM {TABLES[kind].name}"
            if storage.dialect == "postgres"
            else f"SELECT (SELECT count(*) FROM {TABLES[kind].name}) - "
            f"(SELECT count(*) FROM (SELECT DISTINCT device, {tcol} FROM {TABLES[kind].name}))"
        ).fetchone()
    return int(row[0])
