"""Multi-feature window scoring of elevators with an IsolationForest per elevator class.

Each car accumulates features over epoch-aligned windows of ``window_s`` (so every car's
windows line up and a batch split anywhere gives the same windows). When a reading
arrives in a later window, the finished windows of the batch are scored together with
one ``score_samples`` call per class: scoring is batched, fitting is offline
(``gridwatch train elevator``, ``fit_models``), on windows of normal operation.

A class is the rated speed (1.0, 1.75, 2.5 m/s cars differ in every feature). The
anomaly score is sklearn's ``-score_samples``: about 0.5 for typical windows, towards 1
for isolated ones.

Model files are pickles (sklearn estimators have no other complete format): load only
files you trained yourself.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from detectors._core import KindIndex, StateArrays
from detectors.config import ElevatorModelParams
from gridwatch.batch import Detections
from gridwatch.domain import DetectionKind
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry

FORMAT: Final = "gridwatch-elevator-iforest/2"
MS_PER_S = 1000
FEATURES: Final = (
    "vib_z_mean",
    "vib_z_std",
    "vib_z_max",
    "speed_ratio_max",
    "speed_ratio_std",
    "door_opens",
    "moving_share",
)
"""Window features, in column order (what the model was fitted on). Vibration enters as
its z against the car's own baseline for its motion state (the elevator detector's), so
a car with a naturally rougher ride is not an outlier for life."""


def class_key(rated_speed_mps: float) -> str:
    """Elevator class of a car: its rated speed, e.g. ``"1.75"``."""
    return f"{rated_speed_mps:.2f}"


@dataclass(frozen=True)
class TrainedModels:
    """What a model file holds: one fitted estimator per class and how it was fitted."""

    window_s: float
    models: dict[str, Any]
    features: tuple[str, ...] = FEATURES
    n_windows: dict[str, int] | None = None

    def save(self, path: str | Path) -> None:
        payload = {
            "format": FORMAT,
            "window_s": self.window_s,
            "features": list(self.features),
            "models": self.models,
            "n_windows": self.n_windows or {},
        }
        Path(path).write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def load(cls, path: str | Path) -> TrainedModels:
        path = Path(path)
        try:
            payload = pickle.loads(path.read_bytes())  # our own trained file (see module doc)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"elevator_model.model_path = {str(path)!r}: no such file "
                "(train one with `gridwatch train elevator`)"
            ) from exc
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ConfigError(f"{path}: not a gridwatch elevator model: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a gridwatch elevator model (format {FORMAT})")
        if tuple(payload["features"]) != FEATURES:
            raise ConfigError(
                f"{path}: model features {payload['features']} differ from {list(FEATURES)}"
            )
        return cls(
            float(payload["window_s"]),
            dict(payload["models"]),
            tuple(payload["features"]),
            dict(payload.get("n_windows", {})),
        )


class WindowAccumulator(StateArrays):
    """Running sums of one window per car; ``push`` returns the windows it closed."""

    def __init__(self, n: int, window_s: float) -> None:
        self.window_ms = int(window_s * MS_PER_S)
        self.win_id_ = np.full(n, -1, dtype=np.int64)
        self.count_ = np.zeros(n, dtype=np.int32)
        self.vib_n_ = np.zeros(n, dtype=np.int32)
        self.vib_sum_ = np.zeros(n, dtype=np.float64)
        self.vib_sq_ = np.zeros(n, dtype=np.float64)
        self.vib_max_ = np.full(n, -np.inf, dtype=np.float64)
        self.spd_n_ = np.zeros(n, dtype=np.int32)
        self.spd_sum_ = np.zeros(n, dtype=np.float64)
        self.spd_sq_ = np.zeros(n, dtype=np.float64)
        self.spd_max_ = np.zeros(n, dtype=np.float64)
        self.opens_ = np.zeros(n, dtype=np.int32)
        self.moving_n_ = np.zeros(n, dtype=np.int32)
        self.door_ = np.zeros(n, dtype=np.bool_)

    def push(  # noqa: PLR0917
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        vib_z: npt.NDArray[np.float64],
        ratio: npt.NDArray[np.float64],
        door_open: npt.NDArray[np.bool_],
        moving: npt.NDArray[np.bool_],
    ) -> tuple[
        npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int32]
    ]:
        """Add one reading per car (distinct ``loc``); the closed windows' features.

        Returns ``(loc, window_end_ms, features, reading_counts)`` of the windows that
        this push closed.
        """
        wid = ts // self.window_ms
        old = self.win_id_[loc]
        closing = np.flatnonzero((old >= 0) & (wid > old))
        c_loc = loc[closing]
        feats = self.features(c_loc)
        counts = self.count_[c_loc].copy()
        ends = (old[closing] + 1) * self.window_ms
        if closing.size:
            for name in ("count_", "vib_n_", "spd_n_", "opens_", "moving_n_"):
                getattr(self, name)[c_loc] = 0
            for name in ("vib_sum_", "vib_sq_", "spd_sum_", "spd_sq_", "spd_max_"):
                getattr(self, name)[c_loc] = 0.0
            self.vib_max_[c_loc] = -np.inf
        self.win_id_[loc] = wid
        self.count_[loc] += 1
        lv = vib_z
        okv = np.isfinite(lv)
        i = loc[okv]
        self.vib_n_[i] += 1
        self.vib_sum_[i] += lv[okv]
        self.vib_sq_[i] += lv[okv] ** 2
        self.vib_max_[i] = np.maximum(self.vib_max_[i], lv[okv])
        mv = np.flatnonzero(moving & np.isfinite(ratio))
        j = loc[mv]
        self.spd_n_[j] += 1
        self.spd_sum_[j] += ratio[mv]
        self.spd_sq_[j] += ratio[mv] ** 2
        self.spd_max_[j] = np.maximum(self.spd_max_[j], ratio[mv])
        self.moving_n_[loc] += moving
        self.opens_[loc] += door_open & ~self.door_[loc]
        self.door_[loc] = door_open
        return c_loc, ends, feats, counts

    def features(self, loc: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        vn = np.maximum(self.vib_n_[loc], 1)
        vmean = self.vib_sum_[loc] / vn
        vstd = np.sqrt(np.maximum(self.vib_sq_[loc] / vn - vmean**2, 0.0))
        sn = np.maximum(self.spd_n_[loc], 1)
        smean = self.spd_sum_[loc] / sn
        sstd = np.sqrt(np.maximum(self.spd_sq_[loc] / sn - smean**2, 0.0))
        vmax = np.where(self.vib_n_[loc] > 0, self.vib_max_[loc], vmean)
        share = self.moving_n_[loc] / np.maximum(self.count_[loc], 1)
        return np.column_stack(
            [vmean, vstd, vmax, self.spd_max_[loc], sstd, self.opens_[loc], share]
        ).astype(np.float64)


class WindowModel(StateArrays):
    """Scores finished windows of every car with its class's fitted model."""

    def __init__(
        self,
        registry: Registry,
        index: KindIndex,
        params: ElevatorModelParams,
        trained: TrainedModels,
    ) -> None:
        self.params = params
        self.index = index
        if abs(trained.window_s - params.window_s) > 1e-9:
            raise ConfigError(
                f"elevator_model.window_s = {params.window_s}: the model at "
                f"{params.model_path} was trained on {trained.window_s} s windows"
            )
        rated = registry.rated_speed_mps[index.devices]
        keys = np.array([class_key(float(r)) for r in rated.tolist()])
        self._class_names = sorted(trained.models)
        lookup = {k: i for i, k in enumerate(self._class_names)}
        self._class = np.array([lookup.get(k, -1) for k in keys.tolist()], dtype=np.int32)
        self._models = [trained.models[k] for k in self._class_names]
        self.acc = WindowAccumulator(index.size, params.window_s)

    @classmethod
    def from_config(
        cls, registry: Registry, index: KindIndex, params: ElevatorModelParams
    ) -> WindowModel:
        if not params.model_path:
            raise ConfigError(
                "elevator_model.enabled = true needs elevator_model.model_path "
                "(train one with `gridwatch train elevator`)"
            )
        return cls(registry, index, params, TrainedModels.load(params.model_path))

    def state(self) -> dict[str, npt.NDArray[Any]]:
        return self.acc.state()

    def load_state(self, state: Any) -> None:
        self.acc.load_state(state)

    def update(  # noqa: PLR0917
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        vib_z: npt.NDArray[np.float64],
        ratio: npt.NDArray[np.float64],
        door_open: npt.NDArray[np.bool_],
        moving: npt.NDArray[np.bool_],
        live: npt.NDArray[np.bool_],
    ) -> Detections:
        sel = np.flatnonzero(live)
        c_loc, ends, feats, counts = self.acc.push(
            loc[sel], ts[sel], vib_z[sel], ratio[sel], door_open[sel], moving[sel]
        )
        keep = np.flatnonzero(
            (counts >= self.params.min_window_readings) & (self._class[c_loc] >= 0)
        )
        if keep.size == 0:
            return Detections.empty()
        c_loc, ends, feats = c_loc[keep], ends[keep], feats[keep]
        score = np.zeros(keep.size, dtype=np.float64)
        cls = self._class[c_loc]
        for k in np.unique(cls).tolist():
            rows = np.flatnonzero(cls == k)
            score[rows] = -self._models[k].score_samples(feats[rows])
        hit = np.flatnonzero(score >= self.params.emit_score)
        if hit.size == 0:
            return Detections.empty()
        evidence = {f"{name}": feats[hit, i] for i, name in enumerate(FEATURES)}
        return Detections.of(
            DetectionKind.ELEVATOR_ANOMALY,
            self.index.devices[c_loc[hit]],
            ends[hit],
            score[hit],
            window_s=self.params.window_s,
            **{f"window_{k}": v for k, v in evidence.items()},
        )


