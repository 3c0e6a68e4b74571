"""The rules engine without storage: for-duration, hysteresis, dedup, inhibition, silences,
grade upgrades, area correlation, clearing and reloads, all on a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.domain import AlertKind, DeviceKind, Grade
from gridwatch.domain import DetectionKind as K
from gridwatch.registry import Registry
from rules.engine import OpenAlert, RulesEngine
from rules.load import RulesError, RuleSet
from rules.silences import Silence

Make = Callable[[str | RuleSet], RulesEngine]

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


def sewage(reg: Registry, n: int, start: int = 0) -> np.ndarray:
    return reg.devices_of_kind(DeviceKind.SEWAGE)[start : start + n]


def elevators(reg: Registry, n: int) -> np.ndarray:
    return reg.devices_of_kind(DeviceKind.ELEVATOR)[:n]


def overflow(dev: object, ts: int, tto: object) -> Detections:
    return Detections.of(K.OVERFLOW_FORECAST, dev, ts, 0.5, time_to_overflow_s=tto)  # type: ignore[arg-type]


def bind_all(engine: RulesEngine, changes: object, start: int = 1) -> list[int]:
    ids = list(range(start, start + len(changes.opened)))  # type: ignore[attr-defined]
    engine.bind(changes.opened, ids)  # type: ignore[attr-defined]
    return ids


def test_for_duration_must_hold_in_device_time(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=30, clear=300))
    d = sewage(small_registry, 1)
    t0 = clock.now_ms()
    opened = []
    for i in range(4):  # hits at 0, 10, 20, 30 s of device time
        opened += e.process(overflow(d, t0 + i * 10_000, 1000.0)).opened
        if i < 3:
            assert opened == []
    assert len(opened) == 1 and opened[0].first_seen_ms == t0 and opened[0].count == 4
    # Device time, not arrival time: a backlog of the same four hits in one batch fires too.
    e2 = make_engine(OVERFLOW.format(hyst=0, for_s=30, clear=300))
    batch = Detections.concat([overflow(d, t0 + i * 10_000, 1000.0) for i in (3, 1, 0, 2)])
    assert len(e2.process(batch).opened) == 1


def test_a_miss_resets_a_pending_condition(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=30, clear=300))
    d = sewage(small_registry, 1)
    t0 = clock.now_ms()
    seq = [1000.0, 1000.0, 9000.0, 1000.0, 1000.0, 1000.0]  # the third is far past every level
    fired_at = []
    for i, v in enumerate(seq):
        if e.process(overflow(d, t0 + i * 10_000, v)).opened:
            fired_at.append(i)
    assert fired_at == []  # the run after the miss spans only 20 s
    assert e.process(overflow(d, t0 + 60_000, 1000.0)).opened  # 30 s after the restart


def test_pending_expires_when_detections_stop(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=30, clear=60))
    d = sewage(small_registry, 1)
    t0 = clock.now_ms()
    e.process(overflow(d, t0, 1000.0))
    clock.advance(61)
    e.tick()
    # 61 s later the old pending start no longer counts: this hit starts over.
    assert not e.process(overflow(d, t0 + 61_000, 1000.0)).opened
    assert e.process(overflow(d, t0 + 91_000, 1000.0)).opened


def _noisy(e: RulesEngine, dev: np.ndarray, clock: ManualClock, steps: int) -> tuple[int, int]:
    rng = np.random.default_rng(42)
    t0 = clock.now_ms()
    opened = cleared = 0
    for i in range(steps):
        value = 1800.0 + rng.normal(0, 150.0)  # jitter around the red threshold
        ch = e.process(overflow(dev, t0 + i * 10_000, value))
        opened += len(ch.opened)
        bind_all(e, ch, start=1000 + i)
        clock.advance(10)
        cleared += len(e.tick().cleared)
    return opened, cleared


RED_ONLY = """
[rules.overflow_forecast]
alert = "overflow_imminent"
evidence = "time_to_overflow_s"
worse = "lower"
red = 1800
hysteresis = {hyst}
clear_after_s = {clear}
"""


def test_hysteresis_stops_flapping_on_a_noisy_signal_at_the_threshold(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    dev = sewage(small_registry, 1)
    flappy = make_engine(RED_ONLY.format(hyst=0, clear=0))
    opened, cleared = _noisy(flappy, dev, clock, 180)
    assert opened > 20 and cleared > 20  # without hysteresis it flaps, as expected
    steady = make_engine(RED_ONLY.format(hyst=600, clear=60))
    opened, cleared = _noisy(steady, dev, clock, 180)
    assert (opened, cleared) == (1, 0)
    # When the signal really goes away, it clears once.
    clock.advance(61)
    assert len(steady.tick().cleared) == 1


def test_dedup_1000_repeats_make_one_alert_and_count_them(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    d = sewage(small_registry, 1)
    t0 = clock.now_ms()
    ch = e.process(overflow(np.repeat(d, 400), t0 + np.arange(400) * 100, 1000.0))
    assert len(ch.opened) == 1 and ch.opened[0].count == 400
    bind_all(e, ch, start=7)
    for k in range(6):
        ch = e.process(
            overflow(np.repeat(d, 100), t0 + 40_000 + k * 10_000 + np.arange(100), 900.0)
        )
        assert not ch.opened and not ch.upgraded
    upd = e.drain_updates()
    assert upd.alert_id.tolist() == [7]
    assert ch.opened == [] and int(upd.count_delta.sum()) == 600  # 400 + 600 = 1000
    assert upd.last_seen_ms.tolist() == [t0 + 40_000 + 5 * 10_000 + 99]
    assert len(e.drain_updates()) == 0  # drained


def test_grade_upgrades_to_red_but_never_goes_back_down(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    d = sewage(small_registry, 1)
    t0 = clock.now_ms()
    ch = e.process(overflow(d, t0, 3000.0))
    assert ch.opened[0].grade is Grade.YELLOW
    bind_all(e, ch, start=5)
    up = e.process(overflow(d, t0 + 10_000, 1200.0)).upgraded
    assert [(u.alert_id, u.grade, u.value) for u in up] == [(5, Grade.RED, 1200.0)]
    assert up[0].evidence["time_to_overflow_s"] == 1200.0
    again = e.process(overflow(d, t0 + 20_000, 3000.0))
    assert not again.upgraded and not again.opened
    assert e.process(overflow(d, t0 + 30_000, 1000.0)).upgraded == []  # already red


def test_offline_inhibits_the_devices_other_alerts(
    make_engine: Make, small_registry: Registry, clock: ManualClock, default_rules: RuleSet
) -> None:
    e = make_engine(default_rules)
    dev = sewage(small_registry, 2)
    t0 = clock.now_ms()
    offline = Detections.of(K.OFFLINE, dev[:1], [t0], 1.0, silent_s=100.0)
    for i in range(7):  # offline must hold 60 s
        bind_all(e, e.process(Detections.of(K.OFFLINE, dev[:1], t0 + i * 10_000, 1.0)), 100 + i)
    assert offline  # built for clarity
    cover = Detections.of(K.COVER_DISPLACED, dev, t0 + 70_000, 1.0, tilt_deg=40.0)
    e.process(cover)
    ch = e.process(Detections.of(K.COVER_DISPLACED, dev, t0 + 80_000, 1.0, tilt_deg=40.0))
    assert [o.device_id for o in ch.opened] == [str(small_registry.device_ids[dev[1]])]
    assert e.stats.inhibited == 1
    # Once the device is back (offline cleared), the held-back alert opens on its next hit.
    clock.advance(130)
    assert len(e.tick().cleared) == 1
    ch = e.process(Detections.of(K.COVER_DISPLACED, dev[:1], t0 + 200_000, 1.0, tilt_deg=40.0))
    assert [o.alert for o in ch.opened] == [AlertKind.COVER_DISPLACED]


def test_building_power_outage_inhibits_its_elevators_offline_alerts(
    make_engine: Make, small_registry: Registry, clock: ManualClock, default_rules: RuleSet
) -> None:
    reg = small_registry
    b = int(reg.device_building[elevators(reg, 1)[0]])
    in_building = np.flatnonzero(reg.device_building == b).astype(np.int32)
    assert in_building.size >= 2
    e = make_engine(default_rules)
    t0 = clock.now_ms()
    opened = []
    for i in range(8):
        ch = e.process(Detections.of(K.OFFLINE, in_building, t0 + i * 10_000, 1.0))
        opened += ch.opened
        bind_all(e, ch, 10 * i + 1)
    kinds = [o.alert for o in opened]
    assert kinds == [AlertKind.POWER_OUTAGE]
    area = opened[0]
    assert (area.scope, area.scope_id) == ("building", str(reg.building_ids[b]))
    assert area.suggest_plan == "elevator_entrapment"
    assert area.place["grid"] == reg.grid_of(int(in_building[0]))
    assert e.stats.inhibited == in_building.size


def test_silence_holds_alerts_back_until_it_expires(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    dev = sewage(small_registry, 2)
    now = clock.now_ms()
    target = str(small_registry.device_ids[dev[0]])
    e.set_silences([Silence("device", target, now - 1, now + 60_000, "li", "pump works")])
    ch = e.process(overflow(dev, now, 1000.0))
    assert [o.scope_id for o in ch.opened] == [str(small_registry.device_ids[dev[1]])]
    clock.advance(30)
    assert not e.process(overflow(dev[:1], now + 30_000, 1000.0)).opened
    clock.advance(31)  # the silence is over: the condition still holds, so it opens now
    ch = e.process(overflow(dev[:1], now + 61_000, 1000.0))
    assert [(o.scope_id, o.first_seen_ms) for o in ch.opened] == [(target, now)]
    assert e.stats.silenced == 1


def test_grid_silence_for_one_alert_kind_spares_the_others(
    make_engine: Make, small_registry: Registry, clock: ManualClock, default_rules: RuleSet
) -> None:
    e = make_engine(default_rules)
    d = sewage(small_registry, 1)
    grid = small_registry.grid_of(int(d[0]))
    now = clock.now_ms()
    e.set_silences(
        [
            Silence(
                "grid",
                grid,
                now,
                now + 3_600_000,
                "li",
                "works",
                frozenset({AlertKind.COVER_DISPLACED}),
            )
        ]
    )
    opened = []
    for i in range(3):
        opened += e.process(Detections.of(K.COVER_DISPLACED, d, now + i * 10_000, 1.0)).opened
        opened += e.process(Detections.of(K.STUCK, d, now + i * 10_000, 1.0)).opened
    assert [o.alert for o in opened] == [AlertKind.SENSOR_STUCK]


def test_area_correlation_opens_one_street_event_that_suggests_the_plan(
    make_engine: Make, small_registry: Registry, clock: ManualClock, default_rules: RuleSet
) -> None:
    reg = small_registry
    sw = reg.devices_of_kind(DeviceKind.SEWAGE)
    street = reg.street_of_grid(reg.grid_of(int(sw[0])))
    on_street = sw[[reg.street_of_grid(reg.grid_of(int(d))) == street for d in sw]]
    # Eight warnings in one grid are not a street event (min_grids = 2)...
    one_grid = on_street[reg.device_grid[on_street] == reg.device_grid[on_street[0]]][:8]
    e = make_engine(default_rules)
    t0 = clock.now_ms()
    ch = e.process(Detections.of(K.LEVEL_HIGH, one_grid, t0, 0.9, level_fraction=0.9))
    assert not any(o.alert is AlertKind.URBAN_WATERLOGGING for o in ch.opened)
    # ...eight across grids of the street within 15 minutes are.
    grids = np.unique(reg.device_grid[on_street])[:2]
    spread = np.concatenate([on_street[reg.device_grid[on_street] == g][:4] for g in grids])
    assert np.unique(reg.device_grid[spread]).size >= 2
    opened = []
    for i, d in enumerate(spread):
        opened += e.process(
            Detections.of(K.LEVEL_HIGH, [d], t0 + 60_000 * i, 0.9, level_fraction=0.9)
        ).opened
    areas = [o for o in opened if o.alert is AlertKind.URBAN_WATERLOGGING]
    assert len(areas) == 1
    area = areas[0]
    assert (area.scope, area.scope_id, area.grade) == ("street", street, Grade.RED)
    assert area.suggest_plan == "urban_waterlogging"
    assert area.place == {"street": street, "community": None, "grid": None, "building": None}
    assert area.evidence["devices"] >= 8 and len(area.evidence["grids"]) >= 2
    # More warnings refresh the same event instead of opening another.
    more = e.process(
        Detections.of(K.LEVEL_HIGH, on_street[:20], t0 + 600_000, 0.9, level_fraction=0.9)
    )
    assert not any(o.alert is AlertKind.URBAN_WATERLOGGING for o in more.opened)


def test_non_auto_clear_alerts_stay_until_resolved_then_recur_as_new(
    make_engine: Make, small_registry: Registry, clock: ManualClock, default_rules: RuleSet
) -> None:
    e = make_engine(default_rules)
    el = elevators(small_registry, 1)
    t0 = clock.now_ms()
    ch = e.process(Detections.of(K.ENTRAPMENT, el, t0, 1.0, stopped_s=40.0))
    assert [o.grade for o in ch.opened] == [Grade.RED]
    bind_all(e, ch, 42)
    clock.advance(3600)
    assert e.tick().cleared == []  # auto_clear = false: a dispatcher must resolve it
    assert e.forget([42]) == 1
    again = e.process(Detections.of(K.ENTRAPMENT, el, t0 + 4_000_000, 1.0))
    assert len(again.opened) == 1


def test_restored_alerts_are_updated_not_reopened(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    d = sewage(small_registry, 1)
    did = str(small_registry.device_ids[d[0]])
    restored = e.restore(
        [
            OpenAlert(
                9,
                f"{did}:overflow_imminent",
                AlertKind.OVERFLOW_IMMINENT,
                Grade.YELLOW,
                "device",
                did,
                0,
                0,
            )
        ]
    )
    assert restored == 1
    ch = e.process(overflow(d, clock.now_ms(), 1000.0))
    assert ch.opened == [] and [u.alert_id for u in ch.upgraded] == [9]
    assert e.drain_updates().alert_id.tolist() == [9]


def test_split_and_shuffled_batches_open_the_same_alerts(
    make_engine: Make, small_registry: Registry, clock: ManualClock, default_rules: RuleSet
) -> None:
    rng = np.random.default_rng(3)
    dev = sewage(small_registry, 50)
    t0 = clock.now_ms()
    parts = [
        Detections.of(
            K.OVERFLOW_FORECAST,
            dev,
            t0 + i * 10_000,
            0.5,
            time_to_overflow_s=rng.uniform(500, 4000, dev.size),
        )
        for i in range(4)
    ]
    whole = Detections.concat(parts)
    shuffled = whole.take(rng.permutation(len(whole)))
    a = make_engine(default_rules).process(shuffled)
    b_engine = make_engine(default_rules)
    final: dict[str, tuple[Grade, int]] = {}
    by_id: dict[int, str] = {}
    for p in parts:
        ch = b_engine.process(p)
        for aid, o in zip(bind_all(b_engine, ch, 1 + len(by_id)), ch.opened, strict=True):
            by_id[aid] = o.dedup_key
            final[o.dedup_key] = (o.grade, o.first_seen_ms)
        for u in ch.upgraded:
            final[by_id[u.alert_id]] = (u.grade, final[by_id[u.alert_id]][1])
    # Same device alerts, same first-seen time and same (worst) grade. Within one batch the
    # engine collapses a device's repeats, so the alert opens at the batch's worst grade
    # where split batches open lower and upgrade; an area alert's first_seen depends on when
    # it triggered, so only device alerts are compared.
    key = sorted((o.dedup_key, o.grade, o.first_seen_ms) for o in a.opened if o.scope == "device")
    assert key == sorted((k, g, t) for k, (g, t) in final.items() if not k.startswith("street:"))
    assert len(key) > 10


def test_detections_without_a_rule_are_counted_not_alerted(
    make_engine: Make, small_registry: Registry, clock: ManualClock
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    ch = e.process(Detections.of(K.STUCK, sewage(small_registry, 3), clock.now_ms(), 1.0))
    assert not ch and e.stats.no_rule == 3


def test_a_bad_reload_keeps_the_rules_in_force(
    make_engine: Make, small_registry: Registry, clock: ManualClock, tmp_path: Path
) -> None:
    e = make_engine(OVERFLOW.format(hyst=0, for_s=0, clear=300))
    before = e.ruleset.digest
    bad = tmp_path / "rules.toml"
    bad.write_text(OVERFLOW.format(hyst=0, for_s=-1, clear=300))
    with pytest.raises(RulesError, match=r"rules.overflow_forecast.for_s = -1: must be >= 0"):
        e.reload(bad)
    assert e.ruleset.digest == before and e.stats.reload_failures == 1
    assert e.process(overflow(sewage(small_registry, 1), clock.now_ms(), 1000.0)).opened
    good = tmp_path / "good.toml"
    good.write_text(OVERFLOW.format(hyst=0, for_s=0, clear=300).replace("red = 1800", "red = 2400"))
    e.reload(good)
    assert e.ruleset.digest != before
    ch = e.process(overflow(sewage(small_registry, 1, 1), clock.now_ms(), 2000.0))
    assert [o.grade for o in ch.opened] == [Grade.RED]
