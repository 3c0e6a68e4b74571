"""Console fixtures: a two-street district, its accounts, and a real alerts write path.

Every API test runs on PostgreSQL (a schema of its own) and on SQLite. Alerts are made
the way the pipeline makes them (detections -> rules engine -> dispatcher -> storage),
never by writing rows by hand, so the console is tested against what it will really see.

Accounts (password ``PASSWORD`` for all):

- ``ann``  dispatcher of ``s01c01g01`` (grid A)
- ``bob``  dispatcher of ``s01c01g02`` (grid A's neighbour on street s01)
- ``carl`` dispatcher of ``s02c01g01`` (grid B, another street)
- ``sue``  supervisor of street ``s01``
- ``tom``  supervisor of street ``s02``
- ``root`` admin
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alerts.console import ConsoleOptions, create_app
from alerts.console.passwords import ScryptCost, hash_password
from alerts.dispatch import Dispatcher
from alerts.service import AlertService
from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.domain import DetectionKind, DeviceKind
from gridwatch.registry import Registry
from rules.engine import RulesEngine
from rules.load import RuleSet, load_rules
from sim.fleet import FleetSpec, build_fleet
from storage import users
from storage.engine import Storage
from storage.testing import temp_storage

PASSWORD = "correct horse battery"
GRID_A = "s01c01g01"
GRID_A2 = "s01c01g02"
GRID_B = "s02c01g01"
STREET_A = "s01"
STREET_B = "s02"
TEST_COST = ScryptCost(n=2**10, r=8, p=1)
"""Cheap KDF for tests only: the suite signs in hundreds of times."""

ACCOUNTS: dict[str, dict[str, Any]] = {
    "ann": {"role": "dispatcher", "grids": [GRID_A]},
    "bob": {"role": "dispatcher", "grids": [GRID_A2]},
    "carl": {"role": "dispatcher", "grids": [GRID_B]},
    "sue": {"role": "supervisor", "street": STREET_A},
    "tom": {"role": "supervisor", "street": STREET_B},
    "root": {"role": "admin"},
}


@pytest.fixture(scope="session")
def district() -> Registry:
    """Two streets, two communities each, two grids per community: 8 grids, 3,200 devices."""
    return build_fleet(
        FleetSpec(n_devices=3200, n_streets=2, devices_per_grid=400, grids_per_community=2, seed=7)
    )


@pytest.fixture(scope="session")
def district_rules(district: Registry) -> RuleSet:
    return load_rules(registry=district)


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def pg_shared(pg_url: str) -> Iterator[Storage]:
    """One migrated PostgreSQL schema for the console tests, emptied before each test.

    Creating a schema and running the migrations takes ~0.8 s; emptying it ~0.05 s.
    """
    with temp_storage("postgres", pg_url=pg_url) as s:
        yield s


def empty_pg(st: Storage) -> None:
    """TRUNCATE every table of the schema (ids restart at 1) but the migration records."""
    from psycopg import sql

    with st.connection() as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
                "AND NOT c.relispartition "
                "AND c.relname NOT IN ('schema_migrations', 'storage_meta')"
            ).fetchall()
        ]
        conn.execute(
            sql.SQL("TRUNCATE TABLE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(n) for n in names)
            )
        )


@pytest.fixture
def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    """A migrated, empty store of ``backend``: PostgreSQL (shared schema) or a SQLite file."""
    if backend == "postgres":
        st: Storage = request.getfixturevalue("pg_shared")
        empty_pg(st)
        yield st
        return
    with temp_storage("sqlite", tmp_dir=tmp_path) as s:
        yield s


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_780_000_000_000)


def cheap_options(**overrides: Any) -> ConsoleOptions:
    return ConsoleOptions(scrypt=TEST_COST, **overrides)


@dataclass
class Env:
    """A console over a real store, with helpers to make alerts the pipeline's way."""

    storage: Storage
    registry: Registry
    clock: ManualClock
    rules: RuleSet
    app: FastAPI
    dispatcher: Dispatcher
    clients: list[TestClient] = field(default_factory=list)

    @property
    def service(self) -> AlertService:
        svc: AlertService = self.app.state.console.service
        return svc

    # -- alerts ----------------------------------------------------------------------

    def devices(self, grid: str, kind: DeviceKind) -> np.ndarray:
        reg = self.registry
        return np.flatnonzero((reg.device_grid == reg.grid_index(grid)) & (reg.kind == kind.code))

    def entrapment(self, grid: str, nth: int = 0, stopped_s: float = 40.0, floor: int = 7) -> int:
        """A red trapped-passenger alert on the ``nth`` elevator of ``grid``; its id."""
        dev = int(self.devices(grid, DeviceKind.ELEVATOR)[nth])
        det = Detections.of(
            DetectionKind.ENTRAPMENT,
            [dev],
            self.clock.now_ms(),
            1.0,
            stopped_s=stopped_s,
            floor_no=float(floor),
        )
        changes = self.dispatcher.handle(det)
        self.clock.advance(1)
        ids = [
            a.id
            for a in self.service.list_alerts(
                _everything(), device_id=str(self.registry.device_ids[dev]), limit=5
            ).items
            if a.state != "resolved"
        ]
        if not changes.opened or not ids:
            raise AssertionError(f"no alert opened for {self.registry.device_ids[dev]}")
        return ids[0]

    def overflow(self, grid: str, nth: int = 0, tto_s: float = 600.0) -> int:
        """An overflow-imminent alert (red under 30 min) on a manhole of ``grid``."""
        dev = int(self.devices(grid, DeviceKind.SEWAGE)[nth])
        for _ in range(3):  # for_s = 20: consecutive forecasts 10 s apart
            self.dispatcher.handle(
                Detections.of(
                    DetectionKind.OVERFLOW_FORECAST,
                    [dev],
                    self.clock.now_ms(),
                    0.8,
                    time_to_overflow_s=tto_s,
                    level_m=3.1,
                    overflow_level_m=4.0,
                )
            )
            self.clock.advance(10)
        page = self.service.list_alerts(
            _everything(), device_id=str(self.registry.device_ids[dev]), limit=5
        )
        if not page.items:
            raise AssertionError("no overflow alert opened")
        return page.items[0].id

    def waterlogging(self, street: str) -> int:
        """Level warnings across two grids of ``street``: the street-wide area alert."""
        reg = self.registry
        grids = reg.grids_of_street(street)[:2]
        devs = np.concatenate([self.devices(g, DeviceKind.SEWAGE)[:5] for g in grids])
        for d in devs:
            self.dispatcher.handle(
                Detections.of(
                    DetectionKind.LEVEL_HIGH, [int(d)], self.clock.now_ms(), 0.9, level_fraction=0.9
                )
            )
            self.clock.advance(5)
        page = self.service.list_alerts(_everything(), kinds=["urban_waterlogging"], limit=5)
        if not page.items:
            raise AssertionError(f"no waterlogging alert on {street}")
        return page.items[0].id

    # -- clients ---------------------------------------------------------------------

    def client(self) -> TestClient:
        c = TestClient(self.app)
        c.__enter__()
        self.clients.append(c)
        return c

    def login(self, name: str, password: str = PASSWORD) -> TestClient:
        """A client signed in as ``name``, sending its CSRF token on every request."""
        c = self.client()
        r = c.post("/api/auth/login", json={"name": name, "password": password})
        if r.status_code != 200:
            raise AssertionError(f"login {name}: {r.status_code} {r.text}")
        c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return c

    def bearer(self, name: str) -> TestClient:
        c = self.client()
        r = c.post("/api/auth/tokens", json={"name": name, "password": PASSWORD, "label": "t"})
        if r.status_code != 201:
            raise AssertionError(f"token {name}: {r.status_code} {r.text}")
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        return c


