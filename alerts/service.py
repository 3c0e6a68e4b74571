"""The alerts API used by the console and the CLI: one object, every call scoped to a user.

Every method takes a ``Scope`` (``alerts.model.Scope``) and checks it server-side: an alert,
queue or plan outside the scope is reported as not found, so a dispatcher of grid A cannot
even learn that grid B's alert 17 exists. Lifecycle: open -> acknowledged -> in_progress ->
resolved (or auto-cleared by the rules); each transition writes an audit event with who,
when and the note, in the same transaction as the change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from alerts.model import (
    STATES,
    Alert,
    AlertDetail,
    AuditEvent,
    NotFoundError,
    Page,
    QueueItem,
    RequestError,
    Scope,
    TransitionError,
)
from alerts.plans import DEFAULT_PLANS_PATH, Plan, PlansFile, load_plans
from gridwatch.clock import Clock, SystemClock
from gridwatch.domain import AlertKind, Grade
from gridwatch.errors import RegistryError
from gridwatch.registry import Registry
from rules.silences import SCOPES, Silence
from storage import alerts as db

log = logging.getLogger(__name__)

MAX_PAGE: Final = 500
MAX_SILENCE_S: Final = 30 * 86_400
"""A silence longer than 30 days is a decommissioning, not a silence: edit the registry."""
_TRANSITIONS: Final = {
    "ack": (("open",), "acknowledged"),
    "start": (("open", "acknowledged"), "in_progress"),
    "resolve": (("open", "acknowledged", "in_progress"), "resolved"),
}
LEVELS: Final = ("grid", "community", "street")


@dataclass(frozen=True, slots=True)
class PlanStatus:
    """An activation and each grid's task: delivered (queue item done) and acknowledged."""

    activation: dict[str, Any]
    plan: dict[str, Any]
    tasks: tuple[dict[str, Any], ...]

    @property
    def id(self) -> int:
        return int(self.activation["id"])

    @property
    def acked(self) -> int:
        return sum(1 for t in self.tasks if t["acked_ms"] is not None)

    @property
    def grids(self) -> list[str]:
        return [t["grid"] for t in self.tasks]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acked": self.acked, "total": len(self.tasks)}


