"""The rules file as frozen pydantic models: what a dispatch centre's engineer edits.

Every model forbids unknown keys, so a typo (``for_sec``) is an error rather than a
silently ignored setting. Numbers are strict (``"30"`` is not 30 seconds). The file is a
tree, as in Alertmanager: ``[defaults]`` < ``[rules.<detection>]`` < ``[streets.S.<detection>]``
< ``[communities.C.<detection>]`` < ``[grids.G.<detection>]``; each level sets only what it
changes and inherits the rest (``rules.resolve`` merges them). ``docs/rules.md`` documents
every key with its default and the reason for it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

from gridwatch.domain import AlertKind, DetectionKind, Grade

Seconds = Annotated[float, Strict(), Field(ge=0)]
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), Field(min_length=1, max_length=500)]

DEFAULT_FOR_S = 0.0
DEFAULT_CLEAR_AFTER_S = 300.0
GRADED_KEYS = ("red", "yellow", "green")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Model):
    """Knobs every rule inherits unless it sets its own."""

    for_s: Seconds = DEFAULT_FOR_S
    clear_after_s: Seconds = DEFAULT_CLEAR_AFTER_S
    auto_clear: Flag = True
    hysteresis: Annotated[float, Strict(), Field(ge=0)] = 0.0
    min_score: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.0
    enabled: Flag = True


class RuleEntry(_Model):
    """One detection kind's policy at one level of the tree; unset keys inherit."""

    alert: AlertKind | None = None
    grade: Grade | None = None
    evidence: Annotated[str, Strict(), Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")] | None = None
    worse: Literal["higher", "lower"] | None = None
    red: Number | None = None
    yellow: Number | None = None
    green: Number | None = None
    hysteresis: Annotated[float, Strict(), Field(ge=0)] | None = None
    min_score: Annotated[float, Strict(), Field(ge=0, le=1)] | None = None
    for_s: Seconds | None = None
    clear_after_s: Seconds | None = None
    auto_clear: Flag | None = None
    enabled: Flag | None = None


Overrides = dict[DetectionKind, RuleEntry]

SilenceScope = Literal["device", "building", "grid", "community", "street"]


class SilenceSpec(_Model):
    """A maintenance window written in the rules file (ad-hoc silences live in storage)."""

    scope: SilenceScope
    target: Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9_.\-]{1,32}$")]
    alerts: list[AlertKind] = Field(default_factory=list)
    starts: Annotated[str, Strict()]
    ends: Annotated[str, Strict()]
    by: Text
    reason: Text


class InhibitSpec(_Model):
    """While a ``source`` alert is open in a scope, new ``targets`` alerts there are held back."""

    source: AlertKind
    targets: list[Annotated[str, Strict()]] = Field(min_length=1)
    scope: Literal["device", "building"] = "device"


class CorrelateSpec(_Model):
    """Many device warnings of one area within a window become one area alert."""

    alert: AlertKind
    grade: Grade = Grade.RED
    scope: Literal["building", "street"]
    sources: list[AlertKind] = Field(min_length=1)
    window_s: Annotated[float, Strict(), Field(gt=0)] = 900.0
    min_devices: Annotated[int, Strict(), Field(ge=1)] = 8
    min_grids: Annotated[int, Strict(), Field(ge=1)] = 1
    min_fraction: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.0
    clear_after_s: Seconds = 1800.0
    suggest_plan: Annotated[str, Strict(), Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")] | None = None


class EscalationStep(_Model):
    after_s: Annotated[float, Strict(), Field(gt=0)]
    to: Literal["community", "street"]


class EscalationSpec(_Model):
    """Timers on unacknowledged alerts; ``after_s`` counts from the time the alert turned red."""

    red: list[EscalationStep] = Field(
        default_factory=lambda: [
            EscalationStep(after_s=120.0, to="community"),
            EscalationStep(after_s=240.0, to="street"),
        ]
    )
    yellow_renotify_s: Annotated[float, Strict(), Field(gt=0)] | None = 1800.0


class NotifySpec(_Model):
    """Alertmanager-style grouping of queue notifications per (grid, alert kind)."""

    queue: Flag = True
    group_wait_s: Seconds = 0.0
    group_interval_s: Seconds = 0.0


def _default_notify() -> dict[Grade, NotifySpec]:
    return {
        Grade.RED: NotifySpec(),
        Grade.YELLOW: NotifySpec(group_wait_s=30.0, group_interval_s=300.0),
        Grade.GREEN: NotifySpec(queue=False),
    }


class RulesFile(_Model):
    """The whole file. Only ``rules`` is required."""

    version: Literal[1] = 1
    defaults: Defaults = Field(default_factory=Defaults)
    rules: Overrides
    streets: dict[str, Overrides] = Field(default_factory=dict)
    communities: dict[str, Overrides] = Field(default_factory=dict)
    grids: dict[str, Overrides] = Field(default_factory=dict)
    silences: list[SilenceSpec] = Field(default_factory=list)
    inhibit: list[InhibitSpec] = Field(default_factory=list)
    correlate: dict[str, CorrelateSpec] = Field(default_factory=dict)
    escalation: EscalationSpec = Field(default_factory=EscalationSpec)
    notify: dict[Grade, NotifySpec] = Field(default_factory=_default_notify)
