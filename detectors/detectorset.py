"""All detectors of a registry behind one object: what the pipeline calls.

``update(batch)`` routes a batch to its kind's detector and to the generic checks of that
kind; ``tick(now_ms)`` runs every timer check (offline devices, entrapments between an
idle car's reports, camera tracks without an ``end``); ``save``/``load`` checkpoint every
detector's state in one ``.npz`` file, stamped with the registry it belongs to so a
restart never resumes another fleet's state.

>>> from sim.fleet import FleetSpec, build_fleet
>>> ds = DetectorSet(build_fleet(FleetSpec(n_devices=200, seed=1)))
>>> len(ds.update(ReadingBatch.empty(DeviceKind.SEWAGE)))
0
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors._core import BatchPlan
from detectors.config import DetectorConfig, load_config
from detectors.elevator import ElevatorDetector
from detectors.generic import GenericDetector
from detectors.highfall import HighfallDetector, state_from_points
from detectors.sewage import SewageDetector
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 3
"""3: highfall open tracks as running sums (``moments_``, ``full_ms_``) instead of their
points; a version-2 checkpoint is converted on load (``highfall.state_from_points``).
2: elevator flags_ int32 with vib_n_ apart (1: int64 flags_ holding the counters; refused).
"""
_CONVERTIBLE = {2}


def registry_digest(registry: Registry) -> npt.NDArray[np.uint8]:
    """SHA-256 of the device ids and kinds in dense-index order (what state is indexed by)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(registry.device_ids.astype(np.bytes_)).tobytes())
    h.update(np.ascontiguousarray(registry.kind).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


class DetectorSet:
    """One detector per device kind plus the generic checks per kind.

    ``timings_s`` accumulates the seconds spent per detector (for metrics).
    """

    def __init__(self, registry: Registry, config: DetectorConfig | None = None) -> None:
        self.registry = registry
        self.config = config or load_config()
        c = self.config
        self.elevator = ElevatorDetector.from_config(registry, c.elevator, c.elevator_model)
        self.sewage = SewageDetector.from_config(registry, c.sewage)
        self.highfall = HighfallDetector.from_config(registry, c.highfall)
        self.specific: dict[DeviceKind, ElevatorDetector | SewageDetector | HighfallDetector] = {
            DeviceKind.ELEVATOR: self.elevator,
            DeviceKind.SEWAGE: self.sewage,
            DeviceKind.HIGHFALL: self.highfall,
        }
        self.generic = {k: GenericDetector.from_config(registry, k, c.generic) for k in DeviceKind}
        self._digest = registry_digest(registry)
        self.timings_s: dict[str, float] = {
            name: 0.0 for name in (*[k.value for k in DeviceKind], "generic", "tick")
        }

    @classmethod
    def from_config(
        cls,
        registry: Registry,
        path: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> DetectorSet:
        return cls(registry, load_config(path, overrides))

    # -- streaming ---------------------------------------------------------------

    def update(self, batch: ReadingBatch) -> Detections:
        """Detections of one batch: the kind's detector first, then the generic checks."""
        t0 = time.perf_counter()
        kind_det = self.specific[batch.kind]
        generic_det = self.generic[batch.kind]
        if len(batch) == 0:
            return Detections.empty()
        if isinstance(kind_det, HighfallDetector):  # it looks only at track points
            specific = kind_det.update(batch)
            t1 = time.perf_counter()
            generic = generic_det.update(batch)
        else:
            # one plan (local indexes, rounds in device order, permuted columns) for both
            plan = BatchPlan(batch, generic_det.index)
            specific = kind_det.update_plan(plan)
            t1 = time.perf_counter()
            generic = generic_det.update_plan(plan)
        t2 = time.perf_counter()
        self.timings_s[batch.kind.value] += t1 - t0
        self.timings_s["generic"] += t2 - t1
        return Detections.concat([specific, generic])

    def tick(self, now_ms: int) -> Detections:
        """Every timer check at ``now_ms`` (same time base as the readings' ``ts_ms``)."""
        t0 = time.perf_counter()
        parts = [d.tick(now_ms) for d in self.specific.values()]
        parts += [g.tick(now_ms) for g in self.generic.values()]
        self.timings_s["tick"] += time.perf_counter() - t0
        return Detections.concat(parts)

    # -- checkpoints ---------------------------------------------------------------

    def _parts(self) -> dict[str, Any]:
        return {
            **{k.value: d for k, d in self.specific.items()},
            **{f"generic.{k.value}": g for k, g in self.generic.items()},
        }

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Every detector's arrays under ``"<detector>/<name>"``, plus registry stamps."""
        out: dict[str, npt.NDArray[Any]] = {
            "meta/version": np.array([CHECKPOINT_VERSION], dtype=np.int32),
            "meta/registry_sha256": self._digest.copy(),
            "meta/n_devices": np.array([len(self.registry)], dtype=np.int64),
        }
        for name, det in self._parts().items():
            out.update({f"{name}/{k}": v for k, v in det.state().items()})
        return out

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore every detector; refuses state of another registry or layout, atomically."""
        version = state.get("meta/version")
        v = None if version is None else int(np.asarray(version).reshape(-1)[0])
        if v not in {CHECKPOINT_VERSION, *_CONVERTIBLE}:
            raise ValueError(
                f"detector checkpoint version {v}, expected {CHECKPOINT_VERSION} "
                f"(or {', '.join(map(str, sorted(_CONVERTIBLE)))}, converted on load)"
            )
        if v == 2:  # highfall kept each open track's points: now their running sums
            state = _highfall_points_to_moments(state, self.highfall.params.max_points)
        digest = np.asarray(state.get("meta/registry_sha256", np.zeros(0, np.uint8)))
        if digest.shape != self._digest.shape or not np.array_equal(digest, self._digest):
            n = state.get("meta/n_devices")
            raise ValueError(
                "detector checkpoint belongs to another registry "
                f"({None if n is None else int(np.asarray(n)[0])} devices; this one has "
                f"{len(self.registry)}): start without it or restore the matching registry"
            )
        parts = self._parts()
        split: dict[str, dict[str, npt.NDArray[Any]]] = {name: {} for name in parts}
        for key, value in state.items():
            if key.startswith("meta/"):
                continue
            name, _, sub = key.partition("/")
            if name not in split:
                raise ValueError(f"detector checkpoint has state for unknown detector {name!r}")
            split[name][sub] = value
        # Check every part on a copy first, so a bad checkpoint changes nothing.
        backup = {name: det.state() for name, det in parts.items()}
        try:
            for name, det in parts.items():
                det.load_state(split[name])
        except ValueError:
            for name, det in parts.items():
                det.load_state(backup[name])
            raise

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as fh:
            savez: Any = np.savez  # numpy's stub types **arrays as its keyword flags
            savez(fh, **self.state())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        log.info("detector checkpoint saved", extra={"path": str(path)})

    def load(self, path: str | Path) -> None:
        try:
            with np.load(Path(path), allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a detector checkpoint: {exc}") from exc
        self.load_state(state)
        log.info("detector checkpoint loaded", extra={"path": str(path)})


def _highfall_points_to_moments(
    state: Mapping[str, npt.NDArray[Any]], max_points: int
) -> dict[str, npt.NDArray[Any]]:
    """A version-2 checkpoint with its ``highfall/`` arrays in the version-3 layout."""
    prefix = "highfall/"
    old = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    try:
        new = state_from_points(old, max_points)
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"version-2 highfall state cannot be converted: {exc!r}") from exc
    out.update({prefix + k: v for k, v in new.items()})
    return out
