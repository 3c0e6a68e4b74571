"""Checkpoint versions: version 3 round-trips, a version-2 file (highfall open tracks as
points) is converted on load, anything else is refused without changing the detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.config import load_config
from detectors.detectorset import CHECKPOINT_VERSION, DetectorSet
from detectors.highfall import state_from_points
from gridwatch.domain import DeviceKind
from sim.fleet import FleetSpec, build_fleet
from tests.detectors.conftest import T0
from tests.detectors.test_highfall import version_2_state

CFG = load_config()


def as_version_2(state: dict, camera: int) -> dict:
    """``state`` as a version-2 checkpoint holding one open track of ``camera``."""
    out = {k: v for k, v in state.items() if not k.startswith("highfall/")}
    out["meta/version"] = np.array([2], np.int32)
    t = np.arange(0, 1.0, 0.05)  # 20 points, a 4.7 m drop
    h, x = 40 - 4.905 * t * t, 3 + 0.1 * t
    old = version_2_state(t, h, x, camera << 32 | 7, CFG.highfall.max_points)
    out.update({f"highfall/{k}": v for k, v in old.items()})
    return out


def test_version_2_checkpoint_is_converted(tmp_path: Path) -> None:
    reg = build_fleet(FleetSpec(n_devices=300, seed=2))
    camera = int(reg.devices_of_kind(DeviceKind.HIGHFALL)[0])
    ds = DetectorSet(reg, CFG)
    assert CHECKPOINT_VERSION == 3
    v2 = as_version_2(ds.state(), camera)
    path = tmp_path / "v2.npz"
    np.savez(path, **v2)
    ds.load(path)
    old = {k.removeprefix("highfall/"): v for k, v in v2.items() if k.startswith("highfall/")}
    want = state_from_points(old, CFG.highfall.max_points)
    got = ds.highfall.state()
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert ds.highfall.open_tracks == 1
    assert int(ds.state()["meta/version"][0]) == 3  # saved again in the new layout
    # the restored track closes on the timer and is fitted from its converted sums
    det = ds.highfall.tick(T0 + 60_000)
    assert len(det) == 1
    assert det.evidence["g_fit_mps2"][0] == pytest.approx(9.81, abs=0.01)
    assert ds.highfall.open_tracks == 0


@pytest.mark.parametrize("version", [1, 4])
def test_other_versions_are_refused_and_change_nothing(version: int) -> None:
    reg = build_fleet(FleetSpec(n_devices=300, seed=2))
    ds = DetectorSet(reg, CFG)
    before = ds.state()
    bad = dict(before)
    bad["meta/version"] = np.array([version], np.int32)
    with pytest.raises(ValueError, match=f"checkpoint version {version}, expected 3"):
        ds.load_state(bad)
    for k, v in before.items():
        np.testing.assert_array_equal(ds.state()[k], v, err_msg=k)


def test_unconvertible_version_2_highfall_state_is_refused() -> None:
    reg = build_fleet(FleetSpec(n_devices=300, seed=2))
    ds = DetectorSet(reg, CFG)
    v2 = as_version_2(ds.state(), int(reg.devices_of_kind(DeviceKind.HIGHFALL)[0]))
    v2["highfall/t_s_"] = v2["highfall/t_s_"][:, :3].T.copy()  # wrong shape
    with pytest.raises(ValueError, match="version-2 highfall state cannot be converted"):
        ds.load_state(v2)
