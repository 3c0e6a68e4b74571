"""Detector parameters: one TOML tree, defaults in ``detectors/defaults.toml``.

The defaults file is the single source of every default (``docs/detectors.md`` explains
each key); the models below only state types and bounds, so a value is never hidden in
code. A user file holds just the keys it changes and is merged over the defaults, table
by table. Errors name the file, the key path, the value and the expectation::

    detectors.toml: elevator.entrapment_s = -5.0: must be > 0

>>> cfg = load_config(overrides={"elevator": {"entrapment_s": 20}})
>>> cfg.elevator.entrapment_s, cfg.sewage.window_readings
(20.0, 30)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.errors import ConfigError

RegistryBound = Literal["depth_m", "shaft_top_m", "rated_speed_mps"]
"""Registry-derived bounds for ``hi_ref``: ``shaft_top_m`` = (floors - 1) * floor_height_m."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChannelParams(_Model):
    """Generic checks of one numeric field of one device kind."""

    score: bool
    min_scale: float = Field(gt=0)
    stuck_readings: int | None = Field(default=None, ge=2)
    stuck_min_s: float | None = Field(default=None, ge=0)
    lo: float | None = None
    hi: float | None = None
    hi_ref: RegistryBound | None = None
    hi_ref_margin: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.lo is not None and self.hi is not None and self.lo >= self.hi:
            raise ValueError(f"lo ({self.lo}) must be < hi ({self.hi})")
        if (self.stuck_readings is None) != (self.stuck_min_s is None):
            raise ValueError("stuck_readings and stuck_min_s go together: give both or neither")
        if (self.hi_ref is None) != (self.hi_ref_margin is None):
            raise ValueError("hi_ref and hi_ref_margin go together: give both or neither")
        return self


class GenericParams(_Model):
    warmup_readings: int = Field(ge=3)
    alpha: float = Field(gt=0, le=1)
    trend_beta: float = Field(ge=0, lt=1)
    huber_k: float = Field(gt=0)
    score_z_lo: float = Field(ge=0)
    score_z_hi: float = Field(gt=0)
    emit_score: float = Field(gt=0, le=1)
    shift_z: float = Field(gt=0)
    shift_readings: int = Field(ge=1, le=100)
    offline_factor: float = Field(gt=1)
    offline_never_seen: bool
    series_min_scale: float = Field(gt=0)
    channels: dict[DeviceKind, dict[str, ChannelParams]]

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.score_z_hi <= self.score_z_lo:
            raise ValueError(
                f"score_z_hi ({self.score_z_hi}) must be > score_z_lo ({self.score_z_lo})"
            )
        for kind, chans in self.channels.items():
            names = {f.name: f for f in FIELDS[kind]}
            for name in chans:
                if name not in names:
                    raise ValueError(
                        f"channels.{kind.value}.{name}: {kind.value} has no field {name!r}; "
                        f"fields are {sorted(names)}"
                    )
                if names[name].dtype != "float32":
                    raise ValueError(
                        f"channels.{kind.value}.{name}: only float fields can be checked"
                    )
        return self