class AlertService:
    """Reads and changes alerts, silences, plans and queues in one storage."""

    def __init__(
        self,
        storage: Any,
        registry: Registry,
        *,
        plans: PlansFile | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.storage = storage
        self.registry = registry
        self.plans = plans or load_plans(DEFAULT_PLANS_PATH)
        self.clock = clock or SystemClock()

    # -- alerts -------------------------------------------------------------------------

    def list_alerts(
        self,
        scope: Scope,
        *,
        grades: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        grids: Sequence[str] | None = None,
        device_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Alerts red -> yellow -> green, newest first within a grade, one page at a time.

        ``grids`` narrows the scope (it never widens it); ``states=None`` means all states.
        """
        _check_values("grades", grades, [g.value for g in Grade])
        _check_values("states", states, STATES)
        _check_values("kinds", kinds, [k.value for k in AlertKind])
        if not 1 <= limit <= MAX_PAGE:
            raise RequestError(f"limit = {limit}: must be within 1..{MAX_PAGE}")
        use_grids: Sequence[str] | None = None if scope.grids is None else sorted(scope.grids)
        streets: Sequence[str] | None = sorted(scope.area_streets)
        if grids is not None:
            use_grids = [g for g in grids if scope.grids is None or g in scope.grids]
            streets = (
                sorted(
                    {self.registry.street_of_grid(g) for g in use_grids}
                    & set(
                        scope.area_streets if scope.grids is not None else self.registry.street_ids
                    )
                )
                if use_grids
                else []
            )
        after = _decode_cursor(cursor)
        with self.storage.connection(readonly=True) as conn:
            rows = db.list_alerts(
                conn,
                self.storage,
                grids=use_grids,
                streets=streets,
                grades=grades,
                states=states,
                kinds=kinds,
                device_id=device_id,
                after=after,
                limit=limit + 1,
            )
        items = tuple(Alert.from_row(r) for r in rows[:limit])
        nxt = None
        if len(rows) > limit:
            last = rows[limit - 1]
            nxt = f"{last['severity']}.{last['opened_ms']}.{last['id']}"
        return Page(items, nxt)

    def get_alert(self, alert_id: int, scope: Scope) -> AlertDetail:
        with self.storage.connection(readonly=True) as conn:
            row = self._visible(conn, alert_id, scope)
            events = db.events_of(conn, self.storage, alert_id)
        return AlertDetail(Alert.from_row(row), tuple(AuditEvent(**e) for e in events))

    def _visible(
        self, conn: Any, alert_id: int, scope: Scope, *, lock: bool = False
    ) -> dict[str, Any]:
        row = db.get_alert(conn, self.storage, alert_id, lock=lock)
        if row is None or not scope.sees_alert(row):
            raise NotFoundError(f"alert {alert_id} does not exist or is outside your grids")
        return row

    def ack(self, alert_id: int, user: str, scope: Scope, *, note: str | None = None) -> Alert:
        """open -> acknowledged (stops escalation)."""
        return self._transition("ack", alert_id, user, scope, note)

    def start(self, alert_id: int, user: str, scope: Scope, *, note: str | None = None) -> Alert:
        """open / acknowledged -> in_progress (someone is on the way)."""
        return self._transition("start", alert_id, user, scope, note)

    def resolve(self, alert_id: int, user: str, scope: Scope, *, note: str) -> Alert:
        """Any open state -> resolved; the note (what was done) is required."""
        if not note or not note.strip():
            raise RequestError("note: resolving an alert needs a note saying what was done")
        return self._transition("resolve", alert_id, user, scope, note.strip())

    def _transition(
        self, action: str, alert_id: int, user: str, scope: Scope, note: str | None
    ) -> Alert:
        _check_user(user)
        allowed, target = _TRANSITIONS[action]
        now = self.clock.now_ms()
        st = self.storage
        with st.connection() as conn:
            row = self._visible(conn, alert_id, scope, lock=True)
            if action == "resolve":
                before = db.close_alert(
                    conn, st, alert_id, resolution="resolved", actor=user, now_ms=now
                )
            else:
                before = db.set_state(
                    conn, st, alert_id, to_state=target, from_states=allowed, actor=user, now_ms=now
                )
            if before is None:
                raise TransitionError(
                    f"alert {alert_id} is {row['state']}; cannot {action} it "
                    f"(allowed from {', '.join(allowed)})"
                )
            db.add_events(
                conn,
                st,
                [(alert_id, now, user, _ACTION_NAME[action], before, target, row["grade"], note)],
            )
            after = db.get_alert(conn, st, alert_id)
        log.info("alert transition", extra={"alert_id": alert_id, "action": action, "user": user})
        if after is None:  # deleted under us: cannot happen with the row lock, but say so
            raise NotFoundError(f"alert {alert_id} vanished during the transition")
        return Alert.from_row(after)

    def grid_overview(self, scope: Scope) -> dict[str, dict[str, int]]:
        """Per grid of the scope: open alerts by grade (console tiles)."""
        grids = sorted(scope.grids) if scope.grids is not None else self.registry.grid_ids.tolist()
        out = {g: {"red": 0, "yellow": 0, "green": 0} for g in grids}
        with self.storage.connection(readonly=True) as conn:
            cur = conn.execute(
                self.storage.sql(
                    "SELECT grid, grade, count(*) FROM alerts WHERE state <> 'resolved' "
                    "AND grid IS NOT NULL GROUP BY grid, grade"
                )
            )
            for g, grade, n in cur.fetchall():
                if g in out:
                    out[g][grade] = int(n)
        return out

    # -- silences -----------------------------------------------------------------------

    def silence(
        self,
        user: str,
        scope: Scope,
        *,
        level: str,
        target: str,
        reason: str,
        duration_s: float | None = None,
        ends_ms: int | None = None,
        starts_ms: int | None = None,
        alerts: Sequence[str] = (),
    ) -> Silence:
        """Silence a device / building / grid / community / street for a while, with a reason."""
        _check_user(user)
        if level not in SCOPES:
            raise RequestError(f"level = {level!r}: must be one of {', '.join(SCOPES)}")
        if not reason or not reason.strip():
            raise RequestError("reason: a silence needs a reason (who asked, what work)")
        _check_values("alerts", alerts, [k.value for k in AlertKind])
        self._check_place(level, target, scope)
        now = self.clock.now_ms()
        start = now if starts_ms is None else int(starts_ms)
        if (duration_s is None) == (ends_ms is None):
            raise RequestError("give exactly one of duration_s and ends_ms")
        end = start + round(duration_s * 1000) if duration_s is not None else int(ends_ms or 0)
        if end <= max(start, now):
            raise RequestError(f"the silence would end at {end}, which is not in the future")
        if end - start > MAX_SILENCE_S * 1000:
            raise RequestError(f"a silence may last at most {MAX_SILENCE_S // 86_400} days")
        row = {
            "scope": level,
            "target": target,
            "alerts": list(alerts),
            "starts_ms": start,
            "ends_ms": end,
            "created_ms": now,
            "created_by": user,
            "reason": reason.strip(),
        }
        with self.storage.connection() as conn:
            sid = db.add_silence(conn, self.storage, row)
        log.info(
            "silence added",
            extra={"silence_id": sid, "scope": level, "target": target, "user": user},
        )
        return Silence(
            level,
            target,
            start,
            end,
            user,
            reason.strip(),
            frozenset(AlertKind(a) for a in alerts),
            sid,
        )

    def list_silences(self, scope: Scope, *, include_expired: bool = False) -> list[Silence]:
        from alerts.dispatch import silence_of

        now = self.clock.now_ms()
        with self.storage.connection(readonly=True) as conn:
            rows = db.silences(conn, self.storage, active_at_ms=None if include_expired else now)
        out = []
        for r in rows:
            try:
                self._check_place(r["scope"], r["target"], scope)
            except NotFoundError:
                continue
            out.append(silence_of(r))
        return out

    def revoke_silence(self, silence_id: int, user: str, scope: Scope) -> None:
        _check_user(user)
        with self.storage.connection() as conn:
            rows = [r for r in db.silences(conn, self.storage) if r["id"] == silence_id]
            if not rows:
                raise NotFoundError(f"silence {silence_id} does not exist or was revoked")
            self._check_place(rows[0]["scope"], rows[0]["target"], scope)
            db.revoke_silence(conn, self.storage, silence_id, user, self.clock.now_ms())

    def _check_place(self, level: str, target: str, scope: Scope) -> None:
        """The place exists and lies inside the user's scope (NotFoundError otherwise)."""
        reg = self.registry
        missing = NotFoundError(f"{level} {target!r} does not exist or is outside your grids")
        try:
            if level == "device":
                grids = [reg.grid_of(reg.index(target))]
            elif level == "building":
                b = [i for i, x in enumerate(reg.building_ids.tolist()) if x == target]
                if not b:
                    raise missing
                grids = [str(reg.grid_ids[reg.building_grid[b[0]]])]
            elif level == "grid":
                reg.grid_index(target)
                grids = [target]
            elif level == "community":
                grids = reg.grids_of_community(target)
                if scope.grids is not None and ("community", target) not in scope.supervised:
                    street = reg.street_of_grid(grids[0])
                    if ("street", street) not in scope.supervised:
                        raise missing
            else:
                grids = reg.grids_of_street(target)
                if scope.grids is not None and ("street", target) not in scope.supervised:
                    raise missing
        except RegistryError:
            raise missing from None
        if scope.grids is not None and not set(grids) <= scope.grids:
            raise missing

    # -- plans --------------------------------------------------------------------------

    def plan(self, name: str) -> Plan:
        try:
            return self.plans.plans[name]
        except KeyError:
            raise RequestError(
                f"plan {name!r} is not defined; plans are {', '.join(self.plans.plans)}"
            ) from None

    def activate_plan(
        self,
        plan: str,
        user: str,
        scope: Scope,
        *,
        level: str,
        area: str,
        note: str | None = None,
        source_alert_id: int | None = None,
    ) -> PlanStatus:
        """One action: a task in the queue of every grid of the area, each exactly once.

        Idempotent: while the plan is active for this area, activating it again returns the
        same activation and adds nothing.
        """
        _check_user(user)
        spec = self.plan(plan)
        if level not in LEVELS:
            raise RequestError(f"level = {level!r}: must be one of {', '.join(LEVELS)}")
        self._check_place(level, area, scope)
        grids = self._grids_of_area(level, area)
        now = self.clock.now_ms()
        st = self.storage
        with st.connection() as conn:
            if source_alert_id is not None:
                self._visible(conn, source_alert_id, scope)
            aid = db.insert_activation(
                conn,
                st,
                {
                    "plan": plan,
                    "area_level": level,
                    "area_id": area,
                    "activated_ms": now,
                    "activated_by": user,
                    "note": note,
                    "source_alert_id": source_alert_id,
                },
            )
            if aid is None:
                existing = db.active_activation(conn, st, plan, level, area)
                if existing is None:  # closed meanwhile by someone else: try again
                    raise TransitionError(f"plan {plan} for {level} {area} changed; try again")
                aid = int(existing["id"])
            else:
                payload = {
                    "plan": plan,
                    "title": spec.title,
                    "summary": spec.summary,
                    "tasks": spec.instructions(),
                    "activation_id": aid,
                    "area": {"level": level, "id": area},
                    "activated_by": user,
                    "note": note,
                }
                for g in grids:
                    item = db.enqueue(
                        conn,
                        st,
                        level="grid",
                        queue=g,
                        item_kind="plan_task",
                        severity=spec.grade.severity,
                        now_ms=now,
                        payload={**payload, "grid": g},
                        activation_id=aid,
                    )
                    db.insert_task(conn, st, activation_id=aid, grid=g, item_id=item, now_ms=now)
                if source_alert_id is not None:
                    db.add_events(
                        conn,
                        st,
                        [
                            (
                                source_alert_id,
                                now,
                                user,
                                "plan_activated",
                                None,
                                None,
                                None,
                                f"{plan} #{aid}",
                            )
                        ],
                    )
                log.info(
                    "plan activated",
                    extra={
                        "plan": plan,
                        "scope": level,
                        "area": area,
                        "grids": len(grids),
                        "user": user,
                    },
                )
            return self._status(conn, aid)

    def _grids_of_area(self, level: str, area: str) -> list[str]:
        reg = self.registry
        if level == "street":
            return sorted(reg.grids_of_street(area))
        if level == "community":
            return sorted(reg.grids_of_community(area))
        return [area]

    def _status(self, conn: Any, activation_id: int) -> PlanStatus:
        act = db.get_activation(conn, self.storage, activation_id)
        if act is None:
            raise NotFoundError(f"plan activation {activation_id} does not exist")
        tasks = db.tasks_of(conn, self.storage, activation_id)
        items = {i["id"]: i for i in db.get_items(conn, self.storage, activation_id=activation_id)}
        for t in tasks:
            item = items.get(t["item_id"], {})
            t["delivered"] = item.get("status") == "done" or item.get("claimed_by") is not None
            t["item_status"] = item.get("status")
        spec = self.plans.plans.get(act["plan"])
        plan = {"name": act["plan"], "title": spec.title if spec else act["plan"]}
        return PlanStatus(act, plan, tuple(tasks))

    def plan_status(self, activation_id: int, scope: Scope) -> PlanStatus:
        with self.storage.connection(readonly=True) as conn:
            status = self._status(conn, activation_id)
        self._check_activation(status, scope)
        return status

    def _check_activation(self, status: PlanStatus, scope: Scope) -> None:
        if scope.grids is None or set(status.grids) & scope.grids:
            return
        raise NotFoundError(f"plan activation {status.id} does not exist or is outside your grids")

    def list_activations(self, scope: Scope, *, state: str | None = "active") -> list[PlanStatus]:
        with self.storage.connection(readonly=True) as conn:
            acts = db.list_activations(conn, self.storage, state=state)
            out = [self._status(conn, int(a["id"])) for a in acts]
        return [s for s in out if scope.grids is None or set(s.grids) & scope.grids]

    def ack_plan_task(
        self, activation_id: int, grid: str, user: str, scope: Scope, *, note: str | None = None
    ) -> PlanStatus:
        """The grid's acknowledgement of its plan task (also marks the queue item delivered)."""
        _check_user(user)
        if scope.grids is not None and grid not in scope.grids:
            raise NotFoundError(f"grid {grid!r} is outside your grids")
        now = self.clock.now_ms()
        st = self.storage
        with st.connection() as conn:
            status = self._status(conn, activation_id)
            task = next((t for t in status.tasks if t["grid"] == grid), None)
            if task is None:
                raise NotFoundError(
                    f"plan activation {activation_id} has no task for grid {grid!r}"
                )
            if status.activation["state"] != "active":
                raise TransitionError(f"plan activation {activation_id} is closed")
            if not db.ack_task(
                conn, st, activation_id=activation_id, grid=grid, actor=user, note=note, now_ms=now
            ):
                raise TransitionError(
                    f"grid {grid} already acknowledged plan activation {activation_id}"
                )
            conn.execute(
                st.sql(
                    "UPDATE dispatch_queue SET status = 'done', done_ms = %s, done_by = %s "
                    "WHERE id = %s AND status = 'ready'"
                ),
                (now, user, task["item_id"]),
            )
            return self._status(conn, activation_id)

    def close_plan(
        self, activation_id: int, user: str, scope: Scope, *, note: str | None = None
    ) -> PlanStatus:
        """Close an activation; task items nobody took yet are withdrawn from the queues."""
        _check_user(user)
        now = self.clock.now_ms()
        st = self.storage
        with st.connection() as conn:
            status = self._status(conn, activation_id)
            self._check_activation(status, scope)
            level, area = status.activation["area_level"], status.activation["area_id"]
            self._check_place(level, area, scope)
            if not db.close_activation(
                conn, st, activation_id=activation_id, actor=user, note=note, now_ms=now
            ):
                raise TransitionError(f"plan activation {activation_id} is already closed")
            db.cancel_items(conn, st, [t["item_id"] for t in status.tasks], user, now)
            return self._status(conn, activation_id)

    def plan_suggestions(self, scope: Scope) -> list[Alert]:
        """Open area alerts that suggest a plan not yet active for their street or building."""
        page = self.list_alerts(
            scope, states=["open", "acknowledged", "in_progress"], limit=MAX_PAGE
        )
        out = []
        with self.storage.connection(readonly=True) as conn:
            for a in page.items:
                if not a.suggested_plan:
                    continue
                level, area = ("street", a.street) if a.grid is None else ("grid", a.grid)
                if db.active_activation(conn, self.storage, a.suggested_plan, level, area) is None:
                    out.append(a)
        return out

    # -- queues -------------------------------------------------------------------------

    def queue_depths(self, scope: Scope, *, level: str | None = None) -> list[dict[str, Any]]:
        """Per queue: ready, claimed and waiting (grouped, not yet due) items."""
        with self.storage.connection(readonly=True) as conn:
            rows = db.queue_depths(conn, self.storage, self.clock.now_ms(), level=level)
        return [r for r in rows if scope.sees_queue(r["level"], r["queue"])]

    def claim(
        self,
        scope: Scope,
        *,
        level: str,
        queue: str,
        consumer: str,
        limit: int = 10,
        lease_s: float = 60.0,
    ) -> list[QueueItem]:
        """Lease up to ``limit`` items, red first then oldest. Unacked items come back to any
        consumer when the lease ends: delivery is at least once."""
        if level not in LEVELS:
            raise RequestError(f"level = {level!r}: must be one of {', '.join(LEVELS)}")
        if not scope.sees_queue(level, queue):
            raise NotFoundError(f"queue {level} {queue!r} does not exist or is outside your grids")
        if not consumer or len(consumer) > 200:
            raise RequestError("consumer: give a non-empty name of at most 200 characters")
        if not 1 <= limit <= MAX_PAGE or not 0 < lease_s <= 3600:
            raise RequestError(f"limit must be 1..{MAX_PAGE} and lease_s within (0, 3600]")
        with self.storage.connection() as conn:
            rows = db.claim(
                conn,
                self.storage,
                level=level,
                queue=queue,
                consumer=consumer,
                now_ms=self.clock.now_ms(),
                lease_ms=round(lease_s * 1000),
                limit=limit,
            )
        return [QueueItem.from_row(r) for r in rows]

    def ack_items(self, item_ids: Sequence[int], consumer: str) -> list[int]:
        """Confirm delivery of claimed items; returns those acked (a lapsed lease that another
        consumer took over is not this consumer's to ack)."""
        with self.storage.connection() as conn:
            return db.ack_items(conn, self.storage, list(item_ids), consumer, self.clock.now_ms())

    def release_items(self, item_ids: Sequence[int], consumer: str) -> int:
        with self.storage.connection() as conn:
            return db.release_items(conn, self.storage, list(item_ids), consumer)


_ACTION_NAME: Final = {"ack": "acknowledged", "start": "started", "resolve": "resolved"}


def _check_user(user: str) -> None:
    if not user or len(user) > 100 or not user.strip():
        raise RequestError("user: give the acting person's name (1-100 characters)")


def _check_values(name: str, values: Sequence[str] | None, allowed: Sequence[str]) -> None:
    if values is None:
        return
    bad = [v for v in values if v not in allowed]
    if bad:
        raise RequestError(f"{name} = {bad}: must be among {', '.join(allowed)}")


def _decode_cursor(cursor: str | None) -> tuple[int, int, int] | None:
    if cursor is None:
        return None
    try:
        s, o, i = (int(x) for x in cursor.split("."))
    except ValueError:
        raise RequestError(f"cursor = {cursor!r}: not a cursor from a previous page") from None
    return s, o, i
