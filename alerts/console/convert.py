"""From the alerts API's objects to the console's response bodies."""

from __future__ import annotations

import math
from typing import Any

from alerts.console.evidence import floor_of, headline
from alerts.console.schemas import (
    ActivationOut,
    AlertOut,
    AuditOut,
    PlaceOut,
    PlanTaskOut,
    PlanTaskTemplateOut,
    SilenceOut,
)
from alerts.model import Alert, AuditEvent, Scope
from alerts.plans import PlansFile
from alerts.service import PlanStatus
from gridwatch.registry import Registry
from rules.silences import Silence


def _clean(value: Any) -> Any:
    """Evidence goes out as JSON: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def device_kind(registry: Registry, device_id: str | None) -> str | None:
    if device_id is None:
        return None
    i = int(registry.index_of([device_id])[0])
    return None if i < 0 else registry.kind_of(i).value


def alert_out(a: Alert, registry: Registry, now_ms: int) -> AlertOut:
    return AlertOut(
        id=a.id,
        kind=a.kind,
        grade=a.grade,  # type: ignore[arg-type]
        state=a.state,  # type: ignore[arg-type]
        resolution=a.resolution,
        scope=a.scope,
        scope_id=a.scope_id,
        device_id=a.device_id,
        device_kind=device_kind(registry, a.device_id),
        place=PlaceOut(
            street=a.street,
            community=a.community,
            grid=a.grid,
            building=a.building,
            floor=floor_of(a.evidence),
        ),
        rule=a.rule,
        count=a.count,
        first_seen_ms=a.first_seen_ms,
        last_seen_ms=a.last_seen_ms,
        opened_ms=a.opened_ms,
        updated_ms=a.updated_ms,
        acked_ms=a.acked_ms,
        acked_by=a.acked_by,
        resolved_ms=a.resolved_ms,
        resolved_by=a.resolved_by,
        value=a.value if a.value is None or math.isfinite(a.value) else None,
        evidence=_clean(a.evidence),
        headline=headline(a.evidence),
        suggested_plan=a.suggested_plan,
        escalation_step=a.escalation_step,
        age_s=max(0.0, (now_ms - a.opened_ms) / 1000),
    )


def audit_out(e: AuditEvent) -> AuditOut:
    return AuditOut(
        id=e.id,
        ts_ms=e.ts_ms,
        actor=e.actor,
        action=e.action,
        from_state=e.from_state,
        to_state=e.to_state,
        grade=e.grade,
        note=e.note,
    )


def activation_out(s: PlanStatus, scope: Scope, plans: PlansFile) -> ActivationOut:
    """An activation with only the tasks of grids inside ``scope``."""
    act = s.activation
    tasks = [t for t in s.tasks if scope.grids is None or t["grid"] in scope.grids]
    spec = plans.plans.get(act["plan"])
    return ActivationOut(
        id=int(act["id"]),
        plan=act["plan"],
        title=spec.title if spec else act["plan"],
        level=act["area_level"],
        area=act["area_id"],
        state=act["state"],
        activated_ms=int(act["activated_ms"]),
        activated_by=act["activated_by"],
        note=act["note"],
        source_alert_id=act["source_alert_id"],
        closed_ms=act["closed_ms"],
        closed_by=act["closed_by"],
        close_note=act["close_note"],
        tasks=[
            PlanTaskOut(
                grid=t["grid"],
                created_ms=int(t["created_ms"]),
                acked_ms=t["acked_ms"],
                acked_by=t["acked_by"],
                note=t["note"],
                delivered=bool(t.get("delivered")),
            )
            for t in tasks
        ],
        acked=sum(1 for t in tasks if t["acked_ms"] is not None),
        total=len(tasks),
        instructions=[PlanTaskTemplateOut(**t) for t in (spec.instructions() if spec else [])],
    )


def silence_out(s: Silence) -> SilenceOut:
    return SilenceOut(
        id=s.id,
        level=s.scope,
        target=s.target,
        starts_ms=s.starts_ms,
        ends_ms=s.ends_ms,
        created_by=s.by,
        reason=s.reason,
        alerts=sorted(a.value for a in s.alerts),
    )
