"""The alert board, one alert with its audit trail, the lifecycle actions, the grid overview."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query

from alerts.console import queries
from alerts.console.convert import alert_out, audit_out
from alerts.console.deps import Console, Principal, console, principal
from alerts.console.schemas import (
    AlertDetailOut,
    AlertOut,
    BoardOut,
    CountsOut,
    GridTileOut,
    NoteIn,
    OverviewOut,
    ResolveIn,
)
from alerts.model import NotFoundError, Scope
from gridwatch.domain import AlertKind, Grade
from gridwatch.registry import Registry

router = APIRouter(prefix="/api", tags=["alerts"], dependencies=[Depends(principal)])

Ctx = Annotated[Console, Depends(console)]
Who = Annotated[Principal, Depends(principal)]
AlertId = Annotated[int, Path(ge=1, le=2**62, description="alert id")]
State = Literal["open", "acknowledged", "in_progress", "resolved"]
GridId = Annotated[str, Query(pattern=r"^[A-Za-z0-9_.\-]{1,32}$")]


def _counts(by_grade: dict[str, int], grades: Sequence[str] | None = None) -> CountsOut:
    total = sum(n for g, n in by_grade.items() if not grades or g in grades)
    return CountsOut(
        red=by_grade.get("red", 0),
        yellow=by_grade.get("yellow", 0),
        green=by_grade.get("green", 0),
        total=total,
    )


def narrowed(
    scope: Scope, grids: Sequence[str], registry: Registry
) -> tuple[list[str] | None, list[str]]:
    """(grids, streets) the board covers: the scope, narrowed to ``grids`` when given.

    Mirrors ``AlertService.list_alerts`` so counts and pages agree; a grid outside the
    scope is a 404, not an empty board, so a typo is not mistaken for a quiet grid.
    """
    for g in grids:
        if scope.grids is not None and g not in scope.grids:
            raise NotFoundError(f"grid {g!r} does not exist or is outside your grids")
        if scope.grids is None:
            registry.grid_index(g)  # RegistryError (404) for an unknown grid
    if not grids:
        return (None if scope.grids is None else sorted(scope.grids)), sorted(scope.area_streets)
    streets = {registry.street_of_grid(g) for g in grids}
    if scope.grids is not None:
        streets &= set(scope.area_streets)
    return sorted(grids), sorted(streets)


@router.get(
    "/board",
    response_model=BoardOut,
    summary="Alerts of your grids, red -> yellow -> green, newest first; one page",
)
def board(
    *,
    who: Who,
    ctx: Ctx,
    grade: Annotated[list[Grade], Query(description="only these grades")] = [],  # noqa: B006
    state: Annotated[
        list[State], Query(description="default: open, acknowledged, in_progress")
    ] = [],  # noqa: B006
    kind: Annotated[list[AlertKind], Query(description="only these alert kinds")] = [],  # noqa: B006
    grid: Annotated[list[GridId], Query(description="narrow to these of your grids")] = [],  # noqa: B006
    device: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.\-]{1,32}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=80, pattern=r"^[0-9.\-]+$")] = None,
) -> BoardOut:
    scope = who.access.scope
    states = list(state) or list(queries.ACTIVE_STATES)
    grids, streets = narrowed(scope, grid, ctx.registry)
    page = ctx.service.list_alerts(
        scope,
        grades=[g.value for g in grade] or None,
        states=states,
        kinds=[k.value for k in kind] or None,
        grids=list(grid) or None,
        device_id=device,
        limit=limit,
        cursor=cursor,
    )
    if not kind and device is None and set(states) <= set(queries.ACTIVE_STATES):
        in_grids = None if grids is None else set(grids)
        in_streets = set(streets)

        def sees(g: str | None, street: str) -> bool:
            if g is None:
                return street in in_streets or (in_grids is None and scope.grids is None)
            return in_grids is None or g in in_grids

        by_grade, _ = ctx.counts.get().by_grade(sees, states)
    else:  # filters the cached per-grid counts do not carry: count in SQL
        by_grade = queries.grade_counts(
            ctx.storage,
            grids=grids,
            streets=streets,
            states=states,
            kinds=[k.value for k in kind],
            device_id=device,
        )
    now = ctx.clock.now_ms()
    return BoardOut(
        items=[alert_out(a, ctx.registry, now) for a in page.items],
        next_cursor=page.next_cursor,
        counts=_counts(by_grade, [g.value for g in grade]),
        now_ms=now,
    )


@router.get(
    "/alerts/{alert_id}", response_model=AlertDetailOut, summary="One alert and its audit trail"
)
def get_alert(alert_id: AlertId, who: Who, ctx: Ctx) -> AlertDetailOut:
    detail = ctx.service.get_alert(alert_id, who.access.scope)
    return AlertDetailOut(
        alert=alert_out(detail.alert, ctx.registry, ctx.clock.now_ms()),
        audit=[audit_out(e) for e in detail.audit],
    )


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertOut,
    summary="Acknowledge: open -> acknowledged (stops escalation)",
    responses={
        404: {"description": "no such alert in your grids"},
        409: {"description": "not open"},
    },
)
def ack(alert_id: AlertId, who: Who, ctx: Ctx, body: NoteIn | None = None) -> AlertOut:
    alert = ctx.service.ack(alert_id, who.name, who.access.scope, note=body.note if body else None)
    ctx.hub.notify()
    return alert_out(alert, ctx.registry, ctx.clock.now_ms())


@router.post(
    "/alerts/{alert_id}/start",
    response_model=AlertOut,
    summary="Start work: open / acknowledged -> in_progress",
    responses={
        404: {"description": "no such alert in your grids"},
        409: {"description": "wrong state"},
    },
)
def start(alert_id: AlertId, who: Who, ctx: Ctx, body: NoteIn | None = None) -> AlertOut:
    alert = ctx.service.start(
        alert_id, who.name, who.access.scope, note=body.note if body else None
    )
    ctx.hub.notify()
    return alert_out(alert, ctx.registry, ctx.clock.now_ms())


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=AlertOut,
    summary="Resolve with a note saying what was done",
    responses={
        404: {"description": "no such alert in your grids"},
        409: {"description": "resolved"},
    },
)
def resolve(alert_id: AlertId, body: ResolveIn, who: Who, ctx: Ctx) -> AlertOut:
    alert = ctx.service.resolve(alert_id, who.name, who.access.scope, note=body.note)
    ctx.hub.notify()
    return alert_out(alert, ctx.registry, ctx.clock.now_ms())


@router.get(
    "/overview",
    response_model=OverviewOut,
    summary="Every grid of your scope with its worst open alert and counts",
)
def overview(who: Who, ctx: Ctx) -> OverviewOut:
    reg = ctx.registry
    scope = who.access.scope
    counts = ctx.counts.get()
    totals, per_grid = counts.by_grade(
        lambda g, street: scope.sees_alert({"grid": g, "street": street})
    )
    tiles = []
    for g in who.access.visible_grids(reg):
        by = per_grid.get(g, {})
        worst = next((x for x in ("red", "yellow", "green") if by.get(x)), None)
        tiles.append(
            GridTileOut(
                grid=g,
                community=reg.community_of_grid(g),
                street=reg.street_of_grid(g),
                worst=worst,  # type: ignore[arg-type]
                counts=_counts(by),
                open_tasks=counts.open_tasks.get(g, 0),
            )
        )
    return OverviewOut(grids=tiles, totals=_counts(totals), now_ms=ctx.clock.now_ms())
