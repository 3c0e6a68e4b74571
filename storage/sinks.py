"""Synchronous writers of ``Rows`` chunks, one per backend; the reading writer drives them.

PostgreSQL: one transaction per chunk, one binary COPY per kind straight into the
partitioned table, inside a savepoint, rows in the order of the table's unique key (UTC
second, device, ts; migration 0005). A duplicate (device, ts) (an MQTT redelivery, a
replay after a commit whose acknowledgement was lost) makes that COPY fail as a whole;
the savepoint is rolled back and the same rows go through a temp staging table with
``INSERT ... ON CONFLICT DO NOTHING``. Duplicates are rare, so the common path costs what
a bare COPY costs (the staging path measured at half the rate; see docs/storage.md).

SQLite: ``executemany`` of ``INSERT OR IGNORE`` in one transaction per chunk, rows sorted
by (device, ts) first so the primary-key B-tree is filled in order.

Both mark the minutes they wrote as stale rollups in the chunk's transaction, and
``refresh_dirty`` refreshes the marked minutes of every writer (``storage.rollups``).

A sink raises ``SinkUnavailableError`` when the database cannot be reached; the caller keeps
the chunk and retries. Any other exception means the chunk itself was refused.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gridwatch.clock import Clock, SystemClock
from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from storage import partitions
from storage.copybin import encode_rows
from storage.maintenance import maintain_with, partitioning_mode
from storage.rollups import mark_dirty_with, refresh_dirty_with
from storage.rows import Rows, by_kind
from storage.schema import MS_PER_DAY, TABLES

if TYPE_CHECKING:
    from storage.engine import Storage

log = logging.getLogger(__name__)


class SinkUnavailableError(StorageError):
    """The database cannot be reached right now; the same chunk may be retried later."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    duplicates: int


class Sink(Protocol):
    def write(self, chunk: Sequence[Rows]) -> WriteResult: ...
    def refresh_dirty(self, until_ms: int | None) -> int | None: ...
    def maintain(self, now_ms: int) -> dict[str, Any]: ...
    def close(self) -> None: ...


def _columns(kind: DeviceKind, time_column: str = "ts") -> str:
    return ", ".join(["device", time_column, *(f'"{f}"' for f in TABLES[kind].fields)])


