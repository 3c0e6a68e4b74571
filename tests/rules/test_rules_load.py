"""Loading rules files: the shipped defaults, inheritance, and precise errors for mistakes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alerts.plans import load_plans
from gridwatch.domain import AlertKind, DetectionKind, DeviceKind, Grade
from gridwatch.registry import Registry
from rules.load import DEFAULT_RULES_PATH, RulesError, load_rules, parse_rules
from rules.table import RuleTable

BASE = """
[rules.overflow_forecast]
alert = "overflow_imminent"
evidence = "time_to_overflow_s"
worse = "lower"
red = 1800
yellow = 3600
for_s = 20
"""


def test_shipped_defaults_load_compile_and_cover_every_detection_kind(
    small_registry: Registry,
) -> None:
    plans = list(load_plans().plans)
    rs = load_rules(DEFAULT_RULES_PATH, registry=small_registry, plan_names=plans)
    assert set(rs.root) == set(DetectionKind)
    table = RuleTable.compile(rs, small_registry)
    # Every detection kind resolves in every grid to a rule with an alert kind.
    assert (table.rid >= 0).all()
    assert rs.resolve(DetectionKind.ENTRAPMENT).grade is Grade.RED
    assert rs.resolve(DetectionKind.ENTRAPMENT).auto_clear is False
    assert rs.file.escalation.red[0].after_s == 120
    assert rs.file.escalation.yellow_renotify_s == 1800
    assert {c.suggest_plan for c in rs.file.correlate.values()} <= set(plans)


def test_every_device_kind_has_alerts_in_the_defaults() -> None:
    rs = load_rules()
    alerts = {r.alert for r in rs.root.values()}
    assert {AlertKind.TRAPPED_PASSENGER, AlertKind.OVERSPEED} <= alerts  # elevator
    assert {AlertKind.OVERFLOW_IMMINENT, AlertKind.COVER_DISPLACED} <= alerts  # sewage
    assert AlertKind.FALLING_OBJECT in alerts  # highfall
    assert DeviceKind.ELEVATOR  # the three kinds are all covered above


def test_overrides_inherit_from_street_then_community_then_grid(small_registry: Registry) -> None:
    grid = str(small_registry.grid_ids[0])
    street = small_registry.street_of_grid(grid)
    comm = small_registry.community_of_grid(grid)
    text = (
        BASE
        + f"""
[streets.{street}.overflow_forecast]
red = 2400
clear_after_s = 900

[communities.{comm}.overflow_forecast]
for_s = 60