def _everything() -> Any:
    from alerts.model import Scope

    return Scope.everything()


def make_env(
    storage: Storage,
    registry: Registry,
    clock: ManualClock,
    rules: RuleSet,
    options: ConsoleOptions | None = None,
) -> Env:
    for name, spec in ACCOUNTS.items():
        users.create_user(
            storage,
            name=name,
            role=spec["role"],
            grids=spec.get("grids", ()),
            street=spec.get("street"),
            password_hash=hash_password(PASSWORD, TEST_COST),
            now_ms=clock.now_ms(),
        )
    service = AlertService(storage, registry, clock=clock)
    app = create_app(
        storage, registry, service=service, clock=clock, options=options or cheap_options()
    )
    dispatcher = Dispatcher(storage, RulesEngine(rules, registry, clock), clock=clock)
    dispatcher.start()
    return Env(storage, registry, clock, rules, app, dispatcher)


@pytest.fixture
def env(
    storage: Storage, district: Registry, clock: ManualClock, district_rules: RuleSet
) -> Iterator[Env]:
    e = make_env(storage, district, clock, district_rules)
    try:
        yield e
    finally:
        for c in e.clients:
            c.__exit__(None, None, None)


def write_readings(env: Env, device_id: str, minutes: int = 60, step_s: int = 10) -> int:
    """A plausible series for one device ending at the env clock; returns rows written."""
    from gridwatch.batch import ReadingBatch
    from gridwatch.domain import FIELDS
    from storage.rows import Rows
    from storage.sinks import make_sink

    reg = env.registry
    i = reg.index(device_id)
    kind = reg.kind_of(i)
    n = minutes * 60 // step_s
    ts = env.clock.now_ms() - np.arange(n, 0, -1, dtype=np.int64) * step_s * 1000
    t = np.linspace(0, 1, n)
    fields: dict[str, np.ndarray] = {}
    for spec in FIELDS[kind]:
        if spec.dtype == "int64":
            fields[spec.name] = np.zeros(n, np.int64)
        else:
            base = (spec.lo + spec.hi) / 2 if spec.lo < 0 else spec.hi * 0.1
            fields[spec.name] = (base * (0.5 + 0.5 * t) + 0.05 * base * np.sin(t * 40)).astype(
                np.float32
            )
    batch = ReadingBatch(kind, np.full(n, i, np.int32), ts, fields)
    keys = env.storage.save_registry(reg)  # readings are stored by device key
    sink = make_sink(env.storage)
    try:
        sink.write([Rows.from_batch(batch, keys)])
    finally:
        sink.close()
    return n