class PostgresSink:
    """Owns one dedicated connection (not from the pool), reopened after an outage."""

    def __init__(
        self,
        storage: Storage,
        *,
        policy: partitions.PartitionPolicy | None = None,
        clock: Clock | None = None,
        application_name: str = "gridwatch-writer",
        manage_partitions: bool = True,
    ) -> None:
        self.storage = storage
        self.policy = policy or partitions.PartitionPolicy()
        self.clock = clock or SystemClock()
        self.application_name = application_name
        self.manage_partitions = manage_partitions
        self._conn: Any = None
        self._days: dict[DeviceKind, set[int]] = {}
        self._staging: set[DeviceKind] = set()
        self._timescale = False

    def _connection(self) -> Any:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = self.storage.connect_raw(self.application_name)
            conn.autocommit = True
            self._timescale = partitioning_mode(conn) == "timescale"
            if self._timescale:  # chunks and rollups are the extension's job
                self.manage_partitions = False
            if self.manage_partitions:
                self._days = {k: partitions.existing_days(conn, k) for k in DeviceKind}
        except (StorageError, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise SinkUnavailableError(f"PostgreSQL unreachable: {exc}") from exc
        self._conn = conn
        self._staging.clear()
        return conn

    def _ensure_partitions(self, conn: Any, rows: Rows) -> None:
        lo_day, hi_day = int(rows.ts_ms.min()) // MS_PER_DAY, int(rows.ts_ms.max()) // MS_PER_DAY
        days = {lo_day} if lo_day == hi_day else set(np.unique(rows.ts_ms // MS_PER_DAY).tolist())
        first, last = self.policy.window(self.clock.now_ms())
        wanted = {d for d in days if first <= d <= last} - self._days.get(rows.kind, set())
        if not wanted:
            return
        with conn.transaction():
            partitions.ensure_days(conn, rows.kind, wanted)
        self._days[rows.kind] = self._days.get(rows.kind, set()) | wanted

    def write(self, chunk: Sequence[Rows]) -> WriteResult:
        import psycopg

        conn = self._connection()
        inserted = duplicates = 0
        try:
            groups = by_kind(chunk)
            if self.manage_partitions:
                for rows in groups.values():
                    self._ensure_partitions(conn, rows)
            with conn.transaction():
                for kind, rows in groups.items():
                    ins = self._write_kind(conn, kind, rows)
                    inserted += ins
                    duplicates += len(rows) - ins
                    if not self._timescale:  # the extension refreshes its own aggregate
                        mark_dirty_with(conn, "postgres", kind, rows.ts_ms)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise SinkUnavailableError(f"PostgreSQL write failed: {exc}") from exc
        return WriteResult(inserted, duplicates)

    def _write_kind(self, conn: Any, kind: DeviceKind, rows: Rows) -> int:
        import psycopg

        # In the unique key's order (UTC second, device): the COPY then fills the index's
        # newest pages one after another instead of hopping between them.
        order = np.argsort((rows.ts_ms // 1000) * (1 << 32) + rows.device, kind="stable")
        fields = [f[order] for f in rows.fields]
        payload = encode_rows(rows.device[order], rows.ts_ms[order], fields)
        table = TABLES[kind].name
        try:
            copy_sql = f"COPY {table} ({_columns(kind)}) FROM STDIN (FORMAT BINARY)"
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as cp:
                cp.write(payload)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            pass
        stage = f"_stage_{kind.value}"
        if kind not in self._staging:
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS"
            )
            self._staging.add(kind)
        with conn.cursor() as cur:
            with cur.copy(f"COPY {stage} ({_columns(kind)}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.write(payload)
            cur.execute(f"INSERT INTO {table} SELECT * FROM {stage} ON CONFLICT DO NOTHING")
            inserted = max(int(cur.rowcount), 0)
            cur.execute(f"TRUNCATE {stage}")
        log.info(
            "duplicate readings skipped",
            extra={"table": table, "rows": len(rows), "duplicates": len(rows) - inserted},
        )
        return inserted

    def refresh_dirty(self, until_ms: int | None) -> int | None:
        """Refresh every writer's stale minutes that ended by ``until_ms`` (None: all);
        None when another writer holds the refresher's advisory lock."""
        import psycopg

        conn = self._connection()
        if self._timescale:
            return 0
        try:
            with conn.transaction():
                return refresh_dirty_with(conn, "postgres", until_ms)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise SinkUnavailableError(f"PostgreSQL rollup refresh failed: {exc}") from exc

    def maintain(self, now_ms: int) -> dict[str, Any]:
        """Partitions ahead and retention; forgets cached partitions so drops are seen."""
        import psycopg

        conn = self._connection()
        try:
            with conn.transaction():
                report = maintain_with(conn, "postgres", now_ms, self.policy)
            self._days = {k: partitions.existing_days(conn, k) for k in DeviceKind}
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise SinkUnavailableError(f"PostgreSQL maintenance failed: {exc}") from exc
        return report

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a dead connection may raise; it is gone either way
                log.debug("closing writer connection failed", exc_info=True)
            self._conn = None


class SqliteSink:
    def __init__(
        self,
        storage: Storage,
        *,
        cache_mb: int = 128,
        policy: partitions.PartitionPolicy | None = None,
    ) -> None:
        self.storage = storage
        self.policy = policy or partitions.PartitionPolicy()
        self.cache_mb = cache_mb
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = self.storage.connect_raw()
                # The default 2 MB page cache makes random B-tree inserts disk-bound.
                conn.execute(f"PRAGMA cache_size = -{self.cache_mb * 1024}")
            except (StorageError, sqlite3.Error) as exc:
                raise SinkUnavailableError(f"SQLite unavailable: {exc}") from exc
            self._conn = conn
        return self._conn

    def write(self, chunk: Sequence[Rows]) -> WriteResult:
        conn = self._connection()
        inserted = total = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for kind, rows in by_kind(chunk).items():
                    order = np.lexsort((rows.ts_ms, rows.device))
                    cols = [rows.device[order].tolist(), rows.ts_ms[order].tolist()]
                    cols += [f[order].tolist() for f in rows.fields]
                    before = conn.total_changes
                    conn.executemany(
                        f"INSERT OR IGNORE INTO {TABLES[kind].name} ({_columns(kind, 'ts_ms')}) "
                        f"VALUES ({', '.join('?' * len(cols))})",
                        zip(*cols, strict=True),
                    )
                    inserted += conn.total_changes - before
                    total += len(rows)
                    mark_dirty_with(conn, "sqlite", kind, rows.ts_ms)
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
        except sqlite3.OperationalError as exc:  # locked, disk full, I/O error: retry later
            self.close()
            raise SinkUnavailableError(f"SQLite write failed: {exc}") from exc
        return WriteResult(inserted, total - inserted)

    def refresh_dirty(self, until_ms: int | None) -> int | None:
        """Refresh the stale minutes that ended by ``until_ms`` (None: all)."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                n = refresh_dirty_with(conn, "sqlite", until_ms)
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
            return n
        except sqlite3.OperationalError as exc:
            self.close()
            raise SinkUnavailableError(f"SQLite rollup refresh failed: {exc}") from exc

    def maintain(self, now_ms: int) -> dict[str, Any]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            report = maintain_with(conn, "sqlite", now_ms, self.policy)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self.close()
            raise SinkUnavailableError(f"SQLite maintenance failed: {exc}") from exc
        return report

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def make_sink(storage: Storage, **opts: Any) -> Sink:
    if storage.dialect == "postgres":
        return PostgresSink(storage, **opts)
    opts.pop("clock", None)
    opts.pop("application_name", None)
    opts.pop("manage_partitions", None)
    return SqliteSink(storage, **opts)
