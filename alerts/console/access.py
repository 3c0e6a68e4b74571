"""From an account to what it may see and do: the ``alerts.model.Scope`` and the role rights.

Scope is derived from the registry on every request, never stored: when the registry
moves a grid to another street, a supervisor's view follows. A grid the registry no
longer knows drops out of a dispatcher's scope (logged once per request) instead of
failing the request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from alerts.model import Scope
from gridwatch.errors import RegistryError
from gridwatch.registry import Registry
from storage.users import Role, UserRecord

log = logging.getLogger(__name__)

PLAN_ROLES: Final[frozenset[Role]] = frozenset({"supervisor", "admin"})
"""Who activates and closes emergency plans (a dispatcher acknowledges their grid's task)."""


@dataclass(frozen=True, slots=True)
class Access:
    """The signed-in user as every endpoint sees them."""

    name: str
    role: Role
    scope: Scope
    street: str | None

    @property
    def can_run_plans(self) -> bool:
        return self.role in PLAN_ROLES

    def sees_grid(self, grid: str) -> bool:
        return self.scope.grids is None or grid in self.scope.grids

    def visible_grids(self, registry: Registry) -> list[str]:
        if self.scope.grids is None:
            return [str(g) for g in registry.grid_ids.tolist()]
        return sorted(self.scope.grids)


def _merge(a: Scope, b: Scope) -> Scope:
    if a.grids is None or b.grids is None:
        return Scope.everything()
    return Scope(a.grids | b.grids, a.supervised | b.supervised, a.area_streets | b.area_streets)


def scope_for(user: UserRecord, registry: Registry) -> Scope:
    """Admin: everything. Supervisor: their street (plus any grids). Dispatcher: their grids."""
    if user.role == "admin":
        return Scope.everything()
    known = set(registry.grid_ids.tolist())
    grids = [g for g in user.grids if g in known]
    if len(grids) != len(user.grids):
        log.warning(
            "user has grids the registry does not know",
            extra={"user": user.name, "unknown": sorted(set(user.grids) - known)},
        )
    scope = Scope.for_grids(grids, registry)
    if user.role == "supervisor" and user.street:
        try:
            scope = _merge(scope, Scope.for_street(user.street, registry))
        except RegistryError:
            log.warning(
                "supervisor's street is not in the registry",
                extra={"user": user.name, "street": user.street},
            )
    return scope


def access_for(user: UserRecord, registry: Registry) -> Access:
    return Access(user.name, user.role, scope_for(user, registry), user.street)
