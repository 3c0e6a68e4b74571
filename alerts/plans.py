"""Emergency plans: the plans file (what each role does) and its validation.

The district runs five plan kinds (high-rise fire, urban waterlogging, elevator mass
entrapment / power outage, gas leak, geological hazard); the file can add or change
plans without code. Activation and tracking are in ``alerts.service``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from gridwatch.domain import Grade
from gridwatch.errors import ConfigError
from rules.load import validation_messages

DEFAULT_PLANS_PATH = Path(__file__).resolve().parent / "plans.toml"

Name = Annotated[str, Strict(), Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Text = Annotated[str, Strict(), Field(min_length=1, max_length=2000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskTemplate(_Model):
    """One role's instruction; ``within_min`` is the expected response time."""

    role: Name
    task: Text
    within_min: Annotated[float, Strict(), Field(gt=0)] | None = None


class Plan(_Model):
    title: Text
    grade: Grade = Grade.RED
    summary: Text
    tasks: list[TaskTemplate] = Field(min_length=1)

    def instructions(self) -> list[dict[str, Any]]:
        return [t.model_dump(exclude_none=True) for t in self.tasks]


class PlansFile(_Model):
    version: Literal[1] = 1
    plans: dict[Name, Plan] = Field(min_length=1)


class PlansError(ConfigError):
    def __init__(self, source: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def _model_at(path: str) -> type[BaseModel] | None:
    parts = path.split(".")
    if len(parts) == 1:
        return PlansFile
    if len(parts) == 3:
        return Plan
    if len(parts) == 4 and parts[2].startswith("tasks"):
        return TaskTemplate
    return None


def parse_plans(text: str, source: str = "plans.toml") -> PlansFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlansError(source, [f"{source}: not valid TOML: {exc}"]) from exc
    try:
        return PlansFile.model_validate(raw)
    except ValidationError as exc:
        raise PlansError(source, validation_messages(exc, raw, source, text, _model_at)) from exc


def load_plans(path: str | Path = DEFAULT_PLANS_PATH) -> PlansFile:
    """Read and check a plans file; ``PlansError`` lists every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlansError(str(path), [f"{path}: cannot read the plans file: {exc}"]) from exc
    return parse_plans(text, str(path))