def app_routes(app: FastAPI) -> list[tuple[str, str, bool, object]]:
    """(method, full path, in OpenAPI, route) of every HTTP route, mounts excluded.

    FastAPI >= 0.13x keeps included routers as wrappers in ``app.routes``;
    ``iter_route_contexts`` flattens them (older versions list plain routes).
    """
    from starlette.routing import Mount

    try:
        from fastapi.routing import iter_route_contexts

        flat: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # pragma: no cover - older FastAPI
        flat = list(app.routes)
    out = []
    for r in flat:
        if isinstance(getattr(r, "route", r), Mount) or isinstance(r, Mount):
            continue
        path = r.path
        if path is None:
            raise AssertionError(f"route without a path: {r!r}")
        for m in sorted((r.methods or set()) - {"HEAD"}):
            out.append((m, path, bool(getattr(r, "include_in_schema", False)), r))
    return out


@pytest.fixture
def env_with(
    storage: Storage, district: Registry, clock: ManualClock, district_rules: RuleSet
) -> Iterator[Any]:
    """``env_with(**options)``: an Env whose console has non-default options."""
    made: list[Env] = []

    def make(**options: Any) -> Env:
        e = make_env(storage, district, clock, district_rules, options=cheap_options(**options))
        made.append(e)
        return e

    yield make
    for e in made:
        for c in e.clients:
            c.__exit__(None, None, None)
