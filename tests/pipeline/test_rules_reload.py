"""Editing the rules file of a running pipeline: good edits take effect, bad ones are refused.

Issue 6: invalid rules files are refused at load, keeping the previous rules in force when
reloaded at run time. The watcher is tested against the real rules engine, then end to end
with ``gridwatch run`` as a child process whose rules file is edited while it runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest
from pipeline_testkit import Gridwatch, child_env, running, wait_until
from prometheus_client import CollectorRegistry

from alerts.plans import DEFAULT_PLANS_PATH, load_plans
from gridwatch.clock import ManualClock
from gridwatch.pipeline.rules_watch import RulesWatcher
from gridwatch.registry import Registry
from rules.engine import RulesEngine
from rules.load import DEFAULT_RULES_PATH, load_rules

SHIPPED = DEFAULT_RULES_PATH.read_text()
BAD = SHIPPED.replace("clear_after_s = 300", "clear_after_s = -5", 1)
TIGHTER = SHIPPED.replace("clear_after_s = 300", "clear_after_s = 360", 1)


def _save(path: Path, text: str) -> None:
    """Write like an editor that saves by rename, with a distinct mtime every time."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture
def plan_names() -> list[str]:
    return list(load_plans(DEFAULT_PLANS_PATH).plans)


def test_watcher_applies_good_edits_and_refuses_bad_ones(
    small_registry: Registry, tmp_path: Path, plan_names: list[str]
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(SHIPPED)
    engine = RulesEngine(
        load_rules(path, registry=small_registry, plan_names=plan_names),
        small_registry,
        ManualClock(1_780_000_000_000),
    )
    metrics = CollectorRegistry()
    w = RulesWatcher(engine, path, plan_names=plan_names, interval_s=0.0, registry=metrics)
    shipped = engine.ruleset.digest

    assert not w.check() and w.reloads == 0  # unchanged file: nothing to do

    _save(path, BAD)
    assert not w.check()
    assert engine.ruleset.digest == shipped  # the rules in force stay
    assert w.refused == 1 and "defaults.clear_after_s" in w.error
    assert not w.check() and w.refused == 1  # the same bad file is not retried
    assert (
        metrics.get_sample_value("gridwatch_pipeline_rules_reloads_total", {"result": "refused"})
        == 1.0
    )

    _save(path, TIGHTER)
    assert w.check()
    assert engine.ruleset.digest not in ("", shipped) and w.error == ""
    assert engine.ruleset.file.defaults.clear_after_s == 360
    assert w.status() == {
        "path": str(path),
        "digest": engine.ruleset.digest,
        "reloads": 1,
        "refused": 1,
        "error": "",
    }

    path.unlink()  # gone mid-deploy: keep what is in force
    assert not w.check() and engine.ruleset.file.defaults.clear_after_s == 360


@pytest.mark.slow
def test_running_pipeline_keeps_its_rules_through_a_bad_edit(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(SHIPPED)
    env = child_env(GRIDWATCH_CONSOLE__ENABLED="false", GRIDWATCH_PIPELINE__METRICS_PORT="0")
    args = ["run", "--devices", "2000", "--rules", str(rules), "--duration", "120", "--no-summary"]
    gw = Gridwatch(args, tmp_path, env, tmp_path / "run.log")
    status_file = tmp_path / "data" / "status.json"

    def status() -> dict:
        try:
            return orjson.loads(status_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    with running(gw):
        wait_until(lambda: status().get("state") == "running", 60, "pipeline running")
        shipped = status()["rules"]["digest"]

        _save(rules, BAD)
        refused = wait_until(
            lambda: gw.events("rules file refused; previous rules stay in force"), 30, "refusal"
        )
        assert "clear_after_s" in refused[0]["error"]
        wait_until(lambda: status()["rules"]["refused"] == 1, 10, "refusal in status")
        st = status()
        assert st["rules"]["digest"] == shipped and "clear_after_s" in st["rules"]["error"]
        time.sleep(2.0)
        assert gw.alive, gw.tail()
        assert status()["state"] == "running"

        _save(rules, TIGHTER)
        wait_until(lambda: gw.events("rules reloaded"), 30, "reload")
        wait_until(lambda: status()["rules"]["reloads"] == 1, 10, "reload in status")
        st = status()
        assert st["rules"]["digest"] != shipped and st["rules"]["error"] == ""
        assert gw.stop() == 0, gw.tail()
