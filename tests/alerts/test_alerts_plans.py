"""The plans file: the five shipped plans and precise errors for mistakes."""

from __future__ import annotations

import re

import pytest

from alerts.plans import PlansError, load_plans, parse_plans


def test_the_five_district_plans_ship_with_tasks_for_each_role() -> None:
    plans = load_plans().plans
    assert set(plans) == {
        "high_rise_fire",
        "urban_waterlogging",
        "elevator_entrapment",
        "gas_leak",
        "geological_hazard",
    }
    for plan in plans.values():
        roles = [t.role for t in plan.tasks]
        assert "grid_worker" in roles and len(roles) == len(set(roles)) >= 3
        assert all(t.within_min for t in plan.tasks)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[plans]\n", "plans.toml: plans = {}: must have at least 1 item(s) (line 1)"),
        (
            '[plans.fire]\ntitle = "Fire"\nsummary = "s"\n'
            'tasks = [{role = "Grid Worker", task = "t"}]\n',
            'plans.toml: plans.fire.tasks[0].role = "Grid Worker": must be a lower_snake_case name',
        ),
        (
            '[plans.fire]\ntitle = "Fire"\nsummary = "s"\ntasks = []\n',
            "plans.toml: plans.fire.tasks = []: must have at least 1 item(s)",
        ),
        (
            '[plans.fire]\ntitle = "Fire"\nsummary = "s"\ngrade = "orange"\n'
            'tasks = [{role = "r", task = "t"}]\n',
            "plans.toml: plans.fire.grade = \"orange\": must be one of 'red', 'yellow' or 'green'",
        ),
        (
            '[plans.fire]\ntitle = "Fire"\nsummary = "s"\ntasks = [{role = "r", task = "t", '
            "within_min = -1}]\n",
            "plans.toml: plans.fire.tasks[0].within_min = -1: must be > 0",
        ),
    ],
)
def test_plan_file_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(PlansError, match=re.escape(message)):
        parse_plans(text)
