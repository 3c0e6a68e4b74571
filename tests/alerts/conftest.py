"""Fixtures for the alerts tests: every storage test runs on PostgreSQL and on SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from alerts.dispatch import Dispatcher, DispatchSettings
from alerts.service import AlertService
from gridwatch.clock import ManualClock
from gridwatch.registry import Registry
from rules.engine import RulesEngine
from rules.load import RuleSet, load_rules, parse_rules
from storage.engine import Storage
from storage.testing import temp_storage


@pytest.fixture(params=["postgres", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> Iterator[Storage]:
    """A migrated storage of each backend, dropped after the test."""
    with temp_storage(request.param, pg_url=pg_url, tmp_dir=tmp_path) as s:
        yield s


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000_000)


@pytest.fixture(scope="session")
def default_rules(small_registry: Registry) -> RuleSet:
    return load_rules(registry=small_registry)


DispatcherFactory = Callable[..., Dispatcher]


@pytest.fixture
def make_dispatcher(
    storage: Storage, small_registry: Registry, clock: ManualClock, default_rules: RuleSet
) -> DispatcherFactory:
    """A started dispatcher over ``storage``; ``rules`` may be TOML text or a RuleSet."""

    def make(rules: str | RuleSet | None = None, **settings: object) -> Dispatcher:
        rs = (
            default_rules
            if rules is None
            else parse_rules(rules)
            if isinstance(rules, str)
            else rules
        )
        engine = RulesEngine(rs, small_registry, clock)
        d = Dispatcher(storage, engine, settings=DispatchSettings(**settings))  # type: ignore[arg-type]
        d.start()
        return d

    return make


@pytest.fixture
def service(storage: Storage, small_registry: Registry, clock: ManualClock) -> AlertService:
    return AlertService(storage, small_registry, clock=clock)
