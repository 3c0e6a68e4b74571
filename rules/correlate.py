"""Area correlation: many device warnings in one place become one area alert.

Example (the default rules): eight or more sewage warnings (``overflow_imminent``,
``level_high``) on one street across at least two grids within 15 minutes of device time
are one ``urban_waterlogging`` event for the street, which suggests the waterlogging
plan to that street's dispatchers; two or more devices of one building going offline
within 5 minutes are one building ``power_outage``.

A warning counts when its detection meets a rule level (a *hit*), whether or not the
device's own alert has fired yet: an area event should not wait for every for-duration.
Windows use device time (the detections' ``ts_ms``); the area alert clears on the engine
clock once no warning has refreshed it for ``clear_after_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gridwatch.domain import AlertKind, Grade
from gridwatch.registry import Registry
from rules.config import CorrelateSpec
from rules.table import ALERT_CODE

_NEVER: Final = np.iinfo(np.int64).min // 2
SAMPLE_DEVICES: Final = 20
"""Device ids listed in an area alert's evidence; the count says how many there are."""


@dataclass(slots=True)
class Area:
    """One open area alert of one correlation rule."""

    scope_index: int
    alert_id: int = -1
    opened_wall: int = 0
    last_wall: int = 0
    n_devices: int = 0
    grids: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    inhibited_by_silence: bool = False


@dataclass(frozen=True, slots=True)
class AreaEvent:
    """An area alert to open (``new``) or refresh; ``place`` is street/community/grid/building."""

    name: str
    alert: AlertKind
    grade: Grade
    scope: str
    scope_id: str
    place: dict[str, str | None]
    n_devices: int
    grids: tuple[str, ...]
    devices: tuple[str, ...]
    window_s: float
    suggest_plan: str | None
    new: bool
    first_seen_ms: int
    last_seen_ms: int

    @property
    def dedup_key(self) -> str:
        return f"{self.scope}:{self.scope_id}:{self.alert.value}"

    def evidence(self) -> dict[str, Any]:
        return {
            "devices": self.n_devices,
            "grids": list(self.grids),
            "sample_devices": list(self.devices),
            "window_s": self.window_s,
            "correlation": self.name,
        }


class Correlator:
    """State of one ``[correlate.NAME]`` rule over the registry's streets or buildings."""

    def __init__(self, name: str, spec: CorrelateSpec, registry: Registry) -> None:
        self.name = name
        self.spec = spec
        self.registry = registry
        n = len(registry)
        if spec.scope == "street":
            self.scope_of = registry.community_street[registry.grid_community[registry.device_grid]]
            self.scope_ids = registry.street_ids
        else:
            self.scope_of = registry.device_building
            self.scope_ids = registry.building_ids
        self.n_scopes = int(self.scope_ids.size)
        valid = self.scope_of >= 0
        self.scope_size = np.bincount(self.scope_of[valid], minlength=self.n_scopes)
        self.source_codes = np.array([ALERT_CODE[s] for s in spec.sources], dtype=np.int8)
        self.last_hit: npt.NDArray[np.int64] = np.full(n, _NEVER, dtype=np.int64)
        self.areas: dict[int, Area] = {}
        self.window_ms = round(spec.window_s * 1000)
        self.clear_ms = round(spec.clear_after_s * 1000)

    def observe(
        self, device: npt.NDArray[Any], acode: npt.NDArray[Any], ts_ms: npt.NDArray[Any]
    ) -> npt.NDArray[np.int64]:
        """Record warning hits; returns the scope indexes they touched."""
        sel = np.isin(acode, self.source_codes)
        if not sel.any():
            return np.zeros(0, dtype=np.int64)
        dev = device[sel]
        scopes = self.scope_of[dev]
        keep = scopes >= 0
        dev = dev[keep]
        np.maximum.at(self.last_hit, dev, ts_ms[sel][keep])
        return np.unique(scopes[keep]).astype(np.int64)

    def evaluate(
        self, touched: npt.NDArray[np.int64], now_dev_ms: int, now_wall: int
    ) -> list[AreaEvent]:
        """Area events for the touched scopes whose warnings meet every minimum."""
        if touched.size == 0:
            return []
        recent = np.flatnonzero(self.last_hit >= now_dev_ms - self.window_ms)
        recent = recent[np.isin(self.scope_of[recent], touched)]
        if recent.size == 0:
            return []
        scopes = self.scope_of[recent]
        counts = np.bincount(scopes, minlength=self.n_scopes)
        grids = self.registry.device_grid[recent]
        pairs = np.unique(scopes.astype(np.int64) * (1 << 20) + grids)
        grid_counts = np.bincount(pairs >> 20, minlength=self.n_scopes)
        size = np.maximum(self.scope_size, 1)
        ok = (
            (counts >= self.spec.min_devices)
            & (grid_counts >= self.spec.min_grids)
            & (counts / size >= self.spec.min_fraction)
        )
        events = []
        for s in np.flatnonzero(ok[touched] if touched.size else ok).tolist():
            scope_index = int(touched[s])
            members = recent[scopes == scope_index]
            area = self.areas.get(scope_index)
            new = area is None
            if area is None:
                area = self.areas[scope_index] = Area(scope_index, opened_wall=now_wall)
            area.last_wall = now_wall
            area.n_devices = int(members.size)
            area.grids = sorted(
                {str(g) for g in self.registry.grid_ids[self.registry.device_grid[members]]}
            )
            area.devices = [str(d) for d in self.registry.device_ids[members[:SAMPLE_DEVICES]]]
            hits = self.last_hit[members]
            events.append(
                AreaEvent(
                    name=self.name,
                    alert=self.spec.alert,
                    grade=self.spec.grade,
                    scope=self.spec.scope,
                    scope_id=str(self.scope_ids[scope_index]),
                    place=self.place(scope_index, members),
                    n_devices=area.n_devices,
                    grids=tuple(area.grids),
                    devices=tuple(area.devices),
                    window_s=self.spec.window_s,
                    suggest_plan=self.spec.suggest_plan,
                    new=new,
                    first_seen_ms=int(hits.min()),
                    last_seen_ms=int(hits.max()),
                )
            )
        return events

    def place(self, scope_index: int, members: npt.NDArray[Any]) -> dict[str, str | None]:
        reg = self.registry
        if self.spec.scope == "street":
            return {
                "street": str(reg.street_ids[scope_index]),
                "community": None,
                "grid": None,
                "building": None,
            }
        p = reg.place(int(members[0]))
        return {
            "street": p.street,
            "community": p.community,
            "grid": p.grid,
            "building": p.building,
        }

    def expire(self, now_wall: int) -> list[Area]:
        """Open areas no warning refreshed for ``clear_after_s``: they close."""
        gone = [a for a in self.areas.values() if now_wall - a.last_wall >= self.clear_ms]
        for a in gone:
            del self.areas[a.scope_index]
        return gone

    def scope_index(self, scope_id: str) -> int:
        hit = np.flatnonzero(self.scope_ids == scope_id)
        return int(hit[0]) if hit.size else -1
