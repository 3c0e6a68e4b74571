"""Emergency plans: the catalogue, activation by a supervisor, each grid's acknowledgement,
closing, and the suggestions area correlation makes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query

from alerts.console.auth import AuthError
from alerts.console.convert import activation_out, alert_out
from alerts.console.deps import Console, Principal, console, principal
from alerts.console.schemas import (
    ActivateIn,
    ActivationOut,
    ActivationsOut,
    NoteIn,
    PlanOut,
    PlansOut,
    PlanTaskTemplateOut,
    SuggestionOut,
    SuggestionsOut,
)

router = APIRouter(prefix="/api/plans", tags=["plans"], dependencies=[Depends(principal)])

Ctx = Annotated[Console, Depends(console)]
Who = Annotated[Principal, Depends(principal)]
ActivationId = Annotated[int, Path(ge=1, le=2**62)]
GridPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,32}$")]


def _require_planner(who: Principal) -> None:
    if not who.access.can_run_plans:
        raise AuthError(403, "only supervisors and administrators activate or close plans")


@router.get("", response_model=PlansOut, summary="The emergency plans and their instructions")
def plans(who: Who, ctx: Ctx) -> PlansOut:
    return PlansOut(
        plans=[
            PlanOut(
                name=name,
                title=p.title,
                grade=p.grade.value,
                summary=p.summary,
                tasks=[PlanTaskTemplateOut(**t) for t in p.instructions()],
            )
            for name, p in ctx.service.plans.plans.items()
        ]
    )


@router.get(
    "/activations",
    response_model=ActivationsOut,
    summary="Plan activations touching your grids, with each grid's task",
)
def activations(
    who: Who,
    ctx: Ctx,
    state: Annotated[Literal["active", "closed", "all"], Query()] = "active",
) -> ActivationsOut:
    found = ctx.service.list_activations(who.access.scope, state=None if state == "all" else state)
    return ActivationsOut(
        activations=[activation_out(s, who.access.scope, ctx.service.plans) for s in found[:200]]
    )


@router.post(
    "/activations",
    response_model=ActivationOut,
    status_code=201,
    summary="Activate a plan for a street, community or grid: one task per grid",
    responses={403: {"description": "not a supervisor"}, 404: {"description": "area not yours"}},
)
def activate(body: ActivateIn, who: Who, ctx: Ctx) -> ActivationOut:
    _require_planner(who)
    status = ctx.service.activate_plan(
        body.plan,
        who.name,
        who.access.scope,
        level=body.level,
        area=body.area,
        note=body.note or None,
        source_alert_id=body.source_alert_id,
    )
    ctx.hub.notify()
    return activation_out(status, who.access.scope, ctx.service.plans)


@router.get("/activations/{activation_id}", response_model=ActivationOut, summary="One activation")
def activation(activation_id: ActivationId, who: Who, ctx: Ctx) -> ActivationOut:
    status = ctx.service.plan_status(activation_id, who.access.scope)
    return activation_out(status, who.access.scope, ctx.service.plans)


@router.post(
    "/activations/{activation_id}/close",
    response_model=ActivationOut,
    summary="Close an activation; unacknowledged tasks are withdrawn",
    responses={403: {"description": "not a supervisor"}, 404: {"description": "not yours"}},
)
def close(
    activation_id: ActivationId, who: Who, ctx: Ctx, body: NoteIn | None = None
) -> ActivationOut:
    _require_planner(who)
    status = ctx.service.close_plan(
        activation_id, who.name, who.access.scope, note=body.note if body else None
    )
    ctx.hub.notify()
    return activation_out(status, who.access.scope, ctx.service.plans)


@router.post(
    "/activations/{activation_id}/tasks/{grid}/ack",
    response_model=ActivationOut,
    summary="Acknowledge your grid's task of an activation",
    responses={404: {"description": "no task of yours"}, 409: {"description": "already acked"}},
)
def ack_task(
    activation_id: ActivationId,
    grid: GridPath,
    who: Who,
    ctx: Ctx,
    body: NoteIn | None = None,
) -> ActivationOut:
    status = ctx.service.ack_plan_task(
        activation_id, grid, who.name, who.access.scope, note=body.note if body else None
    )
    ctx.hub.notify()
    return activation_out(status, who.access.scope, ctx.service.plans)


@router.get(
    "/suggestions",
    response_model=SuggestionsOut,
    summary="Open area alerts suggesting a plan that is not active yet",
)
def suggestions(who: Who, ctx: Ctx) -> SuggestionsOut:
    now = ctx.clock.now_ms()
    out = []
    for a in ctx.service.plan_suggestions(who.access.scope):
        plan = a.suggested_plan or ""
        spec = ctx.service.plans.plans.get(plan)
        if spec is None:
            continue
        level: Literal["street", "grid"] = "street" if a.grid is None else "grid"
        out.append(
            SuggestionOut(
                alert=alert_out(a, ctx.registry, now),
                plan=plan,
                title=spec.title,
                level=level,
                area=a.street if a.grid is None else a.grid,
            )
        )
    return SuggestionsOut(suggestions=out)
