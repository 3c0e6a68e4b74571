"""Native PostgreSQL daily partitions of the readings tables: create ahead, drop by retention.

Partitions are UTC days named ``readings_<kind>_pYYYYMMDD``. Every readings table also
has a DEFAULT partition, so a reading for a day that has no partition yet (a device
with a wrong clock, a replay from long ago) lands there instead of failing the COPY.
Creating a day's partition first moves that day's rows out of the default partition
(PostgreSQL refuses to create it while the default holds rows of its range), all in one
transaction, so such a reading is never lost nor duplicated.

Concurrent managers (the writer, ``gridwatch db maintain``) serialise on an advisory
lock per table. Used only when TimescaleDB is absent; see ``storage.timescale``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gridwatch.domain import DeviceKind
from storage.schema import MS_PER_DAY, TABLES

log = logging.getLogger(__name__)

_PART = re.compile(r"^readings_([a-z]+)_p(\d{8})$")


@dataclass(frozen=True, slots=True)
class PartitionPolicy:
    """How far ahead partitions exist and how long readings are kept.

    ``retention_days=None`` keeps everything. Readings older than the retention window
    are not given partitions (they would be dropped at once); they wait in the default
    partition until retention deletes them there too.
    """

    ahead_days: int = 2
    retention_days: int | None = 30
    rollup_retention_days: int | None = 400

    def __post_init__(self) -> None:
        if self.ahead_days < 0:
            raise ValueError(f"ahead_days must be >= 0, got {self.ahead_days}")
        for name in ("retention_days", "rollup_retention_days"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")

    def window(self, now_ms: int) -> tuple[int, int]:
        """Days (epoch day numbers, inclusive) that may get a partition."""
        today = now_ms // MS_PER_DAY
        lo = today - self.retention_days + 1 if self.retention_days is not None else -(10**6)
        return lo, today + self.ahead_days


def day_of(ms: int) -> int:
    return ms // MS_PER_DAY


def day_label(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")


def _day_iso(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def partition_name(kind: DeviceKind, day: int) -> str:
    return f"{TABLES[kind].name}_p{day_label(day)}"


def _lock(conn: Any, table: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x7061, zlib.crc32(table.encode()) >> 1))


def existing_days(conn: Any, kind: DeviceKind) -> set[int]:
    """Days that have a partition of ``kind``'s readings table in the current schema."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relname = %s AND p.relnamespace = current_schema()::regnamespace",
        (TABLES[kind].name,),
    ).fetchall()
    out = set()
    epoch = dt.date(1970, 1, 1)
    for (name,) in rows:
        m = _PART.match(name)
        if m:
            out.add((dt.datetime.strptime(m.group(2), "%Y%m%d").date() - epoch).days)
    return out


def create_partition(conn: Any, kind: DeviceKind, day: int) -> bool:
    """Create one day's partition (moving its rows out of the default); False if it existed.

    Runs in the caller's transaction.
    """
    table = TABLES[kind].name
    _lock(conn, table)
    if day in existing_days(conn, kind):
        return False
    name = partition_name(kind, day)
    lo, hi = f"{_day_iso(day)} 00:00:00+00", f"{_day_iso(day + 1)} 00:00:00+00"
    conn.execute(f"CREATE TEMP TABLE _moved (LIKE {table}) ON COMMIT DROP")
    moved = conn.execute(
        f"WITH d AS (DELETE FROM {table}_default WHERE ts >= %s AND ts < %s RETURNING *) "
        "INSERT INTO _moved SELECT * FROM d",
        (lo, hi),
    ).rowcount
    conn.execute(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ('{lo}') TO ('{hi}')")
    if moved:
        conn.execute(f"INSERT INTO {table} SELECT * FROM _moved")
    conn.execute("DROP TABLE _moved")
    log.info("partition created", extra={"partition": name, "moved_from_default": max(moved, 0)})
    return True


def ensure_days(conn: Any, kind: DeviceKind, days: Iterable[int]) -> list[str]:
    """Create the partitions of ``days`` that are missing; returns the names created."""
    have = existing_days(conn, kind)
    created = []
    for day in sorted(set(days) - have):
        if create_partition(conn, kind, day):
            created.append(partition_name(kind, day))
    return created


def drop_expired(conn: Any, kind: DeviceKind, now_ms: int, policy: PartitionPolicy) -> list[str]:
    """Drop partitions wholly older than the retention window; delete such default rows."""
    if policy.retention_days is None:
        return []
    table = TABLES[kind].name
    first_kept = policy.window(now_ms)[0]
    _lock(conn, table)
    dropped = []
    for day in sorted(existing_days(conn, kind)):
        if day < first_kept:
            name = partition_name(kind, day)
            conn.execute(f"DROP TABLE {name}")
            dropped.append(name)
    conn.execute(
        f"DELETE FROM {table}_default WHERE ts < %s",
        (f"{_day_iso(first_kept)} 00:00:00+00",),
    )
    if dropped:
        log.info("partitions dropped", extra={"table": table, "partitions": dropped})
    return dropped


def maintain(conn: Any, now_ms: int, policy: PartitionPolicy) -> dict[str, list[str]]:
    """Create today's and the ahead partitions and apply retention, for every kind."""
    today = day_of(now_ms)
    report: dict[str, list[str]] = {"created": [], "dropped": []}
    for kind in DeviceKind:
        report["created"] += ensure_days(conn, kind, range(today, today + policy.ahead_days + 1))
        report["dropped"] += drop_expired(conn, kind, now_ms, policy)
        if policy.rollup_retention_days is not None:
            cutoff = today - policy.rollup_retention_days + 1
            conn.execute(
                f"DELETE FROM {TABLES[kind].rollup} WHERE minute < %s",
                (f"{_day_iso(cutoff)} 00:00:00+00",),
            )
    return report


def default_rows(conn: Any, kind: DeviceKind) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {TABLES[kind].name}_default").fetchone()[0])
