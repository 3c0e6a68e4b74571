"""Detector configuration: shipped defaults, merging, and pinned error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors.config import DetectorConfig, default_tree, load_config
from gridwatch.errors import ConfigError


def test_shipped_defaults_load_and_every_section_is_present() -> None:
    cfg = load_config()
    assert isinstance(cfg, DetectorConfig)
    assert set(default_tree()) == {"generic", "elevator", "elevator_model", "sewage", "highfall"}


def test_a_user_file_changes_only_its_keys(tmp_path: Path) -> None:
    f = tmp_path / "detectors.toml"
    f.write_text(
        "[elevator]\nentrapment_s = 20\n\n[generic.channels.sewage.level_m]\nscore = false\n"
    )
    cfg = load_config(f)
    assert cfg.elevator.entrapment_s == 20.0
    assert cfg.elevator.landing_closed_s == load_config().elevator.landing_closed_s
    level = cfg.generic.channels["sewage"]["level_m"]  # type: ignore[index]
    assert level.score is False
    assert level.hi_ref == "depth_m"  # merged, not replaced


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (
            {"elevator": {"entrapment_s": -5}},
            r"elevator\.entrapment_s = -5: must be greater than 0",
        ),
        ({"elevator": {"entrapmnt_s": 5}}, r"elevator\.entrapmnt_s: unknown key"),
        (
            {"sewage": {"window_readings": "many"}},
            r"sewage\.window_readings = 'many': must be a valid integer",
        ),
        (
            {"sewage": {"min_fit_readings": 40}},
            r"min_fit_readings \(40\) must be <= window_readings \(30\)",
        ),
        ({"sewage": {"level_fractions": [0.9, 0.8]}}, r"level_fractions must rise strictly"),
        ({"highfall": {"g_min_mps2": 10.0}}, r"need g_min_mps2 < g_mps2 <= g_max_mps2"),
        ({"generic": {"score_z_hi": 1.0}}, r"score_z_hi \(1.0\) must be > score_z_lo"),
        ({"generic": {"alpha": 1.5}}, r"generic\.alpha = 1.5: must be less than or equal to 1"),
        (
            {"generic": {"channels": {"sewage": {"level_m": {"stuck_readings": 3}}}}},
            r"stuck_readings and stuck_min_s go together",
        ),
        (
            {"elevator": {"cruise_min_ratio": 1.1}},
            r"cruise_min_ratio \(1.1\) must be < cruise_max_ratio",
        ),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_bound(over: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=over)


def test_every_error_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "detectors.toml"
    f.write_text("[elevator]\nentrapment_s = 0\noverspeed_ratio = 0.5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith("detectors.toml: elevator.entrapment_s = 0")
    assert any("elevator.overspeed_ratio = 0.5" in ln for ln in lines)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[elevator\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_models_are_frozen() -> None:
    cfg = load_config()
    with pytest.raises(ValueError, match="frozen"):
        cfg.elevator.entrapment_s = 1.0  # type: ignore[misc]
