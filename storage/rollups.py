"""1-minute rollups of the readings tables (native path; Timescale uses a continuous aggregate).

A refresh recomputes whole minutes from the readings and replaces their rollup rows, so
it is idempotent and late readings (a replay after an outage) are folded in by simply
refreshing the minutes they touched. ``refresh_rollups`` is callable directly.

Which minutes: every reading writer marks the minutes of each chunk in ``rollup_dirty``
inside the chunk's own transaction (``mark_dirty_with``), so marks are as durable as the
rows. On a timer any writer may call ``refresh_dirty_with``: under a PostgreSQL advisory
lock (one refresher at a time, so N writers never upsert the same rollup rows
concurrently, which deadlocked) it takes the marks of minutes that ended ``grace`` ago,
refreshes them for every device and deletes them in one transaction. Whichever partition
wrote a minute, some writer refreshes it; a failed refresh rolls back and leaves the marks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gridwatch.domain import DeviceKind
from storage.schema import ROLLUP_STATS, TABLES

if TYPE_CHECKING:
    from storage.engine import Storage

log = logging.getLogger(__name__)

MS_PER_MINUTE = 60_000
REFRESH_LOCK_KEY = 0x726F_6C6C  # "roll": the advisory lock of the one rollup refresher
REFRESH_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s, hashtext(current_schema()))"
"""Advisory locks are per database: the schema is part of the key, so deployments (and
tests) in other schemas of the same database never take each other's turn."""
MAX_MINUTES_PER_REFRESH = 1_440
"""Minutes one refresh transaction takes at most (a replay of days is refreshed in turns)."""


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
            # in primary-key order (minute, device; migration 0005): the upsert fills the
            # key's newest pages in turn instead of touching a random leaf per device
            "WHERE ts >= %s AND ts < %s GROUP BY 1, 2 ORDER BY 2, 1 "
            f"ON CONFLICT (device, minute) DO UPDATE SET {sets}"
        )
    return (
        f"INSERT INTO {t.rollup} (device, minute_ms, n, {cols}) "
        f"SELECT device, (ts_ms / {MS_PER_MINUTE}) * {MS_PER_MINUTE}, count(*), {aggs} "
        f"FROM {t.name} WHERE ts_ms >= ? AND ts_ms < ? GROUP BY 1, 2 ORDER BY 1, 2 "
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
    if dialect == "postgres":
        summarize_brin(conn, [kind])
    return _refresh_ranges(conn, dialect, kind, [(lo_ms, hi_ms)])


def _refresh_ranges(
    conn: Any, dialect: str, kind: DeviceKind, ranges: Iterable[tuple[int, int]]
) -> int:
    total = 0
    for lo, hi in merge_ranges(ranges):
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


def mark_dirty_with(conn: Any, dialect: str, kind: DeviceKind, ts_ms: npt.NDArray[Any]) -> int:
    """Mark the minutes of ``ts_ms`` stale, on the writer's open transaction; returns how many."""
    if not len(ts_ms):
        return 0
    minutes = np.unique(np.asarray(ts_ms, dtype=np.int64) // MS_PER_MINUTE) * MS_PER_MINUTE
    values = minutes.tolist()
    if dialect == "postgres":
        conn.execute(
            "INSERT INTO rollup_dirty (kind, minute_ms) SELECT %s, unnest(%s::bigint[])",
            (kind.value, values),
        )
    else:
        conn.executemany(
            "INSERT INTO rollup_dirty (kind, minute_ms) VALUES (?, ?)",
            [(kind.value, m) for m in values],
        )
    return len(values)


def refresh_dirty_with(conn: Any, dialect: str, until_ms: int | None) -> int | None:
    """Refresh the marked minutes that ended by ``until_ms`` (all when None), on an open
    transaction; the marks go with it. None when another writer is refreshing right now
    (PostgreSQL: it holds the advisory lock, and will take these marks too)."""
    ph = "%s" if dialect == "postgres" else "?"
    if dialect == "postgres":
        got = conn.execute(REFRESH_LOCK_SQL, (REFRESH_LOCK_KEY,)).fetchone()
        if not got[0]:
            return None
    last = (2**62) if until_ms is None else until_ms - MS_PER_MINUTE
    # Marks committed after this statement's snapshot stay for the next turn; the refresh
    # below runs after it, so it sees every row whose mark is taken here.
    taken = conn.execute(
        "DELETE FROM rollup_dirty WHERE minute_ms IN ("
        f"SELECT DISTINCT minute_ms FROM rollup_dirty WHERE minute_ms <= {ph} "
        f"ORDER BY minute_ms LIMIT {ph}) RETURNING kind, minute_ms",
        (last, MAX_MINUTES_PER_REFRESH),
    ).fetchall()
    minutes: dict[str, set[int]] = {}
    for kind, minute in taken:
        minutes.setdefault(str(kind), set()).add(int(minute))
    total = 0
    kinds = {k.value: k for k in DeviceKind}
    if dialect == "postgres" and minutes:
        summarize_brin(conn, [kinds[k] for k in sorted(minutes) if k in kinds])
    for kind_name, ms in sorted(minutes.items()):
        kind = kinds.get(kind_name)
        if kind is None:  # not written by gridwatch: nothing to refresh
            continue
        total += _refresh_ranges(conn, dialect, kind, ((m, m + MS_PER_MINUTE) for m in ms))
    return total


_BRIN_OF = (
    "SELECT i.indexrelid::regclass::text FROM pg_inherits h "
    "JOIN pg_index i ON i.indrelid = h.inhrelid "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
    "WHERE h.inhparent = %s::regclass AND a.amname = 'brin'"
)


def summarize_brin(conn: Any, kinds: Iterable[DeviceKind]) -> int:
    """Summarize the new page ranges of the readings partitions' BRIN indexes on ``ts``.

    Inserted pages stay *unsummarized* until VACUUM (rare on insert-only tables), and a
    BRIN scan must read every unsummarized page: without this a refresh of one minute
    read the whole day's partition (measured: 56,000 of 56,000 heap blocks for 1 of 6
    minutes), so its cost grew all day. Summarizing is incremental (only new ranges).
    Runs in a savepoint: without the privilege (not the tables' owner) it is skipped.
    """
    import psycopg

    done = 0
    for kind in kinds:
        try:
            with conn.transaction():
                names = [r[0] for r in conn.execute(_BRIN_OF, (TABLES[kind].name,)).fetchall()]
                for name in names:
                    conn.execute("SELECT brin_summarize_new_values(%s::regclass)", (name,))
                done += len(names)
        except psycopg.Error as exc:
            log.warning("BRIN summarization skipped", extra={"kind": kind.value, "error": str(exc)})
    return done
