"""Dispatch queues: order, competing consumers, leases, and a consumer dying mid-claim."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alerts.model import NotFoundError, Scope
from alerts.service import AlertService
from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.domain import DetectionKind as K
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from storage.engine import Storage

ALL = Scope.everything()
IMMEDIATE = """
[rules.entrapment]
alert = "trapped_passenger"
grade = "red"
auto_clear = false

[rules.stuck]
alert = "sensor_stuck"
grade = "yellow"

[notify.yellow]
group_wait_s = 0
group_interval_s = 0
"""


def fill(make_dispatcher: Any, reg: Registry, clock: ManualClock, n_red: int, n_yellow: int) -> str:
    """Red and yellow alert items in the queue of one grid; returns the grid."""
    d = make_dispatcher(IMMEDIATE)
    grid = str(reg.grid_ids[0])
    in_grid = reg.device_grid == reg.grid_index(grid)
    el = np.flatnonzero(in_grid & (reg.kind == DeviceKind.ELEVATOR.code))[:n_red]
    sw = np.flatnonzero(in_grid & (reg.kind == DeviceKind.SEWAGE.code))[:n_yellow]
    assert el.size == n_red and sw.size == n_yellow
    # Interleave yellow and red arrivals so that order by grade is not order by time.
    for i in range(max(n_red, n_yellow)):
        parts = []
        if i < n_yellow:
            parts.append(Detections.of(K.STUCK, sw[i : i + 1], clock.now_ms(), 1.0))
        if i < n_red:
            parts.append(Detections.of(K.ENTRAPMENT, el[i : i + 1], clock.now_ms(), 1.0))
        d.handle(Detections.concat(parts))
        clock.advance(1)
    return grid


def test_claims_come_red_first_then_oldest(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    grid = fill(make_dispatcher, small_registry, clock, n_red=3, n_yellow=3)
    items = service.claim(ALL, level="grid", queue=grid, consumer="a", limit=10)
    assert [i.severity for i in items] == [2, 2, 2, 1, 1, 1]
    assert [i.created_ms for i in items[:3]] == sorted(i.created_ms for i in items[:3])
    assert all(i.payload["kind"] for i in items) and all(len(i.alert_ids) == 1 for i in items)
    assert service.claim(ALL, level="grid", queue=grid, consumer="b") == []


def test_two_competing_consumers_share_without_overlap_or_loss(
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
) -> None:
    grid = fill(make_dispatcher, small_registry, clock, n_red=20, n_yellow=20)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    alerts: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def consume(name: str) -> None:
        try:
            svc = AlertService(storage, small_registry, clock=clock)
            barrier.wait()
            while True:
                items = svc.claim(ALL, level="grid", queue=grid, consumer=name, limit=3)
                if not items:
                    return
                claimed[name] += [i.id for i in items]
                alerts[name] += [a for i in items for a in i.alert_ids]
                acked = svc.ack_items([i.id for i in items], name)
                assert sorted(acked) == sorted(i.id for i in items)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(n,), name=f"consumer-{n}") for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert not set(claimed["a"]) & set(claimed["b"])  # nothing delivered to both
    assert not set(alerts["a"]) & set(alerts["b"])
    with storage.connection(readonly=True) as conn:
        all_items = conn.execute("SELECT id, status, attempts FROM dispatch_queue").fetchall()
        all_alerts = conn.execute("SELECT id FROM alerts").fetchall()
    assert sorted(claimed["a"] + claimed["b"]) == sorted(r[0] for r in all_items)  # none lost
    assert sorted(alerts["a"] + alerts["b"]) == sorted(r[0] for r in all_alerts)
    assert {(r[1], r[2]) for r in all_items} == {("done", 1)}


def test_a_lapsed_lease_is_redelivered_and_the_old_claim_cannot_ack(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    grid = fill(make_dispatcher, small_registry, clock, n_red=2, n_yellow=0)
    first = service.claim(ALL, level="grid", queue=grid, consumer="a", lease_s=30)
    assert len(first) == 2
    clock.advance(29)
    assert service.claim(ALL, level="grid", queue=grid, consumer="b") == []
    clock.advance(2)
    again = service.claim(ALL, level="grid", queue=grid, consumer="b", lease_s=30)
    assert [i.id for i in again] == [i.id for i in first]
    assert [i.attempts for i in again] == [2, 2]
    assert service.ack_items([i.id for i in first], "a") == []  # b owns them now
    assert service.ack_items([i.id for i in again], "b") == [i.id for i in again]
    depth = service.queue_depths(ALL)
    assert depth == []  # nothing ready, claimed or waiting


def test_release_gives_items_back_at_once(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    grid = fill(make_dispatcher, small_registry, clock, n_red=1, n_yellow=0)
    (item,) = service.claim(ALL, level="grid", queue=grid, consumer="a")
    assert service.release_items([item.id], "a") == 1
    assert [i.id for i in service.claim(ALL, level="grid", queue=grid, consumer="b")] == [item.id]


def test_a_queue_outside_the_scope_cannot_be_claimed(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    grid = fill(make_dispatcher, small_registry, clock, n_red=1, n_yellow=0)
    other = Scope.for_grids([str(small_registry.grid_ids[1])], small_registry)
    with pytest.raises(NotFoundError, match=f"queue grid '{grid}' does not exist or is outside"):
        service.claim(other, level="grid", queue=grid, consumer="x")
    assert service.queue_depths(other) == []
    assert [q["queue"] for q in service.queue_depths(Scope.for_grids([grid], small_registry))] == [
        grid
    ]


CONSUMER = textwrap.dedent(
    """
    import sys, time
    from alerts.model import Scope
    from alerts.service import AlertService
    from sim.fleet import FleetSpec, build_fleet
    from storage import open_storage

    url, schema, grid = sys.argv[1:4]
    storage = open_storage(url, schema=schema) if schema else open_storage(url)
    svc = AlertService(storage, build_fleet(FleetSpec(n_devices=2000, seed=7)))
    items = svc.claim(Scope.everything(), level="grid", queue=grid, consumer="doomed",
                      limit=100, lease_s=5)
    print(",".join(str(i.id) for i in items), flush=True)
    time.sleep(120)  # killed here: claimed, never acked
    """
)


def test_consumer_killed_between_claim_and_ack_gets_its_items_redelivered(
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
) -> None:
    grid = fill(make_dispatcher, small_registry, clock, n_red=4, n_yellow=2)
    schema = getattr(storage, "schema", "")
    url = storage.url if not schema else storage.url.split("?")[0]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, url, schema, grid],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        claimed = sorted(int(x) for x in line.split(",") if x)
        assert len(claimed) == 6, line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
    # The dead consumer's lease (system clock + 5 s) still holds for a live one right now...
    now = ManualClock(time.time_ns() // 1_000_000)
    svc = AlertService(storage, small_registry, clock=now)
    assert svc.claim(ALL, level="grid", queue=grid, consumer="live") == []
    # ...and once it has lapsed, every item comes back, in order, to the live consumer.
    now.advance(6)
    again = svc.claim(ALL, level="grid", queue=grid, consumer="live", limit=100)
    assert sorted(i.id for i in again) == claimed
    assert [i.severity for i in again] == [2, 2, 2, 2, 1, 1]
    assert sorted(svc.ack_items([i.id for i in again], "live")) == claimed
