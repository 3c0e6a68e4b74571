from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridwatch.cli import main
from gridwatch.config import load_settings
from gridwatch.pipeline.assembly import my_grids, owner_filter
from gridwatch.pipeline.supervisor import settings_env
from gridwatch.registry import Registry
from ingest.partition import partition_of


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("GRIDWATCH_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_workers_get_the_parents_effective_settings_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[mqtt]\nurl = "mqtt://b:1883"\npassword = "s3cret"\n[sim]\nspeed = 4.0\n')
    parent = load_settings(cfg, pipeline={"workers": 3}, console={"enabled": False})
    env = settings_env(parent)
    assert env["GRIDWATCH_MQTT__PASSWORD"] == "s3cret"  # a child needs the real secret
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    child = load_settings(None)
    assert child.model_dump() == parent.model_dump()


def test_partitions_cover_every_grid_once_and_owners_agree(small_registry: Registry) -> None:
    n = 3
    shares = [
        set(my_grids(small_registry, (k, n)) or []) for k in range(n) if _has(k, n, small_registry)
    ]
    assert set().union(*shares) == set(small_registry.grid_ids.tolist())
    assert sum(len(s) for s in shares) == small_registry.grid_ids.size
    owns = [owner_filter((k, n)) for k in range(n)]
    for g in small_registry.grid_ids.tolist():
        row = {"grid": g, "street": small_registry.street_of_grid(g)}
        assert [o(row) for o in owns if o is not None].count(True) == 1
    street_row = {"grid": None, "street": "s01"}
    assert [o(street_row) for o in owns if o is not None].count(True) == 1
    assert owns[partition_of("s01", n)](street_row)  # type: ignore[misc]


def _has(k: int, n: int, reg: Registry) -> bool:
    return any(partition_of(g, n) == k for g in reg.grid_ids.tolist())


def test_workers_without_a_broker_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workers", "2", "--no-summary", "--duration", "1"]) == 1
    assert "--workers > 1 needs a broker" in capsys.readouterr().err


def test_a_bad_rules_file_stops_run_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("version = 1\n[rules.entrapment]\nfor_s = -5\n")
    rc = main(["run", "--rules", str(bad), "--no-summary", "--duration", "1", "--devices", "100"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "rules.toml" in err and "for_s" in err
    assert not (tmp_path / "data" / "status.json").exists()
