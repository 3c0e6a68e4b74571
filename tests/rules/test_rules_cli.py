"""``gridwatch rules check|explain|default``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridwatch.cli import main
from gridwatch.registry import Registry
from rules.load import DEFAULT_RULES_PATH


def test_check_accepts_the_defaults_against_a_registry(
    tmp_path: Path, small_registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "reg.csv"
    small_registry.to_csv(reg)
    assert main(["rules", "check", str(DEFAULT_RULES_PATH), "--registry", str(reg)]) == 0
    out = capsys.readouterr().out
    assert "ok: 17 rules" in out and f"over {small_registry.grid_ids.size} grids" in out


def test_check_lists_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text(
        '[rules.stuck]\nalert = "sensor_stuck"\ngrade = "yellow"\nfor_s = -1\nclear_after = 5\n'
    )
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}: rules.stuck.for_s = -1: must be >= 0 (line 4)"
    assert err[1].startswith(f"{bad}: rules.stuck.clear_after = 5: unknown key; expected one of")
    assert err[-1] == f"{bad}: refused (2 problem(s))"


def test_explain_shows_the_entry_and_where_each_key_came_from(
    tmp_path: Path, small_registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = str(small_registry.grid_ids[0])
    rules = tmp_path / "rules.toml"
    rules.write_text(
        DEFAULT_RULES_PATH.read_text() + f"\n[grids.{grid}.overflow_forecast]\nred = 2400\n"
    )
    reg = tmp_path / "reg.csv"
    small_registry.to_csv(reg)
    args = [
        "rules",
        "explain",
        str(rules),
        "overflow_forecast",
        "--grid",
        grid,
        "--registry",
        str(reg),
    ]
    assert main([*args, "--evidence", "time_to_overflow_s=2000"]) == 0
    out = capsys.readouterr().out
    assert f"resolves to [grids.{grid}.overflow_forecast]" in out
    assert f"red            = 2400.0                 from grids.{grid}.overflow_forecast" in out
    assert "for_s          = 20.0                   from rules.overflow_forecast" in out
    assert "fires red overflow_imminent after 20 s" in out
    assert main([*args, "--evidence", "time_to_overflow_s=3700"]) == 0
    assert "an open alert would still hold (hysteresis band)" in capsys.readouterr().out


def test_default_prints_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "default"]) == 0
    assert capsys.readouterr().out == DEFAULT_RULES_PATH.read_text()
