"""What the alerts API hands out: scopes (who may see what), alerts, audit events, queue items.

Everything is a frozen dataclass with ``as_dict()`` so the console can serialise it with
orjson and the CLI can print it; none of them holds a database connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson

from gridwatch.errors import GridwatchError
from gridwatch.registry import Registry

STATES: Final = ("open", "acknowledged", "in_progress", "resolved")


class NotFoundError(GridwatchError):
    """No such alert, activation or queue in the caller's scope (a console answers 404)."""


class TransitionError(GridwatchError):
    """The lifecycle does not allow this step from the alert's current state (409)."""


class RequestError(GridwatchError):
    """A request argument is wrong (422): the message names it and the value."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What one user may see and act on; every API call is checked against it server-side.

    ``grids=None`` means every grid (an administrator). ``supervised`` are the community and
    street queues the user works (escalations land there); ``area_streets`` are streets whose
    street-wide area alerts the user sees.
    """

    grids: frozenset[str] | None = None
    supervised: frozenset[tuple[str, str]] = frozenset()
    area_streets: frozenset[str] = frozenset()

    @classmethod
    def everything(cls) -> Scope:
        return cls(None)

    @classmethod
    def for_grids(cls, grids: Iterable[str], registry: Registry) -> Scope:
        """A grid dispatcher: their grids, and their streets' area alerts."""
        gs = frozenset(grids)
        for g in gs:
            registry.grid_index(g)  # raises RegistryError for an unknown grid
        return cls(gs, frozenset(), frozenset(registry.street_of_grid(g) for g in gs))

    @classmethod
    def for_street(cls, street: str, registry: Registry) -> Scope:
        """A street supervisor: every grid of the street and its community / street queues."""
        grids = frozenset(registry.grids_of_street(street))
        comms = {registry.community_of_grid(g) for g in grids}
        supervised = {("street", street)} | {("community", c) for c in comms}
        return cls(grids, frozenset(supervised), frozenset({street}))

    @property
    def unrestricted(self) -> bool:
        return self.grids is None

    def sees_alert(self, row: Mapping[str, Any]) -> bool:
        if self.grids is None:
            return True
        if row.get("grid") is not None:
            return row["grid"] in self.grids
        return row.get("street") in self.area_streets

    def sees_queue(self, level: str, queue: str) -> bool:
        if self.grids is None:
            return True
        if level == "grid":
            return queue in self.grids
        return (level, queue) in self.supervised


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    kind: str
    grade: str
    state: str
    resolution: str | None
    scope: str
    scope_id: str
    device_id: str | None
    street: str
    community: str | None
    grid: str | None
    building: str | None
    detection: str | None
    rule: str
    count: int
    first_seen_ms: int
    last_seen_ms: int
    opened_ms: int
    updated_ms: int
    graded_ms: int
    acked_ms: int | None
    acked_by: str | None
    resolved_ms: int | None
    resolved_by: str | None
    value: float | None
    evidence: dict[str, Any]
    suggested_plan: str | None
    escalation_step: int
    escalation_due_ms: int | None

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Alert:
        return cls(
            id=int(r["id"]),
            kind=r["kind"],
            grade=r["grade"],
            state=r["state"],
            resolution=r["resolution"],
            scope=r["scope"],
            scope_id=r["scope_id"],
            device_id=r["device_id"],
            street=r["street"],
            community=r["community"],
            grid=r["grid"],
            building=r["building"],
            detection=r["detection"],
            rule=r["rule"],
            count=int(r["count"]),
            first_seen_ms=int(r["first_seen_ms"]),
            last_seen_ms=int(r["last_seen_ms"]),
            opened_ms=int(r["opened_ms"]),
            updated_ms=int(r["updated_ms"]),
            graded_ms=int(r["graded_ms"]),
            acked_ms=r["acked_ms"],
            acked_by=r["acked_by"],
            resolved_ms=r["resolved_ms"],
            resolved_by=r["resolved_by"],
            value=r["value"],
            evidence=orjson.loads(r["evidence"]) if r["evidence"] else {},
            suggested_plan=r["suggested_plan"],
            escalation_step=int(r["esc_step"]),
            escalation_due_ms=r["esc_due_ms"],
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    alert_id: int
    ts_ms: int
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    grade: str | None
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AlertDetail:
    alert: Alert
    audit: tuple[AuditEvent, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"alert": self.alert.as_dict(), "audit": [e.as_dict() for e in self.audit]}


@dataclass(frozen=True, slots=True)
class Page:
    """One page of alerts; pass ``next_cursor`` back to get the next (None: last page)."""

    items: tuple[Alert, ...]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"items": [a.as_dict() for a in self.items], "next_cursor": self.next_cursor}


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A dispatch queue delivery. ``alert_ids`` are the alerts it notifies (a group may hold
    several); ``payload`` carries what the dispatcher reads (alert summary, plan tasks)."""

    id: int
    level: str
    queue: str
    item_kind: str
    severity: int
    created_ms: int
    available_ms: int
    attempts: int
    claimed_by: str | None
    claim_until_ms: int | None
    alert_ids: tuple[int, ...]
    activation_id: int | None
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> QueueItem:
        return cls(
            id=int(r["id"]),
            level=r["level"],
            queue=r["queue"],
            item_kind=r["item_kind"],
            severity=int(r["severity"]),
            created_ms=int(r["created_ms"]),
            available_ms=int(r["available_ms"]),
            attempts=int(r["attempts"]),
            claimed_by=r["claimed_by"],
            claim_until_ms=r["claim_until_ms"],
            alert_ids=tuple(r.get("alert_ids", ())),
            activation_id=r["activation_id"],
            payload=orjson.loads(r["payload"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
