"""Detections through the rules into durable alerts and dispatch queues, on both backends."""

from __future__ import annotations

from typing import Any

import numpy as np

from alerts.dispatch import Dispatcher
from alerts.model import Scope
from alerts.service import AlertService
from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.domain import AlertKind, DeviceKind
from gridwatch.domain import DetectionKind as K
from gridwatch.registry import Registry
from storage.engine import Storage

ALL = Scope.everything()
OVERFLOW = """
[rules.overflow_forecast]
alert = "overflow_imminent"
evidence = "time_to_overflow_s"
worse = "lower"
red = 1800
yellow = 3600
hysteresis = {hyst}
for_s = {for_s}
clear_after_s = {clear}
"""


def rows(storage: Storage, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with storage.connection(readonly=True) as conn:
        return [tuple(r) for r in conn.execute(storage.sql(sql), params).fetchall()]


def sewage(reg: Registry, n: int, start: int = 0) -> np.ndarray:
    return reg.devices_of_kind(DeviceKind.SEWAGE)[start : start + n]


def overflow(dev: object, ts: object, tto: object) -> Detections:
    return Detections.of(K.OVERFLOW_FORECAST, dev, ts, 0.5, time_to_overflow_s=tto)  # type: ignore[arg-type]


def step(d: Dispatcher, clock: ManualClock, det: Detections | None = None, s: float = 10) -> None:
    if det is not None:
        d.handle(det)
    clock.advance(s)
    d.tick()


def test_for_duration_then_one_alert_and_one_queue_item(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher(OVERFLOW.format(hyst=0, for_s=30, clear=300))
    dev = sewage(small_registry, 1)
    t0 = clock.now_ms()
    for i in range(3):
        step(d, clock, overflow(dev, t0 + i * 10_000, 1000.0))
        assert rows(storage, "SELECT count(*) FROM alerts") == [(0,)]
        assert rows(storage, "SELECT count(*) FROM dispatch_queue") == [(0,)]
    step(d, clock, overflow(dev, t0 + 30_000, 1000.0))
    assert rows(storage, "SELECT kind, grade, state, first_seen_ms, count FROM alerts") == [
        ("overflow_imminent", "red", "open", t0, 4)
    ]
    assert rows(storage, "SELECT level, queue, item_kind, severity FROM dispatch_queue") == [
        ("grid", small_registry.grid_of(int(dev[0])), "alert", 2)
    ]


def test_dedup_1000_detections_make_one_open_alert(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    dev = sewage(small_registry, 1)
    t0 = clock.now_ms()
    for k in range(10):
        batch = overflow(np.repeat(dev, 100), t0 + k * 10_000 + np.arange(100), 900.0 + k)
        step(d, clock, batch, s=1)
    d.close()
    assert rows(storage, "SELECT count(*), min(count), max(last_seen_ms) FROM alerts") == [
        (1, 1000, t0 + 90_000 + 99)
    ]
    assert rows(storage, "SELECT count(*) FROM dispatch_queue") == [(1,)]
    assert rows(storage, "SELECT action FROM alert_events") == [("opened",)]


def test_noisy_signal_at_the_threshold_makes_one_alert_not_a_flapping_series(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher(
        OVERFLOW.format(hyst=600, for_s=20, clear=120).replace("yellow = 3600\n", "")
    )
    dev = sewage(small_registry, 1)
    rng = np.random.default_rng(1)
    t0 = clock.now_ms()
    for i in range(180):  # 30 minutes of 10 s readings jittering around 1800 s
        step(d, clock, overflow(dev, t0 + i * 10_000, 1800.0 + rng.normal(0, 200.0)))
    assert rows(storage, "SELECT count(*), min(state) FROM alerts") == [(1, "open")]
    assert rows(storage, "SELECT count(*) FROM dispatch_queue WHERE item_kind = 'alert'") == [(1,)]
    clock.advance(121)
    d.tick()
    assert rows(storage, "SELECT state, resolution, resolved_by FROM alerts") == [
        ("resolved", "auto_cleared", "gridwatch")
    ]
    actions = rows(storage, "SELECT action FROM alert_events ORDER BY id")
    assert actions == [("opened",), ("escalated",), ("escalated",), ("auto_cleared",)]


def test_offline_inhibits_other_alerts_of_the_device(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher()
    dev = sewage(small_registry, 2)
    t0 = clock.now_ms()
    for i in range(8):
        step(d, clock, Detections.of(K.OFFLINE, dev[:1], t0 + i * 10_000, 1.0))
    for i in range(3):
        step(d, clock, Detections.of(K.COVER_DISPLACED, dev, t0 + 80_000 + i * 10_000, 1.0))
    got = rows(storage, "SELECT device_id, kind FROM alerts ORDER BY kind, device_id")
    ids = [str(small_registry.device_ids[i]) for i in dev]
    assert got == [(ids[1], "cover_displaced"), (ids[0], "device_offline")]


def test_silence_with_expiry_set_through_the_api(
    make_dispatcher: Any,
    service: AlertService,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
) -> None:
    d = make_dispatcher(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    dev = sewage(small_registry, 1)
    did = str(small_registry.device_ids[dev[0]])
    s = service.silence(
        "li.na", ALL, level="device", target=did, reason="pump swap", duration_s=120
    )
    assert s.id is not None and s.by == "li.na"
    d.poll_silences()
    t0 = clock.now_ms()
    for i in range(11):  # 110 s: still silenced
        step(d, clock, overflow(dev, t0 + i * 10_000, 1000.0))
    assert rows(storage, "SELECT count(*) FROM alerts") == [(0,)]
    step(d, clock, overflow(dev, t0 + 120_000, 1000.0))
    step(d, clock, overflow(dev, t0 + 130_000, 1000.0))
    assert rows(storage, "SELECT device_id, first_seen_ms FROM alerts") == [(did, t0)]
    assert [x.id for x in service.list_silences(ALL)] == []
    assert [x.id for x in service.list_silences(ALL, include_expired=True)] == [s.id]


def _red_alert(d: Dispatcher, small_registry: Registry, clock: ManualClock) -> int:
    el = small_registry.devices_of_kind(DeviceKind.ELEVATOR)[:1]
    d.handle(Detections.of(K.ENTRAPMENT, el, clock.now_ms(), 1.0, stopped_s=45.0))
    (aid,) = rows(d.storage, "SELECT id FROM alerts")[0]
    return int(aid)


def _escalations(storage: Storage) -> list[tuple[Any, ...]]:
    return rows(
        storage,
        "SELECT level, queue, item_kind FROM dispatch_queue WHERE item_kind IN "
        "('escalation', 'renotify') ORDER BY id",
    )


def test_red_escalates_to_community_then_street_on_time(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher()
    aid = _red_alert(d, small_registry, clock)
    comm, street = rows(storage, "SELECT community, street FROM alerts")[0]
    clock.advance(119)
    d.tick()
    assert _escalations(storage) == []
    clock.advance(1)
    d.tick()
    assert _escalations(storage) == [("community", comm, "escalation")]
    clock.advance(119)
    d.tick()
    assert len(_escalations(storage)) == 1
    clock.advance(1)
    d.tick()
    assert _escalations(storage)[1:] == [("street", street, "escalation")]
    clock.advance(3600)
    d.tick()
    assert len(_escalations(storage)) == 2  # the last step is the street
    notes = rows(
        storage,
        "SELECT action, note FROM alert_events WHERE alert_id = %s "
        "AND action = 'escalated' ORDER BY id",
        (aid,),
    )
    assert notes[0][1] == f"not acknowledged within 120 s: escalated to community {comm}"


def test_acknowledging_stops_escalation(
    make_dispatcher: Any,
    service: AlertService,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
) -> None:
    d = make_dispatcher()
    aid = _red_alert(d, small_registry, clock)
    clock.advance(60)
    service.ack(aid, "wang", ALL)
    clock.advance(600)
    d.tick()
    assert _escalations(storage) == []


def test_escalation_timer_survives_a_restart(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher()
    _red_alert(d, small_registry, clock)
    d.close()
    del d  # the process goes away with the timer due in 120 s
    clock.advance(300)
    fresh = make_dispatcher()
    fresh.tick()
    # Both overdue steps happen: community (due at 120 s) now; street (due at 240 s) too.
    fresh.tick()
    assert [r[0] for r in _escalations(storage)] == ["community", "street"]


def test_yellow_is_renotified_after_30_minutes(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher()
    dev = sewage(small_registry, 1)
    t0 = clock.now_ms()
    for i in range(3):
        step(d, clock, Detections.of(K.STUCK, dev, t0 + i * 10_000, 1.0))
    grid = small_registry.grid_of(int(dev[0]))
    clock.advance(1800 - 31)  # 1,799 s after the alert opened
    d.tick()
    assert _escalations(storage) == []
    clock.advance(1)
    d.tick()
    assert _escalations(storage) == [("grid", grid, "renotify")]


def test_grade_upgrade_is_durable_audited_and_notified(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    d = make_dispatcher(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    dev = sewage(small_registry, 1)
    t0 = clock.now_ms()
    step(d, clock, overflow(dev, t0, 3000.0))
    assert rows(storage, "SELECT grade, severity, esc_due_ms FROM alerts") == [
        ("yellow", 1, t0 + 1_800_000)
    ]
    step(d, clock, overflow(dev, t0 + 10_000, 1500.0))
    now = clock.now_ms() - 10_000
    assert rows(storage, "SELECT grade, severity, value, esc_due_ms FROM alerts") == [
        ("red", 2, 1500.0, now + 120_000)
    ]
    assert rows(storage, "SELECT action, grade FROM alert_events ORDER BY id") == [
        ("opened", "yellow"),
        ("upgraded", "red"),
    ]
    assert rows(storage, "SELECT item_kind, severity FROM dispatch_queue ORDER BY id") == [
        ("alert", 1),
        ("upgrade", 2),
    ]
    step(d, clock, overflow(dev, t0 + 20_000, 3000.0))
    assert rows(storage, "SELECT grade FROM alerts") == [("red",)]


def test_area_correlation_suggests_the_plan_to_every_grid_of_the_street(
    make_dispatcher: Any,
    service: AlertService,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
) -> None:
    reg = small_registry
    d = make_dispatcher()
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)
    street = reg.street_of_grid(reg.grid_of(int(sw[0])))
    grids = sorted(reg.grids_of_street(street))
    warn = np.concatenate([sw[reg.device_grid[sw] == reg.grid_index(g)][:2] for g in grids[:4]])
    t0 = clock.now_ms()
    step(d, clock, Detections.of(K.LEVEL_HIGH, warn, t0, 0.9, level_fraction=0.9))
    area = rows(
        storage,
        "SELECT id, kind, scope, scope_id, suggested_plan FROM alerts WHERE scope = 'street'",
    )
    assert [a[1:] for a in area] == [("urban_waterlogging", "street", street, "urban_waterlogging")]
    items = rows(
        storage,
        "SELECT level, queue FROM dispatch_queue WHERE item_kind = 'area_alert' "
        "ORDER BY level, queue",
    )
    assert items == [("grid", g) for g in grids] + [("street", street)]
    scope = Scope.for_grids([grids[0]], reg)
    sugg = service.plan_suggestions(scope)
    assert [(a.kind, a.suggested_plan) for a in sugg] == [
        ("urban_waterlogging", "urban_waterlogging")
    ]
    service.activate_plan(
        "urban_waterlogging",
        "zhang",
        ALL,
        level="street",
        area=street,
        source_alert_id=int(area[0][0]),
    )
    assert service.plan_suggestions(scope) == []


def test_yellow_alerts_of_one_grid_and_kind_are_grouped(
    make_dispatcher: Any,
    service: AlertService,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
) -> None:
    d = make_dispatcher()
    reg = small_registry
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)
    grid = reg.grid_of(int(sw[0]))
    same = sw[reg.device_grid[sw] == reg.grid_index(grid)][:3]
    t0 = clock.now_ms()
    for i, dev in enumerate(same):  # three stuck sensors, 5 s apart
        step(d, clock, Detections.of(K.STUCK, [dev], t0 + i * 5_000, 1.0), s=5)
    assert rows(storage, "SELECT count(*) FROM alerts") == [(3,)]
    depth = service.queue_depths(ALL)
    assert [(q["queue"], q["ready"], q["waiting"]) for q in depth] == [(grid, 0, 1)]
    assert service.claim(ALL, level="grid", queue=grid, consumer="c") == []
    clock.advance(15)  # 30 s after the first alert
    (item,) = service.claim(ALL, level="grid", queue=grid, consumer="c")
    assert len(item.alert_ids) == 3 and item.item_kind == "alert"
    # A fourth alert of the group after the notification waits for group_interval (5 min).
    step(d, clock, Detections.of(K.STUCK, same[:1] + 0, t0 + 40_000, 1.0), s=0)
    other = sw[reg.device_grid[sw] == reg.grid_index(grid)][3:4]
    step(d, clock, Detections.of(K.STUCK, other, t0 + 40_000, 1.0), s=0)
    waiting = rows(
        storage, "SELECT available_ms - created_ms FROM dispatch_queue WHERE claimed_by IS NULL"
    )
    assert waiting == [(300_000,)]


def test_restart_restores_open_alerts_without_duplicates(
    make_dispatcher: Any, storage: Storage, small_registry: Registry, clock: ManualClock
) -> None:
    text = OVERFLOW.format(hyst=0, for_s=0, clear=300)
    d1 = make_dispatcher(text)
    dev = sewage(small_registry, 3)
    t0 = clock.now_ms()
    step(d1, clock, overflow(dev, t0, 1000.0))
    d1.close()
    d2 = make_dispatcher(text)
    assert d2.stats.alerts_opened == 0
    step(d2, clock, overflow(dev, t0 + 10_000, 1000.0))
    d2.close()
    assert rows(storage, "SELECT count(*), sum(count) FROM alerts") == [(3, 6)]
    assert rows(storage, "SELECT count(*) FROM dispatch_queue") == [(3,)]


def test_resolved_by_a_dispatcher_then_recurring_opens_a_new_alert(
    make_dispatcher: Any,
    service: AlertService,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
) -> None:
    d = make_dispatcher(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    dev = sewage(small_registry, 1)
    t0 = clock.now_ms()
    step(d, clock, overflow(dev, t0, 1000.0))
    (aid,) = rows(storage, "SELECT id FROM alerts")[0]
    service.resolve(int(aid), "wang", ALL, note="cleared the grate")
    clock.advance(5)
    d.tick()  # polls resolutions
    step(d, clock, overflow(dev, t0 + 20_000, 1000.0))
    assert rows(storage, "SELECT state FROM alerts ORDER BY id") == [("resolved",), ("open",)]


def test_alert_kinds_of_all_three_device_kinds_reach_their_grids(
    make_dispatcher: Any, service: AlertService, small_registry: Registry, clock: ManualClock
) -> None:
    reg = small_registry
    d = make_dispatcher()
    t0 = clock.now_ms()
    el = reg.devices_of_kind(DeviceKind.ELEVATOR)[:1]
    hf = reg.devices_of_kind(DeviceKind.HIGHFALL)[:1]
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)[:1]
    d.handle(
        Detections.concat(
            [
                Detections.of(K.ENTRAPMENT, el, t0, 1.0),
                Detections.of(K.FALLING_OBJECT, hf, t0, 0.97, origin_floor=12.0),
                Detections.of(K.COVER_DISPLACED, sw, t0, 1.0, tilt_deg=30.0),
            ]
        )
    )
    clock.advance(10)
    d.handle(Detections.of(K.COVER_DISPLACED, sw, t0 + 10_000, 1.0, tilt_deg=30.0))
    page = service.list_alerts(ALL)
    got = {(a.kind, a.grade, a.grid) for a in page.items}
    assert got == {
        (AlertKind.TRAPPED_PASSENGER.value, "red", reg.grid_of(int(el[0]))),
        (AlertKind.FALLING_OBJECT.value, "red", reg.grid_of(int(hf[0]))),
        (AlertKind.COVER_DISPLACED.value, "red", reg.grid_of(int(sw[0]))),
    }
    falling = next(a for a in page.items if a.kind == "falling_object")
    assert falling.evidence["origin_floor"] == 12.0
