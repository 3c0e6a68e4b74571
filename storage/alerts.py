"""SQL for alerts, audit events, dispatch queues, silences, plans and the MQTT outbox.

The tables are created by ``migrations/*/0002_alerts.sql``. Functions take an open
connection (``with storage.connection() as conn``) so a caller can make several writes
one transaction: an alert, its audit event, its queue item and its outbox message
commit together or not at all. Statements are written once with ``%s`` placeholders;
only the queue claim and the batched updates differ per backend (``FOR UPDATE SKIP
LOCKED`` and ``unnest`` on PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``,
which ``Storage.connection()`` takes, so a plain SELECT-then-UPDATE is already exclusive).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import orjson

if TYPE_CHECKING:
    from storage.engine import Storage

ALERT_COLUMNS: Final = (
    "id",
    "dedup_key",
    "kind",
    "detection",
    "grade",
    "severity",
    "state",
    "resolution",
    "scope",
    "scope_id",
    "device_id",
    "street",
    "community",
    "grid",
    "building",
    "rule",
    "count",
    "first_seen_ms",
    "last_seen_ms",
    "value",
    "evidence",
    "suggested_plan",
    "opened_ms",
    "updated_ms",
    "graded_ms",
    "acked_ms",
    "acked_by",
    "resolved_ms",
    "resolved_by",
    "esc_step",
    "esc_due_ms",
)
_INSERT_COLUMNS: Final = ALERT_COLUMNS[1:]
EVENT_COLUMNS: Final = (
    "id",
    "alert_id",
    "ts_ms",
    "actor",
    "action",
    "from_state",
    "to_state",
    "grade",
    "note",
)
ITEM_COLUMNS: Final = (
    "id",
    "level",
    "queue",
    "item_kind",
    "group_key",
    "severity",
    "created_ms",
    "available_ms",
    "claimed_by",
    "claim_until_ms",
    "attempts",
    "done_ms",
    "done_by",
    "status",
    "alert_id",
    "activation_id",
    "payload",
)
SILENCE_COLUMNS: Final = (
    "id",
    "scope",
    "target",
    "alerts",
    "starts_ms",
    "ends_ms",
    "created_ms",
    "created_by",
    "reason",
    "revoked_ms",
    "revoked_by",
)
ACTIVATION_COLUMNS: Final = (
    "id",
    "plan",
    "area_level",
    "area_id",
    "state",
    "activated_ms",
    "activated_by",
    "note",
    "source_alert_id",
    "closed_ms",
    "closed_by",
    "close_note",
)
TASK_COLUMNS: Final = (
    "id",
    "activation_id",
    "grid",
    "item_id",
    "created_ms",
    "acked_ms",
    "acked_by",
    "note",
)
OPEN_STATES: Final = ("open", "acknowledged", "in_progress")
_CHUNK: Final = 400
"""Rows per multi-row INSERT: well under SQLite's 32,766 bound parameters at 30 columns."""


def _rows(cur: Any, columns: Sequence[str]) -> list[dict[str, Any]]:
    return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]


