"""Resolving the rules tree: which settings apply to one detection kind in one grid.

A ``Rule`` is the flattened result of ``[defaults]``, ``[rules.K]`` and the street,
community and grid overrides on the device's path, remembering which level set each key
(``gridwatch rules explain`` prints that). Thresholds are compared strictly: with
``worse = "lower"`` and ``red = 1800``, a value of 1799.9 is red and 1800 is not.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from gridwatch.domain import AlertKind, DetectionKind, Grade
from rules.config import GRADED_KEYS, Defaults, RuleEntry

MISSING: Any = object()
"""Marks a problem about an absent key (there is no value to print)."""
Problem = tuple[str, Any, str]

_INHERITED = (
    "alert",
    "grade",
    "evidence",
    "worse",
    "red",
    "yellow",
    "green",
    "hysteresis",
    "min_score",
    "for_s",
    "clear_after_s",
    "auto_clear",
    "enabled",
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One detection kind's effective policy for one place.

    ``thresholds`` maps each graded level the file defines to its fire threshold on
    ``evidence``; the level holds (an open alert stays present) while the value is within
    ``hysteresis`` of the least severe threshold, so a signal jittering around a threshold
    neither re-fires nor clears.
    """

    detection: DetectionKind
    alert: AlertKind
    grade: Grade
    evidence: str | None
    worse: str
    thresholds: dict[Grade, float]
    hysteresis: float
    min_score: float
    for_s: float
    clear_after_s: float
    auto_clear: bool
    enabled: bool
    path: str
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def sign(self) -> float:
        """+1 when higher values are worse, -1 when lower are: ``sign * value`` grows with risk."""
        return 1.0 if self.worse == "higher" else -1.0

    def grade_of(self, value: float | None) -> Grade | None:
        """The grade a detection with this evidence value fires at; None below every level."""
        if self.evidence is None or value is None or math.isnan(value):
            return self.grade
        w = self.sign * value
        for g in (Grade.RED, Grade.YELLOW, Grade.GREEN):
            thr = self.thresholds.get(g)
            if thr is not None and w > self.sign * thr:
                return g
        return None

    def holds(self, value: float | None) -> bool:
        """True while an open alert's condition counts as still present (hysteresis band)."""
        if self.evidence is None or value is None or math.isnan(value):
            return True
        return self.sign * value > self.hold_level()

    def hold_level(self) -> float:
        """``sign * value`` above which the condition holds: least severe threshold minus band."""
        if not self.thresholds:
            return -math.inf
        least = min(self.sign * t for t in self.thresholds.values())
        return least - self.hysteresis

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "detection": self.detection.value,
            "alert": self.alert.value,
            "grade": self.grade.value,
            "evidence": self.evidence,
            "worse": self.worse,
            **{g.value: t for g, t in self.thresholds.items()},
            "hysteresis": self.hysteresis,
            "min_score": self.min_score,
            "for_s": self.for_s,
            "clear_after_s": self.clear_after_s,
            "auto_clear": self.auto_clear,
            "enabled": self.enabled,
        }
        return {k: v for k, v in out.items() if v is not None}


def merge(
    detection: DetectionKind,
    defaults: Defaults,
    layers: list[tuple[str, RuleEntry]],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Raw merged values and, per key, the path of the level that set it (later wins)."""
    values: dict[str, Any] = {
        k: getattr(defaults, k)
        for k in ("for_s", "clear_after_s", "auto_clear", "hysteresis", "min_score", "enabled")
    }
    sources = dict.fromkeys(values, "defaults")
    for path, entry in layers:
        for key in _INHERITED:
            v = getattr(entry, key)
            if v is not None:
                values[key] = v
                sources[key] = path
    return values, sources


def build_rule(
    detection: DetectionKind, values: dict[str, Any], sources: dict[str, str], path: str
) -> tuple[Rule | None, list[Problem]]:
    """A ``Rule`` from merged values, or the problems found: (key path, value, expectation).

    Problems are attributed to the level that set the offending key, so an override
    that breaks the threshold order is reported at the override, not at the root.
    """
    errs: list[Problem] = []

    def at(key: str) -> str:
        return f"{sources.get(key, path)}.{key}"

    if values.get("alert") is None:
        errs.append((f"{path}.alert", MISSING, "missing: every rule needs an alert kind"))
    thresholds = {Grade(k): float(values[k]) for k in GRADED_KEYS if values.get(k) is not None}
    evidence = values.get("evidence")
    worse = values.get("worse") or "higher"
    if thresholds and evidence is None:
        key = next(k for k in GRADED_KEYS if values.get(k) is not None)
        errs.append((at(key), values[key], 'a threshold needs an evidence key (evidence = "...")'))
    if evidence is not None and not thresholds:
        errs.append((at("evidence"), evidence, "needs at least one of red, yellow, green"))
    order = [g for g in (Grade.RED, Grade.YELLOW, Grade.GREEN) if g in thresholds]
    sign = 1.0 if worse == "higher" else -1.0
    for worse_g, better_g in itertools.pairwise(order):
        if not sign * thresholds[worse_g] > sign * thresholds[better_g]:
            rel = "above" if worse == "higher" else "below"
            errs.append(
                (
                    at(worse_g.value),
                    thresholds[worse_g],
                    f"must be {rel} {better_g.value} ({thresholds[better_g]:g}) "
                    f'because worse = "{worse}"',
                )
            )
    if evidence == "score":
        for g, t in thresholds.items():
            if not 0.0 <= t <= 1.0:
                errs.append((at(g.value), t, "a score threshold must be within [0, 1]"))
    grade = values.get("grade")
    if grade is None:
        if order:
            grade = order[-1]
        else:
            errs.append(
                (f"{path}.grade", MISSING, "missing: a rule without thresholds needs a grade")
            )
    if errs:
        return None, errs
    rule = Rule(
        detection=detection,
        alert=AlertKind(values["alert"]),
        grade=grade if isinstance(grade, Grade) else Grade(str(grade)),
        evidence=evidence,
        worse=worse,
        thresholds=thresholds,
        hysteresis=float(values["hysteresis"]),
        min_score=float(values["min_score"]),
        for_s=float(values["for_s"]),
        clear_after_s=float(values["clear_after_s"]),
        auto_clear=bool(values["auto_clear"]),
        enabled=bool(values["enabled"]),
        path=path,
        sources=sources,
    )
    return rule, []
