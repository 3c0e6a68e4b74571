"""Read-only SQL the console needs beyond ``alerts.service``: counts and the change feed.

These are thin functions over the alerts tables (``0002_alerts.sql``) that the alerts API
does not offer: grade counts for the board header, per-grid counts for the overview,
and the cursor queries the live feed polls. Every statement is a fixed text per dialect;
lists travel as one parameter (``= ANY(%s::text[])`` on PostgreSQL, ``json_each(?)`` on
SQLite), never spliced into the SQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from storage.engine import Storage

ACTIVE_STATES: Final = ("open", "acknowledged", "in_progress")

_COUNTS_PG: Final = """
SELECT grade, count(*) FROM alerts
WHERE state = ANY(%s::text[])
  AND (%s OR grid = ANY(%s::text[]) OR (grid IS NULL AND street = ANY(%s::text[])))
  AND (cardinality(%s::text[]) = 0 OR kind = ANY(%s::text[]))
  AND (%s::text IS NULL OR device_id = %s::text)
GROUP BY grade
"""
_COUNTS_SQLITE: Final = """
SELECT grade, count(*) FROM alerts
WHERE state IN (SELECT value FROM json_each(?))
  AND (? OR grid IN (SELECT value FROM json_each(?))
       OR (grid IS NULL AND street IN (SELECT value FROM json_each(?))))
  AND (json_array_length(?) = 0 OR kind IN (SELECT value FROM json_each(?)))
  AND (? IS NULL OR device_id = ?)