[grids.{grid}.overflow_forecast]
yellow = 4000
"""
    )
    rs = parse_rules(text, registry=small_registry)
    rule = rs.resolve(DetectionKind.OVERFLOW_FORECAST, street=street, community=comm, grid=grid)
    assert rule is not None
    assert rule.thresholds == {Grade.RED: 2400.0, Grade.YELLOW: 4000.0}
    assert rule.for_s == 60 and rule.clear_after_s == 900
    assert rule.path == f"grids.{grid}.overflow_forecast"
    assert rule.sources["red"] == f"streets.{street}.overflow_forecast"
    assert rule.sources["for_s"] == f"communities.{comm}.overflow_forecast"
    assert rule.sources["alert"] == "rules.overflow_forecast"
    other = rs.resolve(DetectionKind.OVERFLOW_FORECAST, street="elsewhere")
    assert other is not None and other.thresholds[Grade.RED] == 1800.0
    table = RuleTable.compile(rs, small_registry)
    g = small_registry.grid_index(grid)
    assert table.rules[table.rid[DetectionKind.OVERFLOW_FORECAST.code, g]].for_s == 60


def test_grading_is_strict_and_hysteresis_extends_the_hold_band() -> None:
    rs = parse_rules(BASE.replace("for_s = 20", "hysteresis = 600"))
    rule = rs.resolve(DetectionKind.OVERFLOW_FORECAST)
    assert rule is not None
    assert rule.grade_of(1799.0) is Grade.RED
    assert rule.grade_of(1800.0) is Grade.YELLOW
    assert rule.grade_of(3599.0) is Grade.YELLOW
    assert rule.grade_of(3600.0) is None
    assert rule.holds(4199.0) and not rule.holds(4200.0)
    assert rule.grade_of(float("nan")) is Grade.YELLOW  # no evidence: the base grade


def test_disabled_override_removes_the_rule_in_that_grid(small_registry: Registry) -> None:
    grid = str(small_registry.grid_ids[1])
    rs = parse_rules(BASE + f"\n[grids.{grid}.overflow_forecast]\nenabled = false\n")
    table = RuleTable.compile(rs, small_registry)
    col = table.rid[DetectionKind.OVERFLOW_FORECAST.code]
    assert col[small_registry.grid_index(grid)] == -1
    assert (np_other := col[small_registry.grid_index(str(small_registry.grid_ids[0]))]) >= 0
    assert np_other >= 0


# -- mistakes: each one names file, key path, value and expectation ---------------------------

MISTAKES = [
    pytest.param(
        BASE + "\n[grids.g12.overflow_forecast]\nfor_s = -5\n",
        "rules.toml: grids.g12.overflow_forecast.for_s = -5: must be >= 0 (line 11)",
        id="negative-duration",
    ),
    pytest.param(
        BASE.replace("for_s = 20", 'for_s = "20s"'),
        'rules.toml: rules.overflow_forecast.for_s = "20s": must be a number of seconds (line 8)',
        id="duration-as-string",
    ),
    pytest.param(
        BASE + '\n[rules.overflow]\nalert = "level_high"\ngrade = "red"\n',
        "rules.toml: rules.overflow: unknown detection kind; expected one of entrapment,",
        id="unknown-detection-kind",
    ),
    pytest.param(
        BASE.replace('alert = "overflow_imminent"', 'alert = "flood"'),
        'rules.toml: rules.overflow_forecast.alert = "flood": not an alert kind; expected one of '
        "trapped_passenger,",
        id="unknown-alert-kind",
    ),
    pytest.param(
        BASE.replace("for_s = 20", "for_sec = 20"),
        "rules.toml: rules.overflow_forecast.for_sec = 20: unknown key; expected one of alert, "
        "grade, evidence,",
        id="misspelt-key",
    ),
    pytest.param(
        BASE.replace("red = 1800", "red = 4000"),
        "rules.toml: rules.overflow_forecast.red = 4000: must be below yellow (3600) because "
        'worse = "lower"',
        id="thresholds-out-of-order",
    ),
    pytest.param(
        BASE.replace('evidence = "time_to_overflow_s"\n', ""),
        "rules.toml: rules.overflow_forecast.red = 1800: a threshold needs an evidence key",
        id="threshold-without-evidence",
    ),
    pytest.param(
        BASE.replace('worse = "lower"', 'worse = "smaller"'),
        "rules.toml: rules.overflow_forecast.worse = \"smaller\": must be 'higher' or 'lower'",
        id="bad-direction",
    ),
    pytest.param(
        BASE + '\n[rules.stuck]\ngrade = "amber"\nalert = "sensor_stuck"\n',
        "rules.toml: rules.stuck.grade = \"amber\": must be one of 'red', 'yellow' or 'green'",
        id="bad-grade",
    ),
    pytest.param(
        BASE + '\n[rules.stuck]\ngrade = "yellow"\n',
        "rules.toml: rules.stuck.alert: missing: every rule needs an alert kind",
        id="rule-without-alert",
    ),
    pytest.param(
        BASE + "\n[streets.s01.level_high]\nfor_s = 5\n",
        "rules.toml: streets.s01.level_high: overrides nothing: there is no [rules.level_high]",
        id="override-of-undefined-rule",
    ),
    pytest.param(
        BASE + '\n[[silences]]\nscope = "grid"\ntarget = "g1"\nstarts = "2026-12-01T08:00:00"\n'
        'ends = "2026-12-01T10:00:00+08:00"\nby = "li"\nreason = "works"\n',
        'rules.toml: silences[0].starts = "2026-12-01T08:00:00": must be an ISO 8601 time with a '
        "zone",
        id="silence-time-without-zone",
    ),
    pytest.param(
        BASE + '\n[[silences]]\nscope = "grid"\ntarget = "g1"\nstarts = "2026-12-01T08:00:00Z"\n'
        'ends = "2026-12-01T07:00:00Z"\nby = "li"\nreason = "works"\n',
        'rules.toml: silences[0].ends = "2026-12-01T07:00:00Z": must be after starts',
        id="silence-ends-before-it-starts",
    ),
    pytest.param(
        BASE + '\n[[inhibit]]\nsource = "device_offline"\ntargets = ["everything"]\n',
        'rules.toml: inhibit[0].targets[0] = "everything": must be an alert kind or "*"',
        id="bad-inhibit-target",
    ),
    pytest.param(
        BASE + '\n[escalation]\nred = [{after_s = 300, to = "community"}, '
        '{after_s = 120, to = "street"}]\n',
        "rules.toml: escalation.red[1].after_s = 120: must be greater than the previous step's "
        "after_s (300)",
        id="escalation-steps-not-increasing",
    ),
    pytest.param(
        BASE.replace("for_s = 20", "for_s = 20\nfor_s = 30"),
        "rules.toml: not valid TOML: Cannot overwrite a value (at line 9, column 11)",
        id="toml-syntax",
    ),
    pytest.param(
        BASE + '\n[rules.anomaly_score]\nalert = "reading_anomaly"\nevidence = "score"\n'
        "yellow = 1.5\n",
        "rules.toml: rules.anomaly_score.yellow = 1.5: a score threshold must be within [0, 1]",
        id="score-threshold-out-of-range",
    ),
]


@pytest.mark.parametrize(("text", "message"), MISTAKES)
def test_each_mistake_gets_a_precise_message(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=re.escape(message)):
        parse_rules(text, "rules.toml")


def test_references_are_checked_against_registry_and_plans(small_registry: Registry) -> None:
    text = (
        BASE
        + "\n[grids.nowhere.overflow_forecast]\nfor_s = 5\n"
        + '\n[correlate.flood]\nalert = "urban_waterlogging"\nscope = "street"\n'
        'sources = ["overflow_imminent"]\nsuggest_plan = "flood_plan"\n'
    )
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.toml", registry=small_registry, plan_names=["urban_waterlogging"])
    errors = info.value.errors
    assert "rules.toml: grids.nowhere: unknown grid id: not in the registry" in errors[0]
    assert errors[1].startswith(
        'rules.toml: correlate.flood.suggest_plan = "flood_plan": unknown plan; the plans file '
        "defines ['urban_waterlogging']"
    )
    # Every problem is reported at once, and the summary says the file was refused.
    assert str(info.value).endswith("rules.toml: 2 problem(s); the file was refused")


def test_an_unreadable_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules(tmp_path / "missing.toml")


def test_a_combination_of_valid_overrides_can_still_be_refused_at_compile(
    small_registry: Registry,
) -> None:
    grid = str(small_registry.grid_ids[0])
    street = small_registry.street_of_grid(grid)
    # Each override alone is consistent; together red (from the street) is above yellow.
    text = (
        BASE
        + f"\n[streets.{street}.overflow_forecast]\nred = 3000\n"
        + f"\n[grids.{grid}.overflow_forecast]\nyellow = 2500\n"
    )
    rs = parse_rules(text, registry=small_registry)
    with pytest.raises(
        RulesError, match=re.escape(f"streets.{street}.overflow_forecast.red = 3000")
    ):
        RuleTable.compile(rs, small_registry)
