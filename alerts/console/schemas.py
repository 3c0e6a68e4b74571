"""Request and response bodies of the console API; they are what the OpenAPI document shows.

Requests forbid unknown fields and bound every string, so a typo in an integrator's
client is a 422 naming the field instead of a silently ignored value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gridwatch.domain import AlertKind

Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
RequiredNote = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,32}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- auth ---------------------------------------------------------------------------------


class LoginIn(_In):
    name: Name
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        json_schema_extra={"format": "password", "writeOnly": True}
    )


class TokenIn(LoginIn):
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None = None
    ttl_s: Annotated[int, Field(ge=60)] | None = Field(
        default=None,
        description="lifetime in seconds (default 30 days, at most the server's limit)",
    )


class AreaGrid(_Out):
    id: str
    community: str
    street: str


class MeOut(_Out):
    name: str
    role: Literal["dispatcher", "supervisor", "admin"]
    street: str | None
    grids: list[AreaGrid] = Field(description="the grids this user sees and acts on")
    streets: list[str] = Field(description="streets whose plans this user may activate")
    can_run_plans: bool
    csrf_token: str | None = Field(
        description="send as X-CSRF-Token on POST requests made with the session cookie"
    )
    session_expires_ms: int
    alert_kinds: list[str] = Field(description="every alert kind (for filters)")


class TokenOut(_Out):
    token: str = Field(description="shown once: send as 'Authorization: Bearer <token>'")
    token_id: int
    expires_ms: int


class OkOut(_Out):
    ok: bool = True


# -- alerts ---------------------------------------------------------------------------------


class PlaceOut(_Out):
    street: str
    community: str | None
    grid: str | None
    building: str | None
    floor: int | None = Field(
        description="floor from the evidence (car position, origin of a fall)"
    )


class AlertOut(_Out):
    id: int
    kind: str
    grade: Literal["red", "yellow", "green"]
    state: Literal["open", "acknowledged", "in_progress", "resolved"]
    resolution: str | None
    scope: str
    scope_id: str
    device_id: str | None
    device_kind: str | None
    place: PlaceOut
    rule: str
    count: int
    first_seen_ms: int
    last_seen_ms: int
    opened_ms: int
    updated_ms: int
    acked_ms: int | None
    acked_by: str | None
    resolved_ms: int | None
    resolved_by: str | None
    value: float | None
    evidence: dict[str, Any]
    headline: list[str] = Field(description="the evidence a dispatcher reads first, as text")
    suggested_plan: str | None
    escalation_step: int
    age_s: float = Field(description="seconds since the alert opened (server clock)")


class AuditOut(_Out):
    id: int
    ts_ms: int
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    grade: str | None
    note: str | None


class AlertDetailOut(_Out):
    alert: AlertOut
    audit: list[AuditOut]


class CountsOut(_Out):
    red: int = 0
    yellow: int = 0
    green: int = 0
    total: int = 0


class BoardOut(_Out):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")
    counts: CountsOut = Field(description="alerts matching the filters, by grade")
    now_ms: int


class NoteIn(_In):
    note: Note | None = None


class ResolveIn(_In):
    note: RequiredNote = Field(description="what was done; required to resolve")


# -- grids ---------------------------------------------------------------------------------


class GridTileOut(_Out):
    grid: str
    community: str
    street: str
    worst: Literal["red", "yellow", "green"] | None
    counts: CountsOut
    open_tasks: int = Field(description="plan tasks of active plans not yet acknowledged")


class OverviewOut(_Out):
    grids: list[GridTileOut]
    totals: CountsOut
    now_ms: int


# -- devices -------------------------------------------------------------------------------


class DeviceOut(_Out):
    device_id: str
    kind: str
    place: PlaceOut
    floors: int | None
    constants: dict[str, float]
    alerts: list[AlertOut]
    silences: list[SilenceOut]


class SeriesOut(_Out):
    device_id: str
    kind: str
    resolution: str
    since_ms: int
    until_ms: int
    ts_ms: list[int]
    fields: dict[str, list[float | None]]
    units: dict[str, str]
    last_reading_ms: int | None


class SilenceIn(_In):
    duration_s: Annotated[int, Field(ge=60, le=30 * 86_400)] = Field(
        description="how long, 60 s to 30 days"
    )
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)]
    alerts: list[AlertKind] = Field(
        default_factory=list, description="alert kinds to silence; empty: all of the device's"
    )


class SilenceOut(_Out):
    id: int | None
    level: str
    target: str
    starts_ms: int
    ends_ms: int
    created_by: str
    reason: str
    alerts: list[str]


# -- plans ---------------------------------------------------------------------------------


class PlanTaskTemplateOut(_Out):
    role: str
    task: str
    within_min: float | None = None


class PlanOut(_Out):
    name: str
    title: str
    grade: str
    summary: str
    tasks: list[PlanTaskTemplateOut]


class PlansOut(_Out):
    plans: list[PlanOut]


class ActivateIn(_In):
    plan: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    level: Literal["street", "community", "grid"]
    area: Id
    note: Note | None = None
    source_alert_id: Annotated[int, Field(ge=1)] | None = None


class PlanTaskOut(_Out):
    grid: str
    created_ms: int
    acked_ms: int | None
    acked_by: str | None
    note: str | None
    delivered: bool


class ActivationOut(_Out):
    id: int
    plan: str
    title: str
    level: str
    area: str
    state: Literal["active", "closed"]
    activated_ms: int
    activated_by: str
    note: str | None
    source_alert_id: int | None
    closed_ms: int | None
    closed_by: str | None
    close_note: str | None
    tasks: list[PlanTaskOut] = Field(description="the tasks of the grids in your scope")
    acked: int
    total: int
    instructions: list[PlanTaskTemplateOut]


class ActivationsOut(_Out):
    activations: list[ActivationOut]


class SuggestionOut(_Out):
    alert: AlertOut
    plan: str
    title: str
    level: Literal["street", "community", "grid"]
    area: str


class SuggestionsOut(_Out):
    suggestions: list[SuggestionOut]


DeviceOut.model_rebuild()
