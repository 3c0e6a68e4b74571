"""The alerts API: lifecycle with audit, scopes, pagination, silences, and emergency plans."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from alerts.model import NotFoundError, RequestError, Scope, TransitionError
from alerts.service import AlertService
from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.domain import DetectionKind as K
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from storage.engine import Storage

ALL = Scope.everything()


def entrapments(
    make_dispatcher: Any, reg: Registry, clock: ManualClock, grids: list[str], n: int
) -> None:
    d = make_dispatcher()
    for g in grids:
        el = np.flatnonzero(
            (reg.device_grid == reg.grid_index(g)) & (reg.kind == DeviceKind.ELEVATOR.code)
        )[:n]
        for dev in el:
            d.handle(Detections.of(K.ENTRAPMENT, [dev], clock.now_ms(), 1.0, stopped_s=40.0))
            clock.advance(1)


def test_lifecycle_with_audit_trail(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    grid = str(small_registry.grid_ids[0])
    entrapments(make_dispatcher, small_registry, clock, [grid], 1)
    (a,) = service.list_alerts(ALL).items
    assert a.state == "open" and a.escalation_due_ms is not None
    t_ack = clock.now_ms()
    a = service.ack(a.id, "wang.fang", ALL, note="calling the car")
    assert (a.state, a.acked_by, a.acked_ms, a.escalation_due_ms) == (
        "acknowledged",
        "wang.fang",
        t_ack,
        None,
    )
    clock.advance(60)
    a = service.start(a.id, "wang.fang", ALL, note="technician on site")
    clock.advance(600)
    with pytest.raises(RequestError, match="resolving an alert needs a note"):
        service.resolve(a.id, "wang.fang", ALL, note="  ")
    a = service.resolve(a.id, "wang.fang", ALL, note="passengers freed at L7")
    assert (a.state, a.resolution, a.resolved_by) == ("resolved", "resolved", "wang.fang")
    audit = service.get_alert(a.id, ALL).audit
    assert [(e.action, e.actor, e.from_state, e.to_state, e.note) for e in audit] == [
        ("opened", "gridwatch", None, "open", audit[0].note),
        ("acknowledged", "wang.fang", "open", "acknowledged", "calling the car"),
        ("started", "wang.fang", "acknowledged", "in_progress", "technician on site"),
        ("resolved", "wang.fang", "in_progress", "resolved", "passengers freed at L7"),
    ]
    assert [e.ts_ms for e in audit][1:] == [t_ack, t_ack + 60_000, t_ack + 660_000]
    with pytest.raises(TransitionError, match=f"alert {a.id} is resolved; cannot ack it"):
        service.ack(a.id, "wang.fang", ALL)


def test_start_is_allowed_from_open_and_ack_only_from_open(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    entrapments(make_dispatcher, small_registry, clock, [str(small_registry.grid_ids[0])], 1)
    (a,) = service.list_alerts(ALL).items
    a = service.start(a.id, "li", ALL)
    assert a.state == "in_progress" and a.acked_by == "li"  # starting acknowledges too
    with pytest.raises(TransitionError, match="cannot ack it \\(allowed from open\\)"):
        service.ack(a.id, "li", ALL)


def test_a_dispatcher_sees_and_acts_only_in_their_grids(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    reg = small_registry
    ga, gb = str(reg.grid_ids[0]), str(reg.grid_ids[1])
    entrapments(make_dispatcher, reg, clock, [ga, gb], 2)
    mine = Scope.for_grids([ga], reg)
    page = service.list_alerts(mine)
    assert {a.grid for a in page.items} == {ga} and len(page.items) == 2
    theirs = next(a for a in service.list_alerts(ALL).items if a.grid == gb)
    msg = f"alert {theirs.id} does not exist or is outside your grids"
    for call in (
        lambda: service.get_alert(theirs.id, mine),
        lambda: service.ack(theirs.id, "x", mine),
        lambda: service.start(theirs.id, "x", mine),
        lambda: service.resolve(theirs.id, "x", mine, note="n"),
    ):
        with pytest.raises(NotFoundError, match=msg):
            call()
    device = theirs.device_id or ""
    with pytest.raises(NotFoundError, match="outside your grids"):
        service.silence("x", mine, level="device", target=device, reason="r", duration_s=60)
    with pytest.raises(NotFoundError, match="outside your grids"):
        service.activate_plan("gas_leak", "x", mine, level="grid", area=gb)
    # The grids filter narrows a scope but never widens it.
    assert service.list_alerts(mine, grids=[gb]).items == ()


def test_pagination_walks_every_alert_once_in_board_order(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    reg = small_registry
    d = make_dispatcher()
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)[:60]
    el = reg.devices_of_kind(DeviceKind.ELEVATOR)[:25]
    for i in range(3):
        d.handle(Detections.of(K.STUCK, sw, clock.now_ms(), 1.0))
        if i == 0:
            d.handle(Detections.of(K.ENTRAPMENT, el, clock.now_ms(), 1.0))
        clock.advance(10)
    seen = []
    cursor = None
    pages = 0
    while True:
        page = service.list_alerts(ALL, limit=20, cursor=cursor, states=["open"])
        seen += page.items
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 85 == len({a.id for a in seen})
    keys = [(-1 if a.grade == "red" else -0, a.opened_ms) for a in seen]
    assert [a.grade for a in seen[:25]] == ["red"] * 25 and keys[25][0] == 0
    assert [a.opened_ms for a in seen[25:]] == sorted(
        (a.opened_ms for a in seen[25:]), reverse=True
    )
    with pytest.raises(RequestError, match="cursor = 'bogus': not a cursor"):
        service.list_alerts(ALL, cursor="bogus")
    with pytest.raises(RequestError, match=r"grades = \['purple'\]: must be among red"):
        service.list_alerts(ALL, grades=["purple"])
    reds = service.list_alerts(ALL, grades=["red"], limit=100).items
    assert len(reds) == 25


def test_silence_requests_are_validated(service: AlertService, small_registry: Registry) -> None:
    g = str(small_registry.grid_ids[0])
    with pytest.raises(RequestError, match="a silence needs a reason"):
        service.silence("li", ALL, level="grid", target=g, reason="", duration_s=60)
    with pytest.raises(RequestError, match="level = 'planet': must be one of device"):
        service.silence("li", ALL, level="planet", target=g, reason="r", duration_s=60)
    with pytest.raises(NotFoundError, match="grid 'nope' does not exist"):
        service.silence("li", ALL, level="grid", target="nope", reason="r", duration_s=60)
    with pytest.raises(RequestError, match="at most 30 days"):
        service.silence("li", ALL, level="grid", target=g, reason="r", duration_s=31 * 86_400)
    with pytest.raises(RequestError, match="exactly one of duration_s and ends_ms"):
        service.silence("li", ALL, level="grid", target=g, reason="r")
    s = service.silence(
        "li", ALL, level="grid", target=g, reason="r", duration_s=60, alerts=["level_high"]
    )
    assert [x.id for x in service.list_silences(ALL)] == [s.id]
    service.revoke_silence(s.id or 0, "li", ALL)
    assert service.list_silences(ALL) == []


def test_plan_activation_fans_out_to_every_grid_of_the_street_exactly_once(
    service: AlertService, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    reg = small_registry
    street = str(reg.street_ids[0])
    grids = sorted(reg.grids_of_street(street))
    results = []

    def activate() -> None:
        svc = AlertService(storage, reg, clock=clock)
        results.append(
            svc.activate_plan("urban_waterlogging", "zhang", ALL, level="street", area=street)
        )

    threads = [threading.Thread(target=activate, name=f"activate-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    again = service.activate_plan("urban_waterlogging", "zhang", ALL, level="street", area=street)
    assert len({r.id for r in results} | {again.id}) == 1
    assert again.grids == grids and again.acked == 0
    with storage.connection(readonly=True) as conn:
        items = conn.execute(
            "SELECT queue, item_kind, payload FROM dispatch_queue ORDER BY queue"
        ).fetchall()
    assert [(q, k) for q, k, _ in items] == [(g, "plan_task") for g in grids]
    assert '"role":"drainage_crew"' in items[0][2]
    # Each grid's dispatcher finds the task in their own queue and acknowledges it.
    for g in grids:
        mine = Scope.for_grids([g], reg)
        (task,) = service.claim(mine, level="grid", queue=g, consumer=f"console-{g}")
        assert task.payload["plan"] == "urban_waterlogging" and task.activation_id == again.id
        status = service.ack_plan_task(again.id, g, f"dispatcher-{g}", mine)
    assert status.acked == len(grids)
    assert {t["acked_by"] for t in status.tasks} == {f"dispatcher-{g}" for g in grids}
    with pytest.raises(TransitionError, match="already acknowledged"):
        service.ack_plan_task(again.id, grids[0], "x", ALL)
    closed = service.close_plan(again.id, "zhang", ALL, note="water receded")
    assert (
        closed.activation["state"] == "closed"
        and closed.activation["close_note"] == "water receded"
    )
    # Closed: a new activation of the same plan is a new one.
    new = service.activate_plan("urban_waterlogging", "zhang", ALL, level="street", area=street)
    assert new.id != again.id and new.acked == 0


def test_closing_a_plan_withdraws_tasks_nobody_took(
    service: AlertService, small_registry: Registry
) -> None:
    g = str(small_registry.grid_ids[2])
    s = service.activate_plan("gas_leak", "zhang", ALL, level="grid", area=g)
    assert [t["grid"] for t in s.tasks] == [g]
    service.close_plan(s.id, "zhang", ALL)
    assert service.claim(ALL, level="grid", queue=g, consumer="c") == []
    assert service.plan_status(s.id, ALL).tasks[0]["item_status"] == "cancelled"
    with pytest.raises(TransitionError, match="is already closed"):
        service.close_plan(s.id, "zhang", ALL)
    with pytest.raises(RequestError, match="plan 'flood' is not defined; plans are high_rise_fire"):
        service.activate_plan("flood", "zhang", ALL, level="grid", area=g)
    other = Scope.for_grids([str(small_registry.grid_ids[0])], small_registry)
    with pytest.raises(NotFoundError, match=f"plan activation {s.id} does not exist"):
        service.plan_status(s.id, other)