class ElevatorParams(_Model):
    stop_speed_mps: float = Field(gt=0)
    landing_tolerance_m: float = Field(gt=0)
    occupied_persons: float = Field(gt=0)
    occupied_load_kg: float | None = Field(default=None, gt=0)
    entrapment_s: float = Field(gt=0)
    landing_closed_s: float = Field(gt=0)
    stopped_between_s: float = Field(gt=0)
    overspeed_ratio: float = Field(gt=1)
    overspeed_score_ratio: float = Field(gt=1)
    door_moving_speed_mps: float = Field(gt=0)
    reopen_gap_s: float = Field(gt=0)
    reopen_cycles: int = Field(ge=2)
    unscheduled_stops: int = Field(ge=1)
    stop_window_s: float = Field(gt=0)
    vibration_alpha: float = Field(gt=0, le=1)
    vibration_warmup: int = Field(ge=2)
    vibration_min_rel_scale: float = Field(gt=0)
    cruise_min_ratio: float = Field(gt=0)
    cruise_max_ratio: float = Field(gt=0)
    cusum_k: float = Field(ge=0)
    cusum_h: float = Field(gt=0)
    vibration_hard_mps2: float = Field(gt=0)
    offline_factor: float = Field(gt=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.cruise_min_ratio >= self.cruise_max_ratio:
            raise ValueError(
                f"cruise_min_ratio ({self.cruise_min_ratio}) must be < "
                f"cruise_max_ratio ({self.cruise_max_ratio})"
            )
        if self.overspeed_score_ratio <= self.overspeed_ratio:
            raise ValueError(
                f"overspeed_score_ratio ({self.overspeed_score_ratio}) must be > "
                f"overspeed_ratio ({self.overspeed_ratio})"
            )
        return self


class ElevatorModelParams(_Model):
    enabled: bool
    model_path: str
    window_s: float = Field(gt=0)
    min_window_readings: int = Field(ge=1)
    emit_score: float = Field(gt=0, le=1)


class SewageParams(_Model):
    window_readings: int = Field(ge=4, le=1024)
    window_max_s: float = Field(gt=0)
    min_fit_readings: int = Field(ge=3)
    min_slope_mps: float = Field(gt=0)
    forecast_horizon_s: float = Field(gt=0)
    forecast_min_fraction: float = Field(ge=0, lt=1)
    level_fractions: list[float] = Field(min_length=1)
    rain_wet_mmph: float = Field(ge=0)
    rain_memory_s: float = Field(ge=0)
    dry_tau_s: float = Field(gt=0)
    dry_trend_tau_s: float = Field(gt=0)
    dry_trend_horizon_s: float = Field(ge=0)
    dry_warmup_windows: int = Field(ge=1)
    dry_stale_s: float = Field(gt=0)
    baseline_max_slope_m_per_h: float = Field(gt=0)
    blockage_rise_m: float = Field(gt=0)
    drain_slope_m_per_h: float = Field(ge=0)
    tilt_deg: float = Field(gt=0)
    flat_range_m: float = Field(ge=0)
    flat_readings: int = Field(ge=2)
    flat_min_s: float = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.min_fit_readings > self.window_readings:
            raise ValueError(
                f"min_fit_readings ({self.min_fit_readings}) must be <= "
                f"window_readings ({self.window_readings})"
            )
        if self.flat_readings > self.window_readings:
            raise ValueError(
                f"flat_readings ({self.flat_readings}) must be <= "
                f"window_readings ({self.window_readings})"
            )
        fr = self.level_fractions
        if any(not 0 < f <= 1 for f in fr) or fr != sorted(set(fr)):
            raise ValueError(f"level_fractions must rise strictly within (0, 1], got {fr}")
        return self


class HighfallParams(_Model):
    g_mps2: float = Field(gt=0)
    g_min_mps2: float = Field(gt=0)
    g_max_mps2: float = Field(gt=0)
    min_g_sigmas: float = Field(ge=0)
    min_points: int = Field(ge=4)
    max_points: int = Field(ge=4, le=4096)
    min_duration_s: float = Field(ge=0)
    min_drop_m: float = Field(gt=0)
    max_residual_m: float = Field(gt=0)
    max_horizontal_residual_m: float = Field(gt=0)
    max_horizontal_speed_mps: float = Field(gt=0)
    max_backtrack_s: float = Field(ge=0)
    track_timeout_s: float = Field(gt=0)
    max_tracks: int = Field(ge=16)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.g_min_mps2 < self.g_mps2 <= self.g_max_mps2:
            raise ValueError(
                f"need g_min_mps2 < g_mps2 <= g_max_mps2, got {self.g_min_mps2}, "
                f"{self.g_mps2}, {self.g_max_mps2}"
            )
        if self.min_points > self.max_points:
            raise ValueError(
                f"min_points ({self.min_points}) must be <= max_points ({self.max_points})"
            )
        return self


class DetectorConfig(_Model):
    generic: GenericParams
    elevator: ElevatorParams
    elevator_model: ElevatorModelParams
    sewage: SewageParams
    highfall: HighfallParams


def default_tree() -> dict[str, Any]:
    """The shipped defaults as a plain dict (what ``docs/detectors.md`` documents)."""
    text = resources.files("detectors").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        msg = msg.replace("Input should be", "must be").replace("Input", "value")
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {path}: unknown key")
        elif err["type"] == "missing":
            lines.append(f"{source}: {path}: missing")
        elif err["type"] in ("value_error", "assertion_error") and err["loc"]:
            lines.append(f"{source}: {path}: {msg}")
        elif err["loc"]:
            lines.append(f"{source}: {path} = {err['input']!r}: {msg}")
        else:
            lines.append(f"{source}: {msg}")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> DetectorConfig:
    """Defaults, then the file at ``path`` (if any), then ``overrides``; validated whole."""
    tree = default_tree()
    source = "defaults.toml"
    if path is not None:
        path = Path(path)
        source = path.name
        try:
            user = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: detector config file does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        tree = _merge(tree, user)
    if overrides:
        tree = _merge(tree, overrides)
        source = f"{source} (+ overrides)" if path is None else source
    try:
        return DetectorConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
