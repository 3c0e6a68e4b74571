"""Fixtures for the rules tests: a small district, a manual clock, detection builders."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry
from rules.engine import RulesEngine
from rules.load import RuleSet, load_rules, parse_rules


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000_000)


@pytest.fixture(scope="session")
def default_rules(small_registry: Registry) -> RuleSet:
    return load_rules(registry=small_registry)


@pytest.fixture
def make_engine(
    small_registry: Registry, clock: ManualClock
) -> Callable[[str | RuleSet], RulesEngine]:
    def make(rules: str | RuleSet) -> RulesEngine:
        rs = parse_rules(rules) if isinstance(rules, str) else rules
        return RulesEngine(rs, small_registry, clock)

    return make


def devices(registry: Registry, kind: DeviceKind, n: int, start: int = 0) -> np.ndarray:
    return registry.devices_of_kind(kind)[start : start + n]


def det(
    kind: DetectionKind, device: object, ts_ms: object, score: object = 1.0, **ev: object
) -> Detections:
    return Detections.of(kind, device, ts_ms, score, **ev)  # type: ignore[arg-type]