def _many(conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``executemany`` through a cursor: psycopg connections have no ``executemany``."""
    conn.cursor().executemany(sql, rows)


PG_TYPES: Final = {
    "id": "bigint",
    "alert_id": "bigint",
    "item_id": "bigint",
    "activation_id": "bigint",
    "severity": "smallint",
    "esc_step": "smallint",
    "count": "bigint",
    "value": "float8",
}
"""PostgreSQL array types for ``unnest`` inserts; columns ending in ``_ms`` are bigint and
everything else is text."""


def _ph(values: Sequence[Any]) -> str:
    """Binary parameters for arrays: psycopg builds text-format arrays in Python, character
    by character, which made JSON payload arrays ~15x slower. A column of only NULLs has
    no type to send in binary, so it goes as text."""
    return "%s" if all(v is None for v in values) else "%b"


def _pg_type(col: str) -> str:
    return "bigint" if col.endswith("_ms") else PG_TYPES.get(col, "text")


def insert_rows(
    conn: Any,
    st: Storage,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    suffix: str = "",
) -> list[tuple[Any, ...]]:
    """Insert many rows in a few round trips; ``suffix`` is appended to the statement
    (``ON CONFLICT ...``, ``RETURNING ...``) and any returned rows come back in no promised
    order.

    PostgreSQL gets one ``INSERT ... SELECT FROM unnest(array, ...)`` per chunk: a handful of
    array parameters instead of thousands of scalars, which is several times faster to
    send and to plan than a multi-row VALUES list. SQLite gets multi-row VALUES.
    """
    out: list[tuple[Any, ...]] = []
    if not rows:
        return out
    cols = ", ".join(columns)
    if st.dialect == "postgres":
        for i in range(0, len(rows), 5_000):
            arrays = [list(col) for col in zip(*rows[i : i + 5_000], strict=True)]
            phs = ", ".join(
                f"{_ph(a)}::{_pg_type(c)}[]" for c, a in zip(columns, arrays, strict=True)
            )
            sql = f"INSERT INTO {table} ({cols}) SELECT * FROM unnest({phs})"
            sql += f" {suffix}" if suffix else ""
            cur = conn.execute(sql, arrays)
            if "RETURNING" in suffix:
                out += [tuple(r) for r in cur.fetchall()]
        return out
    one = "(" + ", ".join(["?"] * len(columns)) + ")"
    per = max(1, min(_CHUNK, 30_000 // max(1, len(columns))))
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        sql = f"INSERT INTO {table} ({cols}) VALUES {', '.join([one] * len(chunk))}"
        sql += f" {suffix}" if suffix else ""
        cur = conn.execute(sql, [v for r in chunk for v in r])
        if "RETURNING" in suffix:
            out += [tuple(r) for r in cur.fetchall()]
    return out


def _q(st: Storage, sql: str) -> str:
    return st.sql(sql)


def dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# -- alerts -----------------------------------------------------------------------------


def insert_alerts(
    conn: Any, st: Storage, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[int, bool]]:
    """Insert alerts; per row ``(id, created)``. A row whose dedup key already has an open
    alert is not inserted: the open alert's id comes back with ``created=False``."""
    if not rows:
        return []
    out: dict[str, tuple[int, bool]] = {}
    back = insert_rows(
        conn,
        st,
        "alerts",
        _INSERT_COLUMNS,
        [[r[c] for c in _INSERT_COLUMNS] for r in rows],
        suffix="ON CONFLICT (dedup_key) WHERE state <> 'resolved' DO NOTHING "
        "RETURNING id, dedup_key",
    )
    for aid, key in back:
        out[key] = (int(aid), True)
    missing = [r["dedup_key"] for r in rows if r["dedup_key"] not in out]
    for i in range(0, len(missing), _CHUNK):
        chunk = missing[i : i + _CHUNK]
        marks = ", ".join(["%s"] * len(chunk))
        cur = conn.execute(
            _q(
                st,
                f"SELECT id, dedup_key FROM alerts WHERE state <> 'resolved' "
                f"AND dedup_key IN ({marks})",
            ),
            chunk,
        )
        for aid, key in cur.fetchall():
            out[key] = (int(aid), False)
    return [out[r["dedup_key"]] for r in rows]


def get_alert(
    conn: Any, st: Storage, alert_id: int, *, lock: bool = False
) -> dict[str, Any] | None:
    sql = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE id = %s"
    if lock and st.dialect == "postgres":
        sql += " FOR UPDATE"
    rows = _rows(conn.execute(_q(st, sql), (alert_id,)), ALERT_COLUMNS)
    return rows[0] if rows else None


def apply_updates(
    conn: Any,
    st: Storage,
    *,
    alert_id: npt.NDArray[np.int64],
    count_delta: npt.NDArray[np.int64],
    last_seen_ms: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    now_ms: int,
) -> list[int]:
    """Write-behind of dedup counts; returns the ids NOT updated (resolved meanwhile)."""
    if alert_id.size == 0:
        return []
    vals = [None if np.isnan(v) else float(v) for v in value.tolist()]
    if st.dialect == "postgres":
        cur = conn.execute(
            "UPDATE alerts a SET count = a.count + u.d, "
            "last_seen_ms = GREATEST(a.last_seen_ms, u.ls), value = COALESCE(u.v, a.value), "
            "updated_ms = %s "
            "FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %s::float8[]) "
            "AS u(id, d, ls, v) "
            "WHERE a.id = u.id AND a.state <> 'resolved' RETURNING a.id",
            (now_ms, alert_id.tolist(), count_delta.tolist(), last_seen_ms.tolist(), vals),
        )
        done = {int(r[0]) for r in cur.fetchall()}
    else:
        _many(
            conn,
            "UPDATE alerts SET count = count + ?, last_seen_ms = max(last_seen_ms, ?), "
            "value = coalesce(?, value), updated_ms = ? WHERE id = ? AND state <> 'resolved'",
            [
                (d, ls, v, now_ms, a)
                for a, d, ls, v in zip(
                    alert_id.tolist(),
                    count_delta.tolist(),
                    last_seen_ms.tolist(),
                    vals,
                    strict=True,
                )
            ],
        )
        done = set(alert_id.tolist()) - set(resolved_among(conn, st, alert_id.tolist()))
    return [a for a in alert_id.tolist() if a not in done]


def resolved_among(conn: Any, st: Storage, ids: Sequence[int]) -> list[int]:
    out: list[int] = []
    for i in range(0, len(ids), _CHUNK):
        chunk = list(ids[i : i + _CHUNK])
        marks = ", ".join(["%s"] * len(chunk))
        cur = conn.execute(
            _q(st, f"SELECT id FROM alerts WHERE state = 'resolved' AND id IN ({marks})"), chunk
        )
        out += [int(r[0]) for r in cur.fetchall()]
    return out


def upgrade_alert(
    conn: Any,
    st: Storage,
    *,
    alert_id: int,
    grade: str,
    severity: int,
    value: float | None,
    evidence: Mapping[str, Any],
    now_ms: int,
    esc_due_ms: int | None,
) -> bool:
    """Raise an open alert's grade (never lowers it); restarts its escalation timer."""
    cur = conn.execute(
        _q(
            st,
            "UPDATE alerts SET grade = %s, severity = %s, value = %s, evidence = %s, "
            "graded_ms = %s, updated_ms = %s, esc_step = 0, esc_due_ms = %s "
            "WHERE id = %s AND state <> 'resolved' AND severity < %s RETURNING id",
        ),
        (grade, severity, value, dumps(evidence), now_ms, now_ms, esc_due_ms, alert_id, severity),
    )
    return cur.fetchone() is not None


def upgrade_many(
    conn: Any,
    st: Storage,
    upgrades: Sequence[tuple[int, str, int, float | None, str, int | None]],
    now_ms: int,
) -> list[dict[str, Any]]:
    """Raise grades of open alerts: (id, grade, severity, value, evidence JSON, esc_due_ms).
    Never lowers a grade; restarts the escalation timer. Returns the updated rows."""
    if not upgrades:
        return []
    cols = ", ".join(f"a.{c}" for c in ALERT_COLUMNS)
    if st.dialect == "postgres":
        cur = conn.execute(
            "UPDATE alerts a SET grade = u.g, severity = u.s, value = u.v, evidence = u.e, "
            "graded_ms = %s, updated_ms = %s, esc_step = 0, esc_due_ms = u.due "
            "FROM unnest(%b::bigint[], %b::text[], %b::smallint[], %s::float8[], %b::text[], "
            "%s::bigint[]) AS u(id, g, s, v, e, due) "
            f"WHERE a.id = u.id AND a.state <> 'resolved' AND a.severity < u.s RETURNING {cols}",
            [now_ms, now_ms, *[list(c) for c in zip(*upgrades, strict=True)]],
        )
        return _rows(cur, ALERT_COLUMNS)
    out: list[dict[str, Any]] = []
    for aid, grade, sev, value, evidence, due in upgrades:
        cur = conn.execute(
            "UPDATE alerts SET grade = ?, severity = ?, value = ?, evidence = ?, graded_ms = ?, "
            "updated_ms = ?, esc_step = 0, esc_due_ms = ? "
            "WHERE id = ? AND state <> 'resolved' AND severity < ? "
            f"RETURNING {', '.join(ALERT_COLUMNS)}",
            (grade, sev, value, evidence, now_ms, now_ms, due, aid, sev),
        )
        out += _rows(cur, ALERT_COLUMNS)
    return out


def close_alert(
    conn: Any,
    st: Storage,
    alert_id: int,
    *,
    resolution: str,
    actor: str,
    now_ms: int,
    count_delta: int = 0,
    last_seen_ms: int | None = None,
) -> str | None:
    """Resolve an alert unless already resolved; returns its previous state (None if none)."""
    row = conn.execute(
        _q(
            st,
            "SELECT state FROM alerts WHERE id = %s"
            + (" FOR UPDATE" if st.dialect == "postgres" else ""),
        ),
        (alert_id,),
    ).fetchone()
    if row is None or row[0] == "resolved":
        return None
    conn.execute(
        _q(
            st,
            "UPDATE alerts SET state = 'resolved', resolution = %s, resolved_ms = %s, "
            "resolved_by = %s, updated_ms = %s, count = count + %s, "
            "last_seen_ms = CASE WHEN %s > last_seen_ms THEN %s ELSE last_seen_ms END, "
            "esc_due_ms = NULL WHERE id = %s",
        ),
        (
            resolution,
            now_ms,
            actor,
            now_ms,
            count_delta,
            last_seen_ms or 0,
            last_seen_ms or 0,
            alert_id,
        ),
    )
    return str(row[0])


def close_many(
    conn: Any,
    st: Storage,
    clears: Sequence[tuple[int, int, int]],
    *,
    resolution: str,
    actor: str,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Resolve many alerts given as (id, count_delta, last_seen_ms); returns the rows as they
    were before (only those that were not resolved yet)."""
    if not clears:
        return []
    ids = [c[0] for c in clears]
    before: list[dict[str, Any]] = []
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        sql = (
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE state <> 'resolved' "
            f"AND id IN ({', '.join(['%s'] * len(chunk))}) ORDER BY id"
        )
        if st.dialect == "postgres":
            sql += " FOR UPDATE"
        before += _rows(conn.execute(_q(st, sql), chunk), ALERT_COLUMNS)
    live = {r["id"] for r in before}
    todo = [c for c in clears if c[0] in live]
    if st.dialect == "postgres" and todo:
        conn.execute(
            "UPDATE alerts a SET state = 'resolved', resolution = %s, resolved_ms = %s, "
            "resolved_by = %s, updated_ms = %s, count = a.count + u.d, "
            "last_seen_ms = GREATEST(a.last_seen_ms, u.ls), esc_due_ms = NULL "
            "FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[]) AS u(id, d, ls) "
            "WHERE a.id = u.id",
            (
                resolution,
                now_ms,
                actor,
                now_ms,
                [c[0] for c in todo],
                [c[1] for c in todo],
                [c[2] for c in todo],
            ),
        )
    elif todo:
        _many(
            conn,
            "UPDATE alerts SET state = 'resolved', resolution = ?, resolved_ms = ?, "
            "resolved_by = ?, updated_ms = ?, count = count + ?, "
            "last_seen_ms = max(last_seen_ms, ?), esc_due_ms = NULL WHERE id = ?",
            [(resolution, now_ms, actor, now_ms, d, ls, a) for a, d, ls in todo],
        )
    return before


def set_state(
    conn: Any,
    st: Storage,
    alert_id: int,
    *,
    to_state: str,
    from_states: Sequence[str],
    actor: str,
    now_ms: int,
) -> str | None:
    """Move an alert between lifecycle states; None when it is not in ``from_states``."""
    row = conn.execute(
        _q(
            st,
            "SELECT state FROM alerts WHERE id = %s"
            + (" FOR UPDATE" if st.dialect == "postgres" else ""),
        ),
        (alert_id,),
    ).fetchone()
    if row is None or row[0] not in from_states:
        return None
    extra = ""
    params: list[Any] = [to_state, now_ms]
    if to_state == "acknowledged" or (to_state == "in_progress" and row[0] == "open"):
        extra = ", acked_ms = %s, acked_by = %s, esc_due_ms = NULL"
        params += [now_ms, actor]
    params.append(alert_id)
    conn.execute(
        _q(st, f"UPDATE alerts SET state = %s, updated_ms = %s{extra} WHERE id = %s"), params
    )
    return str(row[0])


def add_events(conn: Any, st: Storage, events: Sequence[Sequence[Any]]) -> None:
    """Audit events as (alert_id, ts_ms, actor, action, from_state, to_state, grade, note)."""
    insert_rows(conn, st, "alert_events", EVENT_COLUMNS[1:], events)


def events_of(conn: Any, st: Storage, alert_id: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        _q(
            st,
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM alert_events WHERE alert_id = %s ORDER BY id",
        ),
        (alert_id,),
    )
    return _rows(cur, EVENT_COLUMNS)


def list_alerts(
    conn: Any,
    st: Storage,
    *,
    grids: Sequence[str] | None,
    streets: Sequence[str] | None,
    grades: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    device_id: str | None = None,
    after: tuple[int, int, int] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Alerts ordered red -> green, newest first; keyset pagination on (severity, opened, id).

    ``grids=None`` means every grid. Street-wide alerts (no grid) are included for the
    ``streets`` given (a grid dispatcher sees their street's area alerts).
    """
    where: list[str] = []
    params: list[Any] = []

    def among(col: str, values: Sequence[Any]) -> str:
        params.extend(values)
        return f"{col} IN ({', '.join(['%s'] * len(values))})" if values else "1 = 0"

    if grids is not None:
        scope = [among("grid", list(grids))]
        if streets:
            scope.append(f"(grid IS NULL AND {among('street', list(streets))})")
        where.append("(" + " OR ".join(scope) + ")")
    if grades:
        where.append(among("grade", list(grades)))
    if states:
        where.append(among("state", list(states)))
    if kinds:
        where.append(among("kind", list(kinds)))
    if device_id:
        where.append("device_id = %s")
        params.append(device_id)
    if after is not None:
        where.append(
            "(severity < %s OR (severity = %s AND "
            "(opened_ms < %s OR (opened_ms = %s AND id < %s))))"
        )
        s, o, i = after
        params += [s, s, o, o, i]
    sql = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY severity DESC, opened_ms DESC, id DESC LIMIT %s"
    params.append(limit)
    return _rows(conn.execute(_q(st, sql), params), ALERT_COLUMNS)


def open_alerts(conn: Any, st: Storage) -> list[dict[str, Any]]:
    cur = conn.execute(
        _q(
            st,
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE state <> 'resolved' ORDER BY id",
        )
    )
    return _rows(cur, ALERT_COLUMNS)


def resolved_since(conn: Any, st: Storage, since_ms: int) -> list[tuple[int, int]]:
    """(id, resolved_ms) of alerts resolved at or after ``since_ms``."""
    cur = conn.execute(
        _q(st, "SELECT id, resolved_ms FROM alerts WHERE resolved_ms >= %s ORDER BY resolved_ms"),
        (since_ms,),
    )
    return [(int(a), int(t)) for a, t in cur.fetchall()]


def count_alerts(conn: Any, st: Storage, *, grid: str | None = None) -> dict[tuple[str, str], int]:
    """Counts by (state, grade), optionally for one grid."""
    sql = "SELECT state, grade, count(*) FROM alerts"
    params: list[Any] = []
    if grid is not None:
        sql += " WHERE grid = %s"
        params.append(grid)
    sql += " GROUP BY state, grade"
    return {(s, g): int(n) for s, g, n in conn.execute(_q(st, sql), params).fetchall()}


# -- escalation -------------------------------------------------------------------------


def due_escalations(conn: Any, st: Storage, now_ms: int, limit: int = 500) -> list[dict[str, Any]]:
    """Open alerts whose escalation timer expired, locked for this transaction."""
    sql = (
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE esc_due_ms IS NOT NULL "
        "AND esc_due_ms <= %s AND state = 'open' ORDER BY esc_due_ms LIMIT %s"
    )
    if st.dialect == "postgres":
        sql += " FOR UPDATE SKIP LOCKED"
    return _rows(conn.execute(_q(st, sql), (now_ms, limit)), ALERT_COLUMNS)


def set_escalation(conn: Any, st: Storage, alert_id: int, step: int, due_ms: int | None) -> None:
    conn.execute(
        _q(st, "UPDATE alerts SET esc_step = %s, esc_due_ms = %s WHERE id = %s"),
        (step, due_ms, alert_id),
    )


# -- dispatch queue ---------------------------------------------------------------------


def enqueue(
    conn: Any,
    st: Storage,
    *,
    level: str,
    queue: str,
    item_kind: str,
    severity: int,
    now_ms: int,
    payload: Mapping[str, Any],
    available_ms: int | None = None,
    group_key: str | None = None,
    alert_ids: Sequence[int] = (),
    activation_id: int | None = None,
) -> int:
    """Add one queue item (and its alert links); returns its id."""
    cur = conn.execute(
        _q(
            st,
            "INSERT INTO dispatch_queue (level, queue, item_kind, group_key, severity, created_ms, "
            "available_ms, alert_id, activation_id, payload) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        ),
        (
            level,
            queue,
            item_kind,
            group_key,
            severity,
            now_ms,
            now_ms if available_ms is None else available_ms,
            alert_ids[0] if len(alert_ids) == 1 else None,
            activation_id,
            dumps(payload),
        ),
    )
    item_id = int(cur.fetchone()[0])
    link_alerts(conn, st, item_id, alert_ids)
    return item_id


def link_alerts(conn: Any, st: Storage, item_id: int, alert_ids: Iterable[int]) -> None:
    add_links(conn, st, [(item_id, a) for a in alert_ids])


def add_links(conn: Any, st: Storage, links: Sequence[tuple[int, int]]) -> None:
    """(item_id, alert_id) pairs: which alerts a queue item notifies."""
    insert_rows(
        conn,
        st,
        "dispatch_item_alerts",
        ("item_id", "alert_id"),
        links,
        suffix="ON CONFLICT DO NOTHING",
    )


_ENQUEUE_COLUMNS: Final = (
    "level",
    "queue",
    "item_kind",
    "group_key",
    "severity",
    "created_ms",
    "available_ms",
    "alert_id",
    "activation_id",
    "payload",
)


def enqueue_many(conn: Any, st: Storage, items: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert queue items that each carry an ``alert_id`` (their first alert); ids in order.

    (level, queue, alert_id) is unique within one call, which maps the returned ids back
    without relying on RETURNING order (SQLite does not promise one).
    """
    rows = [
        (
            it["level"],
            it["queue"],
            it["item_kind"],
            it.get("group_key"),
            it["severity"],
            it["created_ms"],
            it["available_ms"],
            it["alert_id"],
            None,
            dumps(it["payload"]),
        )
        for it in items
    ]
    back = insert_rows(
        conn,
        st,
        "dispatch_queue",
        _ENQUEUE_COLUMNS,
        rows,
        suffix="RETURNING id, level, queue, alert_id",
    )
    ids = {(lv, q, int(a)): int(i) for i, lv, q, a in back}
    return [ids[(it["level"], it["queue"], int(it["alert_id"]))] for it in items]


def open_group_item(
    conn: Any, st: Storage, *, level: str, queue: str, group_key: str, now_ms: int
) -> tuple[int, int] | None:
    """The group's item that is still waiting (not yet available): (id, available_ms)."""
    sql = (
        "SELECT id, available_ms FROM dispatch_queue WHERE level = %s AND queue = %s "
        "AND group_key = %s AND status = 'ready' AND available_ms > %s AND claimed_by IS NULL "
        "ORDER BY id DESC LIMIT 1"
    )
    if st.dialect == "postgres":
        sql += " FOR UPDATE"
    row = conn.execute(_q(st, sql), (level, queue, group_key, now_ms)).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def last_group_available(
    conn: Any, st: Storage, level: str, queue: str, group_key: str
) -> int | None:
    row = conn.execute(
        _q(
            st,
            "SELECT max(available_ms) FROM dispatch_queue WHERE level = %s AND queue = %s "
            "AND group_key = %s",
        ),
        (level, queue, group_key),
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def claim(
    conn: Any,
    st: Storage,
    *,
    level: str,
    queue: str,
    consumer: str,
    now_ms: int,
    lease_ms: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` items in (grade, time) order; a lapsed lease counts as free."""
    cols = ", ".join(f"d.{c}" for c in ITEM_COLUMNS)
    if st.dialect == "postgres":
        sql = (
            "WITH c AS (SELECT id FROM dispatch_queue WHERE level = %s AND queue = %s "
            "AND status = 'ready' AND available_ms <= %s "
            "AND (claim_until_ms IS NULL OR claim_until_ms < %s) "
            "ORDER BY severity DESC, created_ms, id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE dispatch_queue d SET claimed_by = %s, claim_until_ms = %s, "
            f"attempts = d.attempts + 1 FROM c WHERE d.id = c.id RETURNING {cols}"
        )
        cur = conn.execute(sql, (level, queue, now_ms, now_ms, limit, consumer, now_ms + lease_ms))
        rows = _rows(cur, ITEM_COLUMNS)
    else:
        ids = [
            int(r[0])
            for r in conn.execute(
                "SELECT id FROM dispatch_queue WHERE level = ? AND queue = ? AND status = 'ready' "
                "AND available_ms <= ? AND (claim_until_ms IS NULL OR claim_until_ms < ?) "
                "ORDER BY severity DESC, created_ms, id LIMIT ?",
                (level, queue, now_ms, now_ms, limit),
            ).fetchall()
        ]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        conn.execute(
            "UPDATE dispatch_queue SET claimed_by = ?, claim_until_ms = ?, "
            "attempts = attempts + 1 "
            f"WHERE id IN ({marks})",
            (consumer, now_ms + lease_ms, *ids),
        )
        cur = conn.execute(f"SELECT {cols} FROM dispatch_queue d WHERE id IN ({marks})", ids)
        rows = _rows(cur, ITEM_COLUMNS)
    rows.sort(key=lambda r: (-r["severity"], r["created_ms"], r["id"]))
    links = item_alerts(conn, st, [r["id"] for r in rows])
    for r in rows:
        r["alert_ids"] = links.get(r["id"], [])
    return rows


def item_alerts(conn: Any, st: Storage, item_ids: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    if not item_ids:
        return out
    marks = ", ".join(["%s"] * len(item_ids))
    cur = conn.execute(
        _q(
            st,
            f"SELECT item_id, alert_id FROM dispatch_item_alerts WHERE item_id IN ({marks}) "
            "ORDER BY item_id, alert_id",
        ),
        list(item_ids),
    )
    for item, alert in cur.fetchall():
        out.setdefault(int(item), []).append(int(alert))
    return out


def ack_items(
    conn: Any, st: Storage, item_ids: Sequence[int], consumer: str, now_ms: int
) -> list[int]:
    """Mark claimed items done; returns the ids acked (only this consumer's live claims)."""
    done = []
    for item_id in item_ids:
        row = conn.execute(
            _q(
                st,
                "UPDATE dispatch_queue SET status = 'done', done_ms = %s, done_by = %s "
                "WHERE id = %s AND claimed_by = %s AND status = 'ready' RETURNING id",
            ),
            (now_ms, consumer, item_id, consumer),
        ).fetchone()
        if row:
            done.append(int(row[0]))
    return done


def release_items(conn: Any, st: Storage, item_ids: Sequence[int], consumer: str) -> int:
    """Give claimed items back at once (a consumer shutting down cleanly)."""
    n = 0
    for item_id in item_ids:
        cur = conn.execute(
            _q(
                st,
                "UPDATE dispatch_queue SET claimed_by = NULL, claim_until_ms = NULL "
                "WHERE id = %s AND claimed_by = %s AND status = 'ready'",
            ),
            (item_id, consumer),
        )
        n += max(cur.rowcount, 0)
    return n


def cancel_items(conn: Any, st: Storage, item_ids: Sequence[int], actor: str, now_ms: int) -> None:
    for item_id in item_ids:
        conn.execute(
            _q(
                st,
                "UPDATE dispatch_queue SET status = 'cancelled', done_ms = %s, done_by = %s "
                "WHERE id = %s AND status = 'ready'",
            ),
            (now_ms, actor, item_id),
        )


def queue_depths(
    conn: Any,
    st: Storage,
    now_ms: int,
    *,
    level: str | None = None,
    queues: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per queue: items ready now, claimed (leased), and waiting (group_wait not over)."""
    where = ["status = 'ready'"]
    params: list[Any] = [now_ms, now_ms, now_ms, now_ms]
    if level is not None:
        where.append("level = %s")
        params.append(level)
    if queues is not None:
        if not queues:
            return []
        where.append(f"queue IN ({', '.join(['%s'] * len(queues))})")
        params += list(queues)
    sql = (
        "SELECT level, queue, "
        "sum(CASE WHEN available_ms <= %s AND (claim_until_ms IS NULL OR claim_until_ms < %s) "
        "THEN 1 ELSE 0 END), "
        "sum(CASE WHEN claim_until_ms IS NOT NULL AND claim_until_ms >= %s THEN 1 ELSE 0 END), "
        "sum(CASE WHEN available_ms > %s THEN 1 ELSE 0 END), "
        "max(severity) FROM dispatch_queue WHERE "
        + " AND ".join(where)
        + " GROUP BY level, queue ORDER BY level, queue"
    )
    return [
        {
            "level": lv,
            "queue": q,
            "ready": int(r or 0),
            "claimed": int(c or 0),
            "waiting": int(w or 0),
            "max_severity": int(m),
        }
        for lv, q, r, c, w, m in conn.execute(_q(st, sql), params).fetchall()
    ]


def get_items(conn: Any, st: Storage, *, activation_id: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        _q(
            st,
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM dispatch_queue "
            "WHERE activation_id = %s ORDER BY id",
        ),
        (activation_id,),
    )
    return _rows(cur, ITEM_COLUMNS)


# -- silences ---------------------------------------------------------------------------


def add_silence(conn: Any, st: Storage, row: Mapping[str, Any]) -> int:
    cur = conn.execute(
        _q(
            st,
            "INSERT INTO silences (scope, target, alerts, starts_ms, ends_ms, created_ms, "
            "created_by, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        ),
        (
            row["scope"],
            row["target"],
            ",".join(row.get("alerts") or ()),
            row["starts_ms"],
            row["ends_ms"],
            row["created_ms"],
            row["created_by"],
            row["reason"],
        ),
    )
    return int(cur.fetchone()[0])


def revoke_silence(conn: Any, st: Storage, silence_id: int, actor: str, now_ms: int) -> bool:
    cur = conn.execute(
        _q(
            st,
            "UPDATE silences SET revoked_ms = %s, revoked_by = %s, ends_ms = "
            "CASE WHEN ends_ms > %s AND starts_ms < %s THEN %s ELSE ends_ms END "
            "WHERE id = %s AND revoked_ms IS NULL RETURNING id",
        ),
        (now_ms, actor, now_ms, now_ms, now_ms, silence_id),
    )
    return cur.fetchone() is not None


def silences(conn: Any, st: Storage, *, active_at_ms: int | None = None) -> list[dict[str, Any]]:
    """Silences not revoked; with ``active_at_ms``, those not yet over at that time."""
    sql = f"SELECT {', '.join(SILENCE_COLUMNS)} FROM silences WHERE revoked_ms IS NULL"
    params: list[Any] = []
    if active_at_ms is not None:
        sql += " AND ends_ms > %s"
        params.append(active_at_ms)
    sql += " ORDER BY id"
    rows = _rows(conn.execute(_q(st, sql), params), SILENCE_COLUMNS)
    for r in rows:
        r["alerts"] = [a for a in r["alerts"].split(",") if a]
    return rows


# -- plans ------------------------------------------------------------------------------


def active_activation(
    conn: Any, st: Storage, plan: str, area_level: str, area_id: str
) -> dict[str, Any] | None:
    cur = conn.execute(
        _q(
            st,
            f"SELECT {', '.join(ACTIVATION_COLUMNS)} FROM plan_activations WHERE plan = %s "
            "AND area_level = %s AND area_id = %s AND state = 'active'",
        ),
        (plan, area_level, area_id),
    )
    rows = _rows(cur, ACTIVATION_COLUMNS)
    return rows[0] if rows else None


def insert_activation(conn: Any, st: Storage, row: Mapping[str, Any]) -> int | None:
    """A new active activation; None when one is already active for (plan, area)."""
    cur = conn.execute(
        _q(
            st,
            "INSERT INTO plan_activations (plan, area_level, area_id, state, activated_ms, "
            "activated_by, note, source_alert_id) VALUES (%s, %s, %s, 'active', %s, %s, %s, %s) "
            "ON CONFLICT (plan, area_level, area_id) WHERE state = 'active' "
            "DO NOTHING RETURNING id",
        ),
        (
            row["plan"],
            row["area_level"],
            row["area_id"],
            row["activated_ms"],
            row["activated_by"],
            row.get("note"),
            row.get("source_alert_id"),
        ),
    )
    r = cur.fetchone()
    return int(r[0]) if r else None


def get_activation(conn: Any, st: Storage, activation_id: int) -> dict[str, Any] | None:
    cur = conn.execute(
        _q(st, f"SELECT {', '.join(ACTIVATION_COLUMNS)} FROM plan_activations WHERE id = %s"),
        (activation_id,),
    )
    rows = _rows(cur, ACTIVATION_COLUMNS)
    return rows[0] if rows else None


def list_activations(conn: Any, st: Storage, *, state: str | None = None) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(ACTIVATION_COLUMNS)} FROM plan_activations"
    params: list[Any] = []
    if state:
        sql += " WHERE state = %s"
        params.append(state)
    return _rows(conn.execute(_q(st, sql + " ORDER BY id DESC"), params), ACTIVATION_COLUMNS)


def close_activation(
    conn: Any, st: Storage, *, activation_id: int, actor: str, note: str | None, now_ms: int
) -> bool:
    cur = conn.execute(
        _q(
            st,
            "UPDATE plan_activations SET state = 'closed', closed_ms = %s, closed_by = %s, "
            "close_note = %s WHERE id = %s AND state = 'active' RETURNING id",
        ),
        (now_ms, actor, note, activation_id),
    )
    return cur.fetchone() is not None


def insert_task(
    conn: Any, st: Storage, *, activation_id: int, grid: str, item_id: int, now_ms: int
) -> bool:
    cur = conn.execute(
        _q(
            st,
            "INSERT INTO plan_tasks (activation_id, grid, item_id, created_ms) "
            "VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (activation_id, grid) DO NOTHING RETURNING id",
        ),
        (activation_id, grid, item_id, now_ms),
    )
    return cur.fetchone() is not None


def tasks_of(conn: Any, st: Storage, activation_id: int) -> list[dict[str, Any]]:
    cur = conn.execute(
        _q(
            st,
            f"SELECT {', '.join(TASK_COLUMNS)} FROM plan_tasks "
            "WHERE activation_id = %s ORDER BY grid",
        ),
        (activation_id,),
    )
    return _rows(cur, TASK_COLUMNS)


def ack_task(
    conn: Any,
    st: Storage,
    *,
    activation_id: int,
    grid: str,
    actor: str,
    note: str | None,
    now_ms: int,
) -> bool:
    cur = conn.execute(
        _q(
            st,
            "UPDATE plan_tasks SET acked_ms = %s, acked_by = %s, note = %s "
            "WHERE activation_id = %s AND grid = %s AND acked_ms IS NULL RETURNING id",
        ),
        (now_ms, actor, note, activation_id, grid),
    )
    return cur.fetchone() is not None


# -- MQTT outbox ------------------------------------------------------------------------


def add_outbox(conn: Any, st: Storage, rows: Sequence[tuple[int, str, str, str]]) -> None:
    """Messages as (created_ms, grid, grade, payload JSON)."""
    insert_rows(conn, st, "alert_outbox", ("created_ms", "grid", "grade", "payload"), rows)


def outbox(conn: Any, st: Storage, limit: int) -> list[tuple[int, str, str, str]]:
    cur = conn.execute(
        _q(st, "SELECT id, grid, grade, payload FROM alert_outbox ORDER BY id LIMIT %s"), (limit,)
    )
    return [(int(i), str(g), str(gr), str(p)) for i, g, gr, p in cur.fetchall()]


def delete_outbox(conn: Any, st: Storage, ids: Sequence[int]) -> None:
    for i in range(0, len(ids), _CHUNK):
        chunk = list(ids[i : i + _CHUNK])
        conn.execute(
            _q(st, f"DELETE FROM alert_outbox WHERE id IN ({', '.join(['%s'] * len(chunk))})"),
            chunk,
        )
