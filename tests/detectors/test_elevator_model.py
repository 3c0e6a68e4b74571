"""Elevator window model: offline training, the model file, batched scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.config import load_config
from detectors.detectorset import DetectorSet
from detectors.elevator import ElevatorDetector
from detectors.elevator_model import FEATURES, TrainedModels, WindowCollector, fit_models
from gridwatch.cli import main as cli_main
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.fleet import FleetSpec, build_fleet


@pytest.fixture(scope="module")
def reg() -> Registry:
    return build_fleet(FleetSpec(n_devices=1_600, seed=3))


@pytest.fixture(scope="module")
def windows(reg: Registry) -> tuple[np.ndarray, np.ndarray]:
    cfg = load_config()
    sim = FleetSim(reg, SimSpec(seed=3, fault_scale=0.0))
    probe = ElevatorDetector(reg, cfg.elevator)
    col = WindowCollector(reg, probe.index, cfg.elevator_model.window_s, 10)
    det = ElevatorDetector(reg, cfg.elevator, window_model=col)
    end = sim.now_ms + 3_600_000
    while sim.now_ms < end:
        for b in sim.advance(sim.now_ms + 60_000):
            if b.kind is DeviceKind.ELEVATOR:
                det.update(b)
    return col.windows()


def test_windows_have_the_documented_features(windows: tuple[np.ndarray, np.ndarray]) -> None:
    x, cls = windows
    assert x.shape[1] == len(FEATURES)
    assert x.shape[0] > 500
    assert set(cls.tolist()) <= {"1.00", "1.75", "2.50"}
    assert np.isfinite(x).all()


def test_fitted_model_scores_an_odd_window_high(
    windows: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, cls = windows
    trained = fit_models(x, cls, 300.0, n_estimators=50, seed=1)
    path = tmp_path / "el.pkl"
    trained.save(path)
    back = TrainedModels.load(path)
    model = back.models["2.50"]
    typical = np.median(x[cls == "2.50"], axis=0)
    odd = typical.copy()
    odd[0] += 8.0  # vibration 8 sigmas above the car's baseline for a whole window
    odd[3] = 1.4  # and 40 % overspeed
    s_typ, s_odd = -model.score_samples(np.vstack([typical, odd]))
    assert s_typ < 0.45
    assert s_odd > s_typ + 0.08


def test_detectorset_scores_windows_with_a_trained_model(
    reg: Registry, windows: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, cls = windows
    path = tmp_path / "el.pkl"
    fit_models(x, cls, 300.0, n_estimators=50, seed=1).save(path)
    cfg = load_config(
        overrides={"elevator_model": {"enabled": True, "model_path": str(path), "emit_score": 0.5}}
    )
    ds = DetectorSet(reg, cfg)
    sim = FleetSim(reg, SimSpec(seed=4, fault_scale=0.0))
    got = []
    end = sim.now_ms + 1_800_000
    while sim.now_ms < end:
        for b in sim.advance(sim.now_ms + 30_000):
            got.append(ds.update(b))
    kinds = np.concatenate([g.kind for g in got])
    scores = np.concatenate([g.score for g in got])
    assert (kinds == DetectionKind.ELEVATOR_ANOMALY.code).any()  # windows were scored
    assert (scores[kinds == DetectionKind.ELEVATOR_ANOMALY.code] >= 0.5).all()
    # the window state checkpoints with the detector
    state = ds.state()
    assert any(k.startswith("elevator/model.") for k in state)
    ds2 = DetectorSet(reg, cfg)
    ds2.load_state(state)


def test_model_errors_are_config_errors(tmp_path: Path, reg: Registry) -> None:
    with pytest.raises(ConfigError, match=r"needs elevator_model\.model_path"):
        DetectorSet(reg, load_config(overrides={"elevator_model": {"enabled": True}}))
    with pytest.raises(ConfigError, match="no such file"):
        TrainedModels.load(tmp_path / "missing.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x04K\x01.")  # a pickled 1
    with pytest.raises(ConfigError, match="not a gridwatch elevator model"):
        TrainedModels.load(junk)


def test_train_command_writes_a_model(tmp_path: Path) -> None:
    out = tmp_path / "m.pkl"
    rc = cli_main(
        [
            "--log-level",
            "WARNING",
            "train",
            "elevator",
            "--out",
            str(out),
            "--devices",
            "800",
            "--hours",
            "0.5",
            "--estimators",
            "20",
        ]
    )
    assert rc == 0
    assert set(TrainedModels.load(out).models) == {"1.00", "1.75", "2.50"}
