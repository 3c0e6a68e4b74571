"""Dead letters kept durably: what ingest refused, with the reason, listable by reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gridwatch.deadletter import DeadLetter

if TYPE_CHECKING:
    from storage.engine import Storage

_INSERT = (
    "INSERT INTO dead_letters (received_ms, topic, reason, rows, detail, excerpt) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)


def write_dead_letters(storage: Storage, letters: Sequence[DeadLetter]) -> int:
    """Store dead letters in one transaction; returns how many were written."""
    if not letters:
        return 0
    params = [
        (d.received_ms, d.topic, d.reason, d.rows, d.detail, bytes(d.excerpt)) for d in letters
    ]
    with storage.connection() as conn:
        if storage.dialect == "postgres":
            with conn.cursor() as cur:
                cur.executemany(_INSERT, params)
        else:
            conn.executemany(storage.sql(_INSERT), params)
    return len(params)


def dead_letters(
    storage: Storage,
    *,
    reason: str | None = None,
    since_ms: int | None = None,
    limit: int = 100,
) -> list[DeadLetter]:
    """Newest first, optionally one reason and only those received at or after ``since_ms``."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    where, params = _filters(reason, since_ms)
    query = (
        "SELECT topic, reason, excerpt, received_ms, rows, detail FROM dead_letters"
        f"{where} ORDER BY received_ms DESC, id DESC LIMIT %s"
    )
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(storage.sql(query), (*params, limit)).fetchall()
    return [
        DeadLetter(str(t), str(r), bytes(e), int(ms), int(n), str(d)) for t, r, e, ms, n, d in rows
    ]


def dead_letter_counts(
    storage: Storage, *, since_ms: int | None = None
) -> dict[str, tuple[int, int]]:
    """``reason -> (records, rows)``, most records first."""
    where, params = _filters(None, since_ms)
    query = (
        f"SELECT reason, count(*), sum(rows) FROM dead_letters{where} "
        "GROUP BY reason ORDER BY count(*) DESC, reason"
    )
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(storage.sql(query), params).fetchall()
    return {str(r): (int(c), int(n)) for r, c, n in rows}


def _filters(reason: str | None, since_ms: int | None) -> tuple[str, tuple[object, ...]]:
    clauses: list[str] = []
    params: list[object] = []
    if reason is not None:
        clauses.append("reason = %s")
        params.append(reason)
    if since_ms is not None:
        clauses.append("received_ms >= %s")
        params.append(int(since_ms))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
