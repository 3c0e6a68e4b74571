"""Ground truth of the simulator: what was injected, where and when.

A ``FaultLabel`` is written for every injected fault *and* for every labelled
distractor (a bird in front of a facade camera, a car stopped between floors for
inspection), because an evaluation needs both: recall is counted on faults, precision
suffers on distractors. ``FaultKind.is_fault`` tells them apart.

Rates are per device-hour of the kind that can have the fault; the defaults are set
for evaluation, not realism (about a thousand times what a real district sees) so that
a 50,000-device, two-hour replay holds dozens of every kind. ``docs/simulator.md``
lists them with the signature each one leaves in the readings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson

from gridwatch.domain import DeviceKind


class FaultKind(StrEnum):
    """Injected faults, then labelled look-alikes that are normal behaviour."""

    ENTRAPMENT = "entrapment"
    DOOR_FAULT = "door_fault"
    OVERSPEED = "overspeed"
    VIBRATION_WEAR = "vibration_wear"
    OVERFLOW = "overflow"
    BLOCKAGE = "blockage"
    COVER_DISPLACED = "cover_displaced"
    STUCK_SENSOR = "stuck_sensor"
    OFFLINE = "offline"
    FALLING_OBJECT = "falling_object"
    # distractors and confounders: labelled, but a detector must not alert on them
    BIRD = "bird"
    LEAF = "leaf"
    INSECT = "insect"
    RAIN_STREAK = "rain_streak"
    INSPECTION_STOP = "inspection_stop"
    DOOR_HELD = "door_held"

    @property
    def is_fault(self) -> bool:
        return self not in DISTRACTORS


DISTRACTORS: Final = frozenset(
    {
        FaultKind.BIRD,
        FaultKind.LEAF,
        FaultKind.INSECT,
        FaultKind.RAIN_STREAK,
        FaultKind.INSPECTION_STOP,
        FaultKind.DOOR_HELD,
    }
)

EL, SW, HF = DeviceKind.ELEVATOR, DeviceKind.SEWAGE, DeviceKind.HIGHFALL

DEFAULT_RATES: Final[Mapping[tuple[DeviceKind, FaultKind], float]] = {
    (EL, FaultKind.ENTRAPMENT): 0.005,
    (EL, FaultKind.DOOR_FAULT): 0.005,
    (EL, FaultKind.OVERSPEED): 0.005,
    (EL, FaultKind.VIBRATION_WEAR): 0.008,
    (EL, FaultKind.STUCK_SENSOR): 0.002,
    (EL, FaultKind.OFFLINE): 0.002,
    (EL, FaultKind.INSPECTION_STOP): 0.005,
    (EL, FaultKind.DOOR_HELD): 0.02,
    (SW, FaultKind.OVERFLOW): 0.0015,
    (SW, FaultKind.BLOCKAGE): 0.0015,
    (SW, FaultKind.COVER_DISPLACED): 0.001,
    (SW, FaultKind.STUCK_SENSOR): 0.0004,
    (SW, FaultKind.OFFLINE): 0.0004,
    (HF, FaultKind.FALLING_OBJECT): 0.0025,
    (HF, FaultKind.OFFLINE): 0.001,
    (HF, FaultKind.BIRD): 0.02,
    (HF, FaultKind.LEAF): 0.01,
    (HF, FaultKind.INSECT): 0.02,
    (HF, FaultKind.RAIN_STREAK): 0.2,
}
"""Events per device-hour. ``RAIN_STREAK`` is per camera-hour *while its street rains*."""


def rate_key(kind: DeviceKind, fault: FaultKind) -> str:
    """The key of a rate in ``SimSpec.rates`` and on the command line: ``sewage.overflow``."""
    return f"{kind.value}.{fault.value}"


def resolve_rates(
    overrides: Mapping[str, float] | None = None, scale: float = 1.0
) -> dict[tuple[DeviceKind, FaultKind], float]:
    """Defaults, overridden by ``{"kind.fault": rate}``; ``scale`` multiplies every rate.

    >>> resolve_rates({"sewage.overflow": 0.5})[(DeviceKind.SEWAGE, FaultKind.OVERFLOW)]
    0.5
    """
    if not scale >= 0:
        raise ValueError(f"fault rate scale must be >= 0, got {scale}")
    rates = dict(DEFAULT_RATES)
    valid = {rate_key(k, f): (k, f) for k, f in DEFAULT_RATES}
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ValueError(f"unknown fault rate {key!r}; known: {sorted(valid)}")
        if not value >= 0:
            raise ValueError(f"fault rate {key!r} must be >= 0 per device-hour, got {value}")
        rates[valid[key]] = float(value)
    return {k: v * scale for k, v in rates.items()}


@dataclass(frozen=True, slots=True)
class FaultLabel:
    """One injected fault or distractor.

    ``device`` is the dense registry index, ``start_ms``/``end_ms`` the window in which
    the readings carry the signature (epoch ms, end exclusive). ``extra`` holds what an
    evaluator needs per kind (``origin_floor``, ``overflow_ms``, ``track_id``, ...) and
    always ``observable_ms``: the earliest time by which the signature is plainly in the
    readings; a label with ``observable_ms`` after the end of a replay cannot be found.
    """

    device: int
    device_id: str
    kind: str
    start_ms: int
    end_ms: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_fault(self) -> bool:
        return FaultKind(self.kind).is_fault

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "device": self.device,
                "device_id": self.device_id,
                "kind": self.kind,
                "start_ms": self.start_ms,
                "end_ms": self.end_ms,
                "extra": self.extra,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def from_json(cls, line: bytes | str) -> FaultLabel:
        obj = orjson.loads(line)
        return cls(
            int(obj["device"]),
            str(obj["device_id"]),
            str(FaultKind(obj["kind"])),
            int(obj["start_ms"]),
            int(obj["end_ms"]),
            dict(obj.get("extra") or {}),
        )


def write_truth(labels: Iterable[FaultLabel], path: str | Path) -> int:
    """Write labels as JSON lines, ordered by start; returns how many."""
    rows = sorted(labels, key=lambda lb: (lb.start_ms, lb.device, lb.kind))
    with Path(path).open("wb") as fh:
        for lb in rows:
            fh.write(lb.to_json() + b"\n")
    return len(rows)


def read_truth(path: str | Path) -> list[FaultLabel]:
    out = []
    for lineno, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(FaultLabel.from_json(line))
        except (orjson.JSONDecodeError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}:{lineno}: not a fault label: {exc}") from exc
    return out


def json_values(values: Any) -> list[float | None]:
    """Numbers for a label's ``extra``: NaN becomes None (JSON null), so labels compare equal."""
    return [None if math.isnan(v) else float(v) for v in np.asarray(values, float).tolist()]


