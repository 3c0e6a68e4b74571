"""Effective configuration: defaults < TOML file < ``GRIDWATCH_*`` environment < CLI flags.

Nothing needs configuring for the embedded default (in-process transport, SQLite under
``./data``, shipped rules and plans, a built-in simulated fleet). Nested keys map to
environment variables with ``__``: ``[storage] url`` is ``GRIDWATCH_STORAGE__URL``.
Errors name the key and the bad value; secrets are masked wherever settings are shown.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gridwatch.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("gridwatch.toml")
_PARTITION = re.compile(r"^(\d+)/(\d+)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    url: str | None = Field(
        default=None,
        description="mqtt://host:port or mqtts://host:port; unset = embedded in-process transport",
    )
    root: str = Field(default="gw", description="topic root (gw/v1/...)")
    client_id: str = Field(default="gridwatch-collector", description="persistent session id")
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = Field(default=None, description="CA bundle for mqtts://")
    qos: int = Field(default=1, ge=0, le=1, description="subscription QoS, 0 or 1")
    protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1",
        description="collector protocol: 3.1.1 costs paho ~40 % less CPU per message; its "
        "in-flight window is the broker's max_inflight_messages (docs/operations.md)",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v  # TOML ``protocol = 5``

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^mqtts?://[^/:]+(:\d+)?/?$", v):
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return v


class StorageSettings(_Section):
    url: str = Field(
        default="sqlite:///./data/gridwatch.db", description="sqlite:/// or postgresql://"
    )
    retention_days: int = Field(default=30, ge=1, description="days of raw readings kept")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith(("postgresql://", "postgres://"))):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v


class FilesSettings(_Section):
    rules: Path | None = Field(default=None, description="rules TOML; unset = shipped defaults")
    plans: Path | None = Field(default=None, description="plans TOML; unset = shipped defaults")
    registry: Path | None = Field(
        default=None, description="registry CSV/JSONL; unset = the simulated fleet's registry"
    )


class SimSettings(_Section):
    enabled: bool = Field(default=True, description="feed the pipeline from the built-in fleet")
    devices: int = Field(default=20_000, ge=1, description="simulated fleet size")
    speed: float = Field(default=1.0, gt=0, description="simulated seconds per wall second")
    seed: int = 20261126
    demo_faults: bool = Field(
        default=True,
        description="inject a first fault of every kind within the first minute (a newcomer "
        "sees alerts at once); the random faults start after the simulator's warm-up",
    )
    fault_scale: float = Field(default=1.0, ge=0, description="multiplies every fault rate")


class PipelineSettings(_Section):
    workers: int = Field(default=1, ge=1, le=64, description="worker processes (split by grid)")
    partition: str | None = Field(default=None, description="k/N: this process's share of grids")
    metrics_host: str = Field(default="127.0.0.1", description="address of /metrics and /status")
    metrics_port: int | None = Field(
        default=9108, ge=0, le=65535, description="Prometheus port; 0 = any free port, unset = off"
    )
    checkpoint_interval_s: float = Field(
        default=300.0, gt=0, description="detector state is saved this often (and at stop)"
    )
    tick_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="timer checks (offline, clears, escalation)"
    )
    max_future_s: float = Field(
        default=600.0,
        ge=0,
        description="readings further ahead of the clock are refused (ts_future); an "
        "accelerated simulator needs more",
    )
    resume_lookback_s: float = Field(
        default=900.0,
        ge=0,
        description="without a checkpoint, stored readings this recent are replayed through "
        "the detectors at start (a crash before the first checkpoint)",
    )
    health_timeout_s: float = Field(
        default=30.0, gt=0, description="a worker silent this long is killed and restarted"
    )
    writer_memory_rows: int = Field(
        default=500_000, ge=1000, description="readings the database writer holds in memory"
    )
    delay_storage_after_rows: int | None = Field(
        default=None,
        ge=0,
        description="with more readings than this waiting for the database, new ones go to the "
        "local backlog on disk first (storage is delayed, alerts are not); 0 = always write "
        "ahead to the local log (acknowledge after an fsync, commit to the database in large "
        "chunks behind); unset = 0 for PostgreSQL, 200000 for SQLite",
    )
    backlog_max_bytes: int = Field(
        default=8 << 30, ge=1 << 20, description="disk the storage backlog may use"
    )

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = _PARTITION.match(v)
        if not m or not int(m[1]) < int(m[2]):
            raise ValueError("must be k/N with 0 <= k < N, e.g. 0/2")
        return v


class ConsoleSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class Settings(BaseSettings):
    """All of gridwatch's settings; see ``docs/configuration.md`` for each key."""

    model_config = SettingsConfigDict(
        env_prefix="GRIDWATCH_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: Path = Path("data")
    mqtt: MqttSettings = MqttSettings()
    storage: StorageSettings = StorageSettings()
    files: FilesSettings = FilesSettings()
    sim: SimSettings = SimSettings()
    pipeline: PipelineSettings = PipelineSettings()
    console: ConsoleSettings = ConsoleSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with secrets and URL passwords replaced by ``***``."""
        data = self.model_dump(mode="json")
        if data["mqtt"]["password"] is not None:
            data["mqtt"]["password"] = "***"
        data["storage"]["url"] = mask_url(data["storage"]["url"])
        return data


def mask_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (or ``$GRIDWATCH_CONFIG``, or ./gridwatch.toml if present).

    ``overrides`` are CLI flags as nested dicts (``storage={"url": ...}``); they win over
    everything. Raises ``ConfigError`` naming the file, key and value on any mistake.
    """
    if path is None and os.environ.get("GRIDWATCH_CONFIG"):
        path = Path(os.environ["GRIDWATCH_CONFIG"])
    if path is None and DEFAULT_CONFIG_FILE.exists():
        path = DEFAULT_CONFIG_FILE
    source = str(path) if path else "configuration"
    if path is not None:
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        base = _FromFile()
    except ValidationError as exc:
        raise ConfigError(_explain(source, exc)) from exc
    if not overrides:
        return Settings.model_validate(base.model_dump())
    merged = _deep_merge(base.model_dump(), overrides)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain("command line", exc)) from exc


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _explain(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown setting")
        else:
            lines.append(f"{source}: {key} = {value!r}: {err['msg']}")
    return "; ".join(lines)


def parse_partition(value: str | None) -> tuple[int, int] | None:
    """``"1/3"`` -> ``(1, 3)``; None stays None (already validated by ``Settings``)."""
    if value is None:
        return None
    m = _PARTITION.match(value)
    if not m:
        raise ConfigError(f"partition {value!r}: must be k/N")
    return int(m[1]), int(m[2])
