"""From rule changes to durable alerts, audit events, dispatch-queue items and MQTT messages.

What is durable before ``handle()`` returns (one transaction per batch): every new alert,
grade upgrade and auto-clear, with its audit event, its queue items and its MQTT outbox
message. A crash after that loses nothing a dispatcher must see. Dedup updates of alerts
that are already open (count, last seen, latest value) are written behind, batched every
``flush_interval_s`` (2 s): a crash may lose at most that much of a counter, never an alert.
That split is what lets a detection storm of mostly repeats run at tens of thousands of
detections per second on a 2-core machine.

If the database refuses a write, the changes stay in a backlog that the next ``handle()``
or ``tick()`` writes first, and the error propagates so the caller knows the batch is not
durable yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gridwatch.batch import Detections
from gridwatch.clock import Clock
from gridwatch.domain import AlertKind, Grade
from rules.engine import Changes, Cleared, OpenAlert, Opened, RulesEngine, Upgraded
from rules.silences import Silence
from rules.table import ALERT_CODE
from storage import alerts as db

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "gridwatch"


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Timers of the dispatcher itself (the rules file holds the alerting policy)."""

    flush_interval_s: float = 2.0
    silence_poll_s: float = 5.0
    resolved_poll_s: float = 2.0
    outbox: bool = True
    """Write MQTT outbox rows (drained by ``alerts.mqtt.AlertPublisher``)."""


@dataclass(slots=True)
class DispatchStats:
    persisted_batches: int = 0
    alerts_opened: int = 0
    alerts_upgraded: int = 0
    alerts_cleared: int = 0
    queue_items: int = 0
    escalations: int = 0
    renotified: int = 0
    updates_written: int = 0
    flushes: int = 0
    write_failures: int = 0
    forgotten: int = 0