class LabelBook:
    """Labels of one simulation: closed ones, and open ones whose end is still planned.

    A fault's end is not always known when it starts (an entrapment ends when the
    rescue opens the doors), so a label is opened with its planned end and closed with
    the true one.
    """

    def __init__(self, device_ids: Any) -> None:
        self._ids = device_ids
        self._closed: list[FaultLabel] = []
        self._open: dict[tuple[int, str], FaultLabel] = {}
        self.n_faults = 0
        self.n_distractors = 0

    def _count(self, kind: FaultKind) -> None:
        if kind.is_fault:
            self.n_faults += 1
        else:
            self.n_distractors += 1

    def add(self, device: int, kind: FaultKind, start_ms: int, end_ms: int, **extra: Any) -> None:
        self._count(kind)
        self._closed.append(
            FaultLabel(device, str(self._ids[device]), kind.value, start_ms, end_ms, extra)
        )

    def open(
        self, device: int, kind: FaultKind, start_ms: int, planned_end_ms: int, **extra: Any
    ) -> None:
        self._count(kind)
        self._open[(device, kind.value)] = FaultLabel(
            device, str(self._ids[device]), kind.value, start_ms, planned_end_ms, extra
        )

    def close(self, device: int, kind: FaultKind, end_ms: int, **extra: Any) -> None:
        lb = self._open.pop((device, kind.value), None)
        if lb is not None:
            self._closed.append(
                FaultLabel(
                    lb.device, lb.device_id, lb.kind, lb.start_ms, end_ms, {**lb.extra, **extra}
                )
            )

    def is_open(self, device: int, kind: FaultKind) -> bool:
        return (device, kind.value) in self._open

    def labels(self, until_ms: int | None = None) -> list[FaultLabel]:
        """Every label (open ones with their planned end) that started by ``until_ms``."""
        rows = [*self._closed, *self._open.values()]
        if until_ms is not None:
            rows = [lb for lb in rows if lb.start_ms <= until_ms]
        return sorted(rows, key=lambda lb: (lb.start_ms, lb.device, lb.kind))
