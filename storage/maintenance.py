"""Periodic upkeep: partitions ahead and retention (PostgreSQL), retention deletes (SQLite).

The reading writer runs this on a timer; ``gridwatch db maintain`` runs it by hand.
With TimescaleDB, chunk creation and retention are the extension's own policies, so
there is nothing to do here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gridwatch.domain import DeviceKind
from storage import partitions
from storage.partitions import PartitionPolicy
from storage.schema import MS_PER_DAY, TABLES

if TYPE_CHECKING:
    from storage.engine import Storage


def partitioning_mode(conn: Any) -> str:
    row = conn.execute("SELECT value FROM storage_meta WHERE key = 'partitioning'").fetchone()
    return str(row[0]) if row else "none"


def maintain_with(conn: Any, dialect: str, now_ms: int, policy: PartitionPolicy) -> dict[str, Any]:
    """One maintenance pass on an open connection (inside the caller's transaction)."""
    if dialect == "postgres":
        mode = partitioning_mode(conn)
        if mode != "native":
            return {"created": [], "dropped": [], "mode": mode}
        return {**partitions.maintain(conn, now_ms, policy), "mode": mode}
    deleted = 0
    if policy.retention_days is not None:
        cutoff = (now_ms // MS_PER_DAY - policy.retention_days + 1) * MS_PER_DAY
        for kind in DeviceKind:
            cur = conn.execute(f"DELETE FROM {TABLES[kind].name} WHERE ts_ms < ?", (cutoff,))
            deleted += max(cur.rowcount, 0)
    if policy.rollup_retention_days is not None:
        cutoff = (now_ms // MS_PER_DAY - policy.rollup_retention_days + 1) * MS_PER_DAY
        for kind in DeviceKind:
            conn.execute(f"DELETE FROM {TABLES[kind].rollup} WHERE minute_ms < ?", (cutoff,))
    return {"deleted_rows": deleted, "mode": "none"}


def maintain(
    storage: Storage, now_ms: int, policy: PartitionPolicy | None = None
) -> dict[str, Any]:
    """Create partitions ahead and apply retention as of ``now_ms``; returns what changed."""
    with storage.connection() as conn:
        return maintain_with(conn, storage.dialect, now_ms, policy or PartitionPolicy())