GROUP BY grade
"""


def _list(st: Storage, values: Sequence[str]) -> Any:
    return list(values) if st.dialect == "postgres" else orjson.dumps(list(values)).decode()


def grade_counts(
    st: Storage,
    *,
    grids: Sequence[str] | None,
    streets: Sequence[str],
    states: Sequence[str] = ACTIVE_STATES,
    kinds: Sequence[str] = (),
    device_id: str | None = None,
) -> dict[str, int]:
    """Alerts by grade within ``grids`` (None: all) plus street-wide alerts of ``streets``."""
    params = (
        _list(st, states),
        grids is None,
        _list(st, grids or ()),
        _list(st, streets),
        _list(st, kinds),
        _list(st, kinds),
        device_id,
        device_id,
    )
    with st.connection(readonly=True) as conn:
        rows = conn.execute(
            _COUNTS_PG if st.dialect == "postgres" else _COUNTS_SQLITE, params
        ).fetchall()
    return {str(g): int(n) for g, n in rows}


@dataclass(frozen=True, slots=True)
class GridCounts:
    """Open alerts by (grid, street, grade, state); grid None is a street-wide area alert."""

    rows: list[tuple[str | None, str, str, str, int]]
    open_tasks: dict[str, int]

    def by_grade(
        self, sees: Callable[[str | None, str], bool], states: Sequence[str] = ACTIVE_STATES
    ) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """(totals by grade, per grid by grade) of the rows ``sees(grid, street)`` accepts."""
        wanted = set(states)
        totals: dict[str, int] = {}
        per_grid: dict[str, dict[str, int]] = {}
        for grid, street, grade, state, n in self.rows:
            if state not in wanted or not sees(grid, street):
                continue
            totals[grade] = totals.get(grade, 0) + n
            if grid is not None:
                by = per_grid.setdefault(grid, {})
                by[grade] = by.get(grade, 0) + n
        return totals, per_grid


def grid_counts(st: Storage) -> GridCounts:
    """Every open alert counted per grid, street, grade and state; scope is the caller's.

    One grouped scan of an index for the whole district (at most grids x 9 rows) is
    cheaper than one query per tile, and filtering a few thousand tuples in Python keeps
    the SQL fixed.
    """
    with st.connection(readonly=True) as conn:
        rows = conn.execute(
            "SELECT grid, street, grade, state, count(*) FROM alerts WHERE state <> 'resolved' "
            "GROUP BY grid, street, grade, state"
        ).fetchall()
        tasks = conn.execute(
            "SELECT t.grid, count(*) FROM plan_tasks t "
            "JOIN plan_activations a ON a.id = t.activation_id "
            "WHERE a.state = 'active' AND t.acked_ms IS NULL GROUP BY t.grid"
        ).fetchall()
    return GridCounts(
        [(g, str(s), str(gr), str(state), int(n)) for g, s, gr, state, n in rows],
        {str(g): int(n) for g, n in tasks},
    )


class CountsCache:
    """``grid_counts`` reused while nothing changed: every board page and overview of every
    user needs it, and it changes only with a new audit event or plan task change.

    The key is the change token (four indexed maxima/counts, well under a millisecond);
    ``max_age_s`` bounds staleness from an event that committed after a later one.
    """

    def __init__(self, storage: Storage, max_age_s: float = 2.0) -> None:
        self.storage = storage
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._key: Token | None = None
        self._at = 0.0
        self._value: GridCounts | None = None
        self.hits = 0
        self.misses = 0

    def get(self) -> GridCounts:
        key = change_token(self.storage)
        now = time.monotonic()
        with self._lock:
            if self._value is not None and key == self._key and now - self._at < self.max_age_s:
                self.hits += 1
                return self._value
        value = grid_counts(self.storage)
        with self._lock:
            self._key, self._at, self._value = key, now, value
            self.misses += 1
        return value


# -- the change feed ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """Cheap fingerprint of everything the live views show; any change means "look closer"."""

    last_event: int
    last_task: int
    acked_tasks: int
    closed_plans: int

    def plans_part(self) -> tuple[int, int, int]:
        return (self.last_task, self.acked_tasks, self.closed_plans)


def change_token(st: Storage) -> Token:
    with st.connection(readonly=True) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(max(id), 0) FROM alert_events), "
            "(SELECT coalesce(max(id), 0) FROM plan_tasks), "
            "(SELECT count(acked_ms) FROM plan_tasks), "
            "(SELECT count(closed_ms) FROM plan_activations)"
        ).fetchone()
    return Token(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


EVENT_FIELDS: Final = (
    "event_id",
    "alert_id",
    "action",
    "to_state",
    "actor",
    "ts_ms",
    "grid",
    "street",
    "grade",
    "state",
    "kind",
    "device_id",
    "suggested_plan",
)


def events_after(st: Storage, after_id: int, limit: int) -> list[dict[str, Any]]:
    """Audit events newer than ``after_id`` with the alert's place and current grade."""
    with st.connection(readonly=True) as conn:
        rows = conn.execute(
            st.sql(
                "SELECT e.id, e.alert_id, e.action, e.to_state, e.actor, e.ts_ms, a.grid, "
                "a.street, a.grade, a.state, a.kind, a.device_id, a.suggested_plan "
                "FROM alert_events e JOIN alerts a ON a.id = e.alert_id "
                "WHERE e.id > %s ORDER BY e.id LIMIT %s"
            ),
            (after_id, limit),
        ).fetchall()
    return [dict(zip(EVENT_FIELDS, r, strict=True)) for r in rows]


@dataclass(frozen=True, slots=True)
class PlanState:
    state: str
    tasks: int
    acked: int


def plan_states(st: Storage, closed_since_ms: int) -> dict[int, PlanState]:
    """Active activations and those closed since ``closed_since_ms``: tasks and acks."""
    with st.connection(readonly=True) as conn:
        rows = conn.execute(
            st.sql(
                "SELECT a.id, a.state, count(t.id), count(t.acked_ms) FROM plan_activations a "
                "LEFT JOIN plan_tasks t ON t.activation_id = a.id "
                "WHERE a.state = 'active' OR a.closed_ms >= %s GROUP BY a.id, a.state"
            ),
            (closed_since_ms,),
        ).fetchall()
    return {int(i): PlanState(str(s), int(n), int(k)) for i, s, n, k in rows}


def plan_grids(st: Storage, activation_id: int) -> list[str]:
    with st.connection(readonly=True) as conn:
        rows = conn.execute(
            st.sql("SELECT grid FROM plan_tasks WHERE activation_id = %s ORDER BY grid"),
            (activation_id,),
        ).fetchall()
    return [str(r[0]) for r in rows]
