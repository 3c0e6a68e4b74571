"""Silences and maintenance windows compiled into per-device "silenced until" arrays.

A silence names a place (device, building, grid, community or street), optionally some
alert kinds, who set it and why, and a wall-clock window. Checking thousands of detections
against a handful of silences is then one gather and one comparison, not a loop.
Times here are the engine clock's (wall time), because people set silences in wall time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gridwatch.domain import AlertKind
from gridwatch.registry import Registry
from rules.table import ALERT_CODE

SCOPES: Final = ("device", "building", "grid", "community", "street")


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence; ``alerts`` empty means every alert kind. ``id`` is None for file windows."""

    scope: str
    target: str
    starts_ms: int
    ends_ms: int
    by: str
    reason: str
    alerts: frozenset[AlertKind] = field(default_factory=frozenset)
    id: int | None = None

    def active(self, now_ms: int) -> bool:
        return self.starts_ms <= now_ms < self.ends_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "target": self.target,
            "alerts": sorted(a.value for a in self.alerts),
            "starts_ms": self.starts_ms,
            "ends_ms": self.ends_ms,
            "by": self.by,
            "reason": self.reason,
        }


class SilenceIndex:
    """The silences active at ``now_ms``, as arrays; rebuild when ``next_change_ms`` passes."""

    def __init__(self, registry: Registry, silences: Iterable[Silence], now_ms: int) -> None:
        self.registry = registry
        self.silences = tuple(silences)
        self.built_ms = now_ms
        n = len(registry)
        self._all = np.zeros(n, dtype=np.int64)
        self._by_code: dict[int, npt.NDArray[np.int64]] = {}
        future = [s.starts_ms for s in self.silences if s.starts_ms > now_ms]
        ends = [s.ends_ms for s in self.silences if s.active(now_ms)]
        self.next_change_ms = min([*future, *ends], default=2**62)
        for s in self.silences:
            if not s.active(now_ms):
                continue
            devices = self._devices(s)
            if devices.size == 0:
                continue
            targets = [self._all] if not s.alerts else [self._code_array(a) for a in s.alerts]
            for arr in targets:
                np.maximum.at(arr, devices, s.ends_ms)

    def _code_array(self, kind: AlertKind) -> npt.NDArray[np.int64]:
        code = ALERT_CODE[kind]
        if code not in self._by_code:
            self._by_code[code] = np.zeros(len(self.registry), dtype=np.int64)
        return self._by_code[code]

    def _devices(self, s: Silence) -> npt.NDArray[np.int64]:
        reg = self.registry
        if s.scope == "device":
            i = int(reg.index_of([s.target])[0])
            return np.array([i] if i >= 0 else [], dtype=np.int64)
        ids, per_device = {
            "building": (reg.building_ids, reg.device_building),
            "grid": (reg.grid_ids, reg.device_grid),
            "community": (reg.community_ids, reg.grid_community[reg.device_grid]),
            "street": (
                reg.street_ids,
                reg.community_street[reg.grid_community[reg.device_grid]],
            ),
        }[s.scope]
        hit = np.flatnonzero(ids == s.target)
        if hit.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(per_device == hit[0]).astype(np.int64)

    def silenced(
        self, device: npt.NDArray[Any], acode: npt.NDArray[Any], now_ms: int
    ) -> npt.NDArray[np.bool_]:
        """Which (device, alert code) pairs are silenced at ``now_ms``."""
        out: npt.NDArray[np.bool_] = self._all[device] > now_ms
        for code, arr in self._by_code.items():
            out |= (acode == code) & (arr[device] > now_ms)
        return out

    def covers_area(self, scope: str, target: str, kind: AlertKind, now_ms: int) -> bool:
        """For area alerts (a building or street): a silence on that exact place silences it."""
        return any(
            s.active(now_ms)
            and s.scope == scope
            and s.target == target
            and (not s.alerts or kind in s.alerts)
            for s in self.silences
        )