class WindowCollector:
    """Collects finished windows' features instead of scoring them (offline training).

    Plugged into ``ElevatorDetector(window_model=...)``, so training sees exactly the
    features that scoring will see.
    """

    def __init__(
        self, registry: Registry, index: KindIndex, window_s: float, min_readings: int
    ) -> None:
        self.index = index
        self.min_readings = min_readings
        self.acc = WindowAccumulator(index.size, window_s)
        rated = registry.rated_speed_mps[index.devices]
        self._keys = np.array([class_key(float(r)) for r in rated.tolist()])
        self._features: list[npt.NDArray[np.float64]] = []
        self._classes: list[npt.NDArray[np.str_]] = []

    def state(self) -> dict[str, npt.NDArray[Any]]:
        return self.acc.state()

    def load_state(self, state: Any) -> None:
        self.acc.load_state(state)

    def update(  # noqa: PLR0917
        self,
        loc: npt.NDArray[np.intp],
        ts: npt.NDArray[np.int64],
        vib_z: npt.NDArray[np.float64],
        ratio: npt.NDArray[np.float64],
        door_open: npt.NDArray[np.bool_],
        moving: npt.NDArray[np.bool_],
        live: npt.NDArray[np.bool_],
    ) -> Detections:
        sel = np.flatnonzero(live)
        c_loc, _, feats, counts = self.acc.push(
            loc[sel], ts[sel], vib_z[sel], ratio[sel], door_open[sel], moving[sel]
        )
        keep = counts >= self.min_readings
        if keep.any():
            self._features.append(feats[keep])
            self._classes.append(self._keys[c_loc[keep]])
        return Detections.empty()

    def windows(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.str_]]:
        """Every finished window so far: ``(features, class keys)``."""
        if not self._features:
            return np.zeros((0, len(FEATURES))), np.zeros(0, dtype=np.str_)
        return np.concatenate(self._features), np.concatenate(self._classes)


def fit_models(
    features: npt.NDArray[np.float64],
    classes: npt.NDArray[np.str_],
    window_s: float,
    *,
    n_estimators: int = 200,
    seed: int = 0,
) -> TrainedModels:
    """One IsolationForest per class on normal-operation windows (offline training)."""
    from sklearn.ensemble import IsolationForest

    models: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for key in sorted(set(classes.tolist())):
        x = features[classes == key]
        if x.shape[0] < 16:
            continue
        models[key] = IsolationForest(n_estimators=n_estimators, random_state=seed, n_jobs=1).fit(x)
        counts[key] = int(x.shape[0])
    if not models:
        raise ValueError("no elevator class has >= 16 training windows; simulate longer")
    return TrainedModels(window_s, models, FEATURES, counts)
