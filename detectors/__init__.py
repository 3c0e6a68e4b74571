"""detectors stage of gridwatch: columnar readings in, detections out (docs/detectors.md).

``DetectorSet`` is what the pipeline uses; the per-kind detectors follow one protocol
(``update``, ``tick``, ``state``, ``load_state``, ``from_config``).
"""

from __future__ import annotations

from detectors.alloc import tune_allocator
from detectors.config import DetectorConfig, load_config
from detectors.detectorset import DetectorSet
from detectors.elevator import ElevatorDetector
from detectors.generic import GenericDetector
from detectors.highfall import HighfallDetector
from detectors.sewage import SewageDetector

__all__ = [
    "DetectorConfig",
    "DetectorSet",
    "ElevatorDetector",
    "GenericDetector",
    "HighfallDetector",
    "SewageDetector",
    "load_config",
    "tune_allocator",
]
