"""The shared vocabulary of gridwatch: device kinds, reading fields, grades, alert kinds.

Every stage imports this module; it imports none of them (only the standard library),
so that sim, ingest, detectors, rules, alerts and storage agree on names without
depending on each other.

Field names carry their unit (``speed_mps``, ``level_m``) because they travel on the
wire to integrators, who must not have to guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final

ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
"""Ids travel in MQTT topics, so no ``/``, ``+``, ``#`` or spaces; 32 chars keeps topics short."""


class DeviceKind(StrEnum):
    """The three device streams that gridwatch watches first."""

    ELEVATOR = "elevator"
    SEWAGE = "sewage"
    HIGHFALL = "highfall"

    @property
    def code(self) -> int:
        """Small integer used in numpy arrays (``Registry.kind``)."""
        return _KIND_CODE[self]

    @classmethod
    def from_code(cls, code: int) -> DeviceKind:
        return _KINDS[code]


_KINDS: Final = (DeviceKind.ELEVATOR, DeviceKind.SEWAGE, DeviceKind.HIGHFALL)
_KIND_CODE: Final = {k: i for i, k in enumerate(_KINDS)}


class Grade(StrEnum):
    """Three-colour warning grade of the district's red/yellow/green mechanism.

    Green means recovered or informational; it never needs urgent action.
    """

    RED = "red"
    YELLOW = "yellow"
    GREEN = "green"

    @property
    def severity(self) -> int:
        """Higher is worse: red 2, yellow 1, green 0 (sort key for dispatch queues)."""
        return _SEVERITY[self]

    @classmethod
    def worst(cls, *grades: Grade) -> Grade:
        return max(grades, key=lambda g: g.severity)


_SEVERITY: Final = {Grade.RED: 2, Grade.YELLOW: 1, Grade.GREEN: 0}


class AlertKind(StrEnum):
    """What a dispatcher is told. Rules map detections to these."""

    TRAPPED_PASSENGER = "trapped_passenger"
    ELEVATOR_FAULT_WARNING = "elevator_fault_warning"
    OVERSPEED = "overspeed"
    DOOR_FAULT = "door_fault"
    VIBRATION_RISING = "vibration_rising"
    OVERFLOW_IMMINENT = "overflow_imminent"
    LEVEL_RISING = "level_rising"
    LEVEL_HIGH = "level_high"
    BLOCKAGE_SUSPECTED = "blockage_suspected"
    COVER_DISPLACED = "cover_displaced"
    FALLING_OBJECT = "falling_object"
    DEVICE_OFFLINE = "device_offline"
    SENSOR_STUCK = "sensor_stuck"
    READING_OUT_OF_RANGE = "reading_out_of_range"
    READING_ANOMALY = "reading_anomaly"
    URBAN_WATERLOGGING = "urban_waterlogging"
    POWER_OUTAGE = "power_outage"


class DetectionKind(StrEnum):
    """What a detector found. Detectors never grade; rules turn these into alerts.

    The integer code (position in this enum) is what ``Detections.kind`` arrays hold.
    """

    ENTRAPMENT = "entrapment"
    OVERSPEED = "overspeed"
    DOOR_OPEN_MOVING = "door_open_moving"
    DOOR_REOPEN_CYCLES = "door_reopen_cycles"
    STOP_FREQUENCY = "stop_frequency"
    VIBRATION_RISE = "vibration_rise"
    ELEVATOR_ANOMALY = "elevator_anomaly"
    OVERFLOW_FORECAST = "overflow_forecast"
    LEVEL_HIGH = "level_high"
    BLOCKAGE = "blockage"
    COVER_DISPLACED = "cover_displaced"
    FALLING_OBJECT = "falling_object"
    ANOMALY_SCORE = "anomaly_score"
    OUT_OF_RANGE = "out_of_range"
    STUCK = "stuck"
    OFFLINE = "offline"
    STOPPED_BETWEEN_FLOORS = "stopped_between_floors"

    @property
    def code(self) -> int:
        return _DETECTION_CODE[self]

    @classmethod
    def from_code(cls, code: int) -> DetectionKind:
        return _DETECTIONS[code]


_DETECTIONS: Final = tuple(DetectionKind)
_DETECTION_CODE: Final = {k: i for i, k in enumerate(_DETECTIONS)}


class DoorState(IntEnum):
    CLOSED = 0
    OPEN = 1


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One reading field of a device kind.

    ``lo``/``hi`` are the physical range: a value outside it is a broken sensor or a
    bad payload, never a real measurement, and ingest dead-letters it.
    ``required`` fields must be present in every reading (optional ones become NaN).
    ``dtype`` is the numpy dtype of the column in a ``ReadingBatch``.
    """

    name: str
    unit: str
    lo: float
    hi: float
    required: bool = True
    dtype: str = "float32"
    doc: str = ""


FIELDS: Final[dict[DeviceKind, tuple[FieldSpec, ...]]] = {
    DeviceKind.ELEVATOR: (
        FieldSpec("position_m", "m", -5.0, 500.0, doc="car floor height above the lowest landing"),
        FieldSpec("speed_mps", "m/s", -15.0, 15.0, doc="car speed, positive going up"),
        FieldSpec("vibration_mps2", "m/s^2", 0.0, 50.0, doc="car vibration RMS over the report"),
        FieldSpec("door_open", "0/1", 0.0, 1.0, doc="1 while the car door is open"),
        FieldSpec("occupancy", "persons", 0.0, 60.0, doc="people counted in the car"),
        FieldSpec("load_kg", "kg", 0.0, 6000.0, required=False, doc="car load cell"),
    ),
    DeviceKind.SEWAGE: (
        FieldSpec("level_m", "m", -0.5, 30.0, doc="water level above the manhole invert"),
        FieldSpec("tilt_deg", "deg", 0.0, 180.0, doc="manhole cover tilt from horizontal"),
        FieldSpec("rain_mmph", "mm/h", 0.0, 500.0, required=False, doc="local rain gauge"),
    ),
    DeviceKind.HIGHFALL: (
        FieldSpec(
            "track_id",
            "id",
            0.0,
            4294967295.0,
            dtype="int64",
            doc="camera-local track number; 0 marks a heartbeat without an object",
        ),
        FieldSpec("height_m", "m", -10.0, 600.0, required=False, doc="object height above ground"),
        FieldSpec("horizontal_m", "m", -500.0, 500.0, required=False, doc="along-facade position"),
        FieldSpec("end", "0/1", 0.0, 1.0, required=False, doc="1 on a track's last point"),
    ),
}
"""Reading fields per kind, in wire order. Times are never fields: every reading has ``ts_ms``."""


def field_names(kind: DeviceKind) -> tuple[str, ...]:
    return tuple(f.name for f in FIELDS[kind])


def field_spec(kind: DeviceKind, name: str) -> FieldSpec:
    for spec in FIELDS[kind]:
        if spec.name == name:
            return spec
    raise KeyError(f"{kind} has no field {name!r}; fields are {field_names(kind)}")


def valid_id(value: str) -> bool:
    """True when ``value`` is usable as a grid/device/... id inside an MQTT topic."""
    return bool(ID_PATTERN.match(value))