class Dispatcher:
    """Owns the write path of one rules engine to storage; call ``start()`` first."""

    def __init__(
        self,
        storage: Any,
        engine: RulesEngine,
        *,
        clock: Clock | None = None,
        settings: DispatchSettings | None = None,
        owns: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.storage = storage
        self.engine = engine
        self.clock = clock or engine.clock
        self.settings = settings or DispatchSettings()
        # A worker owning a share of the grids restores only its own open alerts: another
        # worker's alert restored here would be auto-cleared for lack of detections.
        self.owns = owns
        self.stats = DispatchStats()
        self._backlog = Changes()
        self._groups: dict[tuple[str, str, str], tuple[int | None, int | None]] = {}
        now = self.clock.now_ms()
        self._next_flush = now
        self._next_silence_poll = now
        self._resolved_mark = now
        self._next_resolved_poll = now

    @property
    def registry(self) -> Any:
        return self.engine.registry

    # -- lifecycle of the dispatcher -------------------------------------------------

    def start(self) -> int:
        """Give the engine the open alerts and silences in storage; returns alerts restored."""
        with self.storage.connection(readonly=True) as conn:
            rows = db.open_alerts(conn, self.storage)
        if self.owns is not None:
            rows = [r for r in rows if self.owns(r)]
        alerts = [
            OpenAlert(
                alert_id=int(r["id"]),
                dedup_key=r["dedup_key"],
                alert=AlertKind(r["kind"]),
                grade=Grade(r["grade"]),
                scope=r["scope"],
                scope_id=r["scope_id"],
                first_seen_ms=int(r["first_seen_ms"]),
                last_seen_ms=int(r["last_seen_ms"]),
            )
            for r in rows
        ]
        n = self.engine.restore(alerts)
        self.poll_silences(force=True)
        log.info("dispatcher started", extra={"restored_alerts": n})
        return n

    def close(self) -> None:
        """Write what is buffered (backlog and write-behind counts)."""
        self._retry_backlog()
        self.flush()

    # -- the write path ---------------------------------------------------------------

    def handle(self, detections: Detections) -> Changes:
        """Run one batch through the rules and make its alert changes durable."""
        self._retry_backlog()
        changes = self.engine.process(detections)
        self._persist_or_keep(changes)
        # Dedup counts are flushed by tick(); only a caller that forgot to tick flushes here,
        # so a batch's new alerts are claimable without waiting for unrelated writes.
        overdue = round(self.settings.flush_interval_s * 1000)
        if self.clock.now_ms() >= self._next_flush + overdue:
            self.flush()
        return changes

    def tick(self) -> Changes:
        """Timers: clears, write-behind flush, escalation, silences and resolutions sync."""
        self._retry_backlog()
        now = self.clock.now_ms()
        if now >= self._next_silence_poll:
            self.poll_silences()
        if now >= self._next_resolved_poll:
            self.poll_resolved()
        changes = self.engine.tick()
        self._persist_or_keep(changes)
        if now >= self._next_flush:
            self.flush()
        self.escalate()
        return changes

    def _persist_or_keep(self, changes: Changes) -> None:
        if not changes:
            return
        try:
            self._persist(changes)
        except Exception:
            self.stats.write_failures += 1
            self._backlog.extend(changes)
            log.exception(
                "alert write failed; kept for retry", extra={"pending": _size(self._backlog)}
            )
            raise

    def _retry_backlog(self) -> None:
        if not self._backlog:
            return
        pending, self._backlog = self._backlog, Changes()
        self._persist_or_keep(pending)
        log.info("alert backlog written", extra={"changes": _size(pending)})

    def _persist(self, changes: Changes) -> None:
        now = self.clock.now_ms()
        st = self.storage
        ids: list[tuple[int, bool]] = []
        w = _Writes()
        with st.connection() as conn:
            if changes.opened:
                ids = db.insert_alerts(conn, st, [self._alert_row(o, now) for o in changes.opened])
                for o, (aid, created) in zip(changes.opened, ids, strict=True):
                    if not created:
                        continue
                    w.events.append(
                        (
                            aid,
                            now,
                            SYSTEM_ACTOR,
                            "opened",
                            None,
                            "open",
                            o.grade.value,
                            _open_note(o),
                        )
                    )
                    if not o.silenced:
                        self._notify_opened(conn, w, aid, o, now)
                    self.stats.alerts_opened += 1
            if changes.upgraded:
                self._upgrade(conn, w, changes.upgraded, now)
            if changes.cleared:
                self._clear(conn, w, changes.cleared, now)
            self._write(conn, w)
        self.stats.persisted_batches += 1
        if changes.opened:
            self.engine.bind(changes.opened, [aid for aid, _ in ids])

    def _write(self, conn: Any, w: _Writes) -> None:
        """The batch's queue items, links, audit events and outbox rows: a few round trips."""
        st = self.storage
        if w.items:
            item_ids = db.enqueue_many(conn, st, w.items)
            for item, iid in zip(w.items, item_ids, strict=True):
                w.links += [(iid, a) for a in item["alerts"]]
                if item.get("group_key"):
                    key = (item["level"], item["queue"], item["group_key"])
                    self._groups[key] = (iid, int(item["available_ms"]))
            self.stats.queue_items += len(w.items)
        db.add_links(conn, st, w.links)
        db.add_events(conn, st, w.events)
        if self.settings.outbox:
            db.add_outbox(conn, st, w.outbox)

    # -- rows and notifications --------------------------------------------------------

    def _esc_due(self, grade: Grade, now: int) -> int | None:
        esc = self.engine.ruleset.file.escalation
        if grade is Grade.RED and esc.red:
            return now + round(esc.red[0].after_s * 1000)
        if grade is Grade.YELLOW and esc.yellow_renotify_s:
            return now + round(esc.yellow_renotify_s * 1000)
        return None

    def _alert_row(self, o: Opened, now: int) -> dict[str, Any]:
        return {
            "dedup_key": o.dedup_key,
            "kind": o.alert.value,
            "detection": o.detection.value if o.detection else None,
            "grade": o.grade.value,
            "severity": o.grade.severity,
            "state": "open",
            "resolution": None,
            "scope": o.scope,
            "scope_id": o.scope_id,
            "device_id": o.device_id,
            "street": o.place["street"],
            "community": o.place["community"],
            "grid": o.place["grid"],
            "building": o.place["building"],
            "rule": o.rule,
            "count": o.count,
            "first_seen_ms": o.first_seen_ms,
            "last_seen_ms": o.last_seen_ms,
            "value": o.value,
            "evidence": db.dumps(o.evidence),
            "suggested_plan": o.suggest_plan,
            "opened_ms": now,
            "updated_ms": now,
            "graded_ms": now,
            "acked_ms": None,
            "acked_by": None,
            "resolved_ms": None,
            "resolved_by": None,
            "esc_step": 0,
            "esc_due_ms": None if o.silenced else self._esc_due(o.grade, now),
        }

    def _summary(self, aid: int, o: Opened, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "alert_id": aid,
            "kind": o.alert.value,
            "grade": o.grade.value,
            "scope": o.scope,
            "scope_id": o.scope_id,
            "device_id": o.device_id,
            "place": o.place,
            "rule": o.rule,
            "first_seen_ms": o.first_seen_ms,
            "last_seen_ms": o.last_seen_ms,
            "count": o.count,
            "evidence": o.evidence,
            "suggested_plan": o.suggest_plan,
        }

    def _grids_of(self, place: dict[str, str | None]) -> list[str]:
        if place["grid"] is not None:
            return [place["grid"]]
        return list(self.registry.grids_of_street(place["street"]))

    def _notify_opened(self, conn: Any, w: _Writes, aid: int, o: Opened, now: int) -> None:
        payload = self._summary(aid, o, "opened")
        if o.place["grid"] is None:
            # A street-wide area alert: the street's supervisor and every grid of the street
            # (that is how the plan suggestion reaches the street's dispatchers).
            targets = [("street", o.place["street"] or "")]
            targets += [("grid", g) for g in self._grids_of(o.place)]
            for level, queue in targets:
                w.items.append(
                    _item(
                        level, queue, "area_alert", None, o.grade.severity, now, now, aid, payload
                    )
                )
        else:
            kind = "area_alert" if o.scope != "device" else "alert"
            self._grouped(conn, w, o.place["grid"], o.alert.value, o.grade, aid, kind, payload, now)
        if o.suggest_plan:
            w.events.append(
                (
                    aid,
                    now,
                    SYSTEM_ACTOR,
                    "plan_suggested",
                    None,
                    None,
                    o.grade.value,
                    o.suggest_plan,
                )
            )
        self._outbox(w, o.place, o.grade.value, payload, now)

    def _grouped(  # noqa: PLR0917 - one call site per notification path, all positional
        self,
        conn: Any,
        w: _Writes,
        grid: str,
        alert_kind: str,
        grade: Grade,
        aid: int,
        item_kind: str,
        payload: dict[str, Any],
        now: int,
    ) -> None:
        """Alertmanager-style grouping by (grid, alert kind, grade): the first alert of a quiet
        group waits ``group_wait_s`` for company; later ones join the waiting item or, once it
        went out, wait until ``group_interval_s`` after it. Group state is cached in memory
        (one dispatcher owns its grids' writes) and read from storage after a restart."""
        spec = self.engine.ruleset.notify(grade)
        if not spec.queue:
            return
        key = f"{alert_kind}/{grade.value}"
        wait_ms = round(spec.group_wait_s * 1000)
        interval_ms = round(spec.group_interval_s * 1000)
        if not (wait_ms or interval_ms):
            w.items.append(
                _item("grid", grid, item_kind, key, grade.severity, now, now, aid, payload)
            )
            return
        gk = ("grid", grid, key)
        pending = w.groups.get(gk)
        if pending is not None:
            pending["alerts"].append(aid)
            return
        if gk not in self._groups:
            self._groups[gk] = self._load_group(conn, gk, now)
        item_id, avail = self._groups[gk]
        if item_id is not None and avail is not None and avail > now:
            w.links.append((item_id, aid))  # still waiting: nobody can have claimed it
            return
        available = now + wait_ms
        if avail is not None and avail + interval_ms > now:
            available = avail + interval_ms
        new = _item("grid", grid, item_kind, key, grade.severity, now, available, aid, payload)
        w.items.append(new)
        w.groups[gk] = new

    def _load_group(
        self, conn: Any, gk: tuple[str, str, str], now: int
    ) -> tuple[int | None, int | None]:
        level, queue, key = gk
        waiting = db.open_group_item(
            conn, self.storage, level=level, queue=queue, group_key=key, now_ms=now
        )
        if waiting is not None:
            return waiting
        return None, db.last_group_available(conn, self.storage, level, queue, key)

    def _outbox(
        self,
        w: _Writes,
        place: dict[str, str | None],
        grade: str,
        payload: dict[str, Any],
        now: int,
    ) -> None:
        if not self.settings.outbox:
            return
        body = db.dumps(payload)
        w.outbox += [(now, g, grade, body) for g in self._grids_of(place)]

    def _upgrade(self, conn: Any, w: _Writes, upgraded: list[Upgraded], now: int) -> None:
        by_id = {u.alert_id: u for u in upgraded}  # the latest upgrade of an alert wins
        rows = db.upgrade_many(
            conn,
            self.storage,
            [
                (
                    u.alert_id,
                    u.grade.value,
                    u.grade.severity,
                    u.value,
                    db.dumps(u.evidence),
                    None if u.silenced else self._esc_due(u.grade, now),
                )
                for u in by_id.values()
            ],
            now,
        )
        for row in rows:
            u = by_id[int(row["id"])]
            w.events.append(
                (
                    u.alert_id,
                    now,
                    SYSTEM_ACTOR,
                    "upgraded",
                    None,
                    None,
                    u.grade.value,
                    _value_note(u.value),
                )
            )
            self.stats.alerts_upgraded += 1
            if u.silenced or row["state"] != "open":
                # Someone is already on it: the grade change shows on their board, no new page.
                continue
            payload = {**_row_summary(row), "event": "upgraded"}
            place = {k: row[k] for k in ("street", "community", "grid", "building")}
            if row["grid"] is not None:
                self._grouped(
                    conn, w, row["grid"], row["kind"], u.grade, u.alert_id, "upgrade", payload, now
                )
            self._outbox(w, place, u.grade.value, payload, now)

    def _clear(self, conn: Any, w: _Writes, cleared: list[Cleared], now: int) -> None:
        before = db.close_many(
            conn,
            self.storage,
            [(c.alert_id, c.count_delta, c.last_seen_ms) for c in cleared],
            resolution="auto_cleared",
            actor=SYSTEM_ACTOR,
            now_ms=now,
        )
        for row in before:
            aid = int(row["id"])
            w.events.append(
                (
                    aid,
                    now,
                    SYSTEM_ACTOR,
                    "auto_cleared",
                    row["state"],
                    "resolved",
                    None,
                    "condition gone",
                )
            )
            place = {k: row[k] for k in ("street", "community", "grid", "building")}
            summary = {**_row_summary(row), "state": "resolved", "event": "cleared"}
            self._outbox(w, place, row["grade"], summary, now)
        self.stats.alerts_cleared += len(before)

    # -- write-behind -----------------------------------------------------------------

    def flush(self) -> int:
        """Write the dedup counts gathered since the last flush; returns alerts updated."""
        upd = self.engine.drain_updates()
        now = self.clock.now_ms()
        self._next_flush = now + round(self.settings.flush_interval_s * 1000)
        if len(upd) == 0:
            return 0
        try:
            with self.storage.connection() as conn:
                gone = db.apply_updates(
                    conn,
                    self.storage,
                    alert_id=upd.alert_id,
                    count_delta=upd.count_delta,
                    last_seen_ms=upd.last_seen_ms,
                    value=upd.value,
                    now_ms=now,
                )
        except Exception:
            # Counts go back into the engine's slots so the next flush writes them.
            self.engine.requeue_updates(upd)
            self.stats.write_failures += 1
            raise
        if gone:
            self.stats.forgotten += self.engine.forget(gone)
        self.stats.updates_written += len(upd) - len(gone)
        self.stats.flushes += 1
        return len(upd) - len(gone)

    # -- synchronisation with other processes (console, CLI) -----------------------------

    def poll_silences(self, *, force: bool = False) -> None:
        now = self.clock.now_ms()
        self._next_silence_poll = now + round(self.settings.silence_poll_s * 1000)
        with self.storage.connection(readonly=True) as conn:
            rows = db.silences(conn, self.storage, active_at_ms=now)
        silences = [silence_of(r) for r in rows]
        if force or tuple(silences) != self.engine.db_silences:
            self.engine.set_silences(silences)

    def poll_resolved(self) -> int:
        """Alerts a dispatcher resolved elsewhere: the engine lets go of them."""
        now = self.clock.now_ms()
        self._next_resolved_poll = now + round(self.settings.resolved_poll_s * 1000)
        with self.storage.connection(readonly=True) as conn:
            rows = db.resolved_since(conn, self.storage, self._resolved_mark)
        if rows:
            self._resolved_mark = max(t for _, t in rows)
            n = self.engine.forget([a for a, _ in rows])
            self.stats.forgotten += n
            return n
        return 0

    # -- escalation -----------------------------------------------------------------------

    def escalate(self) -> int:
        """Act on every escalation timer that is due; durable, so a restart picks up overdue
        timers. Red: community queue, then street queue. Yellow: re-notify the grid."""
        st = self.storage
        now = self.clock.now_ms()
        esc = self.engine.ruleset.file.escalation
        n = 0
        with st.connection() as conn:
            for row in db.due_escalations(conn, st, now):
                aid = int(row["id"])
                if self._silenced_row(row, now):
                    db.set_escalation(conn, st, aid, int(row["esc_step"]), now + 60_000)
                    continue
                payload = {**_row_summary(row), "event": "escalated"}
                step = int(row["esc_step"])
                if row["grade"] == "red" and step < len(esc.red):
                    target = esc.red[step]
                    queue = row["community"] if target.to == "community" else row["street"]
                    level: str = target.to
                    if queue is None:  # a street-wide alert has no community
                        level, queue = "street", row["street"]
                    payload["escalation"] = {
                        "step": step + 1,
                        "to": level,
                        "after_s": target.after_s,
                    }
                    db.enqueue(
                        conn,
                        st,
                        level=level,
                        queue=queue,
                        item_kind="escalation",
                        severity=int(row["severity"]),
                        now_ms=now,
                        payload=payload,
                        alert_ids=[aid],
                    )
                    nxt = (
                        int(row["graded_ms"]) + round(esc.red[step + 1].after_s * 1000)
                        if step + 1 < len(esc.red)
                        else None
                    )
                    db.set_escalation(conn, st, aid, step + 1, nxt)
                    note = (
                        f"not acknowledged within {target.after_s:g} s: "
                        f"escalated to {level} {queue}"
                    )
                    db.add_events(
                        conn, st, [(aid, now, SYSTEM_ACTOR, "escalated", None, None, "red", note)]
                    )
                    self.stats.escalations += 1
                elif row["grade"] == "yellow" and esc.yellow_renotify_s:
                    grids = [row["grid"]] if row["grid"] else [None]
                    for g in grids:
                        level = "grid" if g else "street"
                        queue = g if g else row["street"]
                        db.enqueue(
                            conn,
                            st,
                            level=level,
                            queue=queue,
                            item_kind="renotify",
                            severity=int(row["severity"]),
                            now_ms=now,
                            payload={**payload, "event": "renotified"},
                            alert_ids=[aid],
                        )
                    db.set_escalation(
                        conn, st, aid, step + 1, now + round(esc.yellow_renotify_s * 1000)
                    )
                    note = f"not acknowledged within {esc.yellow_renotify_s:g} s: notified again"
                    db.add_events(
                        conn,
                        st,
                        [(aid, now, SYSTEM_ACTOR, "renotified", None, None, "yellow", note)],
                    )
                    self.stats.renotified += 1
                else:
                    db.set_escalation(conn, st, aid, step, None)
                    continue
                n += 1
        return n

    def _silenced_row(self, row: dict[str, Any], now: int) -> bool:
        sil = self.engine.silences
        kind = AlertKind(row["kind"])
        if row["scope"] == "device" and row["device_id"]:
            d = int(self.registry.index_of([row["device_id"]])[0])
            if d < 0:
                return False
            return bool(sil.silenced(np.array([d]), np.array([ALERT_CODE[kind]]), now)[0])
        return sil.covers_area(row["scope"], row["scope_id"], kind, now)


@dataclass(slots=True)
class _Writes:
    """What one transaction will insert besides the alerts themselves."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    links: list[tuple[int, int]] = field(default_factory=list)
    outbox: list[tuple[int, str, str, str]] = field(default_factory=list)
    groups: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)


def _item(  # noqa: PLR0917 - a row constructor
    level: str,
    queue: str,
    kind: str,
    group_key: str | None,
    severity: int,
    now: int,
    available: int,
    aid: int,
    payload: dict[str, Any],
) -> dict[str, Any]:
    return {
        "level": level,
        "queue": queue,
        "item_kind": kind,
        "group_key": group_key,
        "severity": severity,
        "created_ms": now,
        "available_ms": available,
        "alert_id": aid,
        "alerts": [aid],
        "payload": payload,
    }


def silence_of(r: dict[str, Any]) -> Silence:
    return Silence(
        scope=r["scope"],
        target=r["target"],
        starts_ms=int(r["starts_ms"]),
        ends_ms=int(r["ends_ms"]),
        by=r["created_by"],
        reason=r["reason"],
        alerts=frozenset(AlertKind(a) for a in r["alerts"]),
        id=int(r["id"]),
    )


def _row_summary(row: dict[str, Any]) -> dict[str, Any]:
    import orjson

    return {
        "alert_id": int(row["id"]),
        "kind": row["kind"],
        "grade": row["grade"],
        "state": row["state"],
        "scope": row["scope"],
        "scope_id": row["scope_id"],
        "device_id": row["device_id"],
        "place": {k: row[k] for k in ("street", "community", "grid", "building")},
        "rule": row["rule"],
        "first_seen_ms": row["first_seen_ms"],
        "last_seen_ms": row["last_seen_ms"],
        "count": row["count"],
        "evidence": orjson.loads(row["evidence"]) if row["evidence"] else {},
        "suggested_plan": row["suggested_plan"],
    }


def _open_note(o: Opened) -> str:
    parts = [f"rule {o.rule}"]
    if o.value is not None:
        parts.append(f"value {o.value:g}")
    if o.suggest_plan:
        parts.append(f"suggests plan {o.suggest_plan}")
    return "; ".join(parts)


def _value_note(v: float | None) -> str | None:
    return None if v is None else f"value {v:g}"


def _size(c: Changes) -> int:
    return len(c.opened) + len(c.upgraded) + len(c.cleared)
