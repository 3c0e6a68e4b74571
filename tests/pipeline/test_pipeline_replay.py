"""``gridwatch replay``: a labelled scenario end to end, a report, a rule change compared."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gridwatch.cli import main
from rules.load import DEFAULT_RULES_PATH

pytestmark = pytest.mark.slow

SCENARIO = ["--devices", "2000", "--duration", "1200", "--fault-scale", "20", "--seed", "11"]


def test_replay_report_and_a_rule_change_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base"
    assert main(["--log-level", "WARNING", "replay", *SCENARIO, "--out", str(base)]) == 0
    report = orjson.loads((base / "report.json").read_bytes())
    assert (base / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ev = report["evaluation"]
    assert ev["_overall"]["labels"] >= 10
    assert ev["falling_object"]["found"] >= 1
    assert report["throughput"]["readings"] == report["throughput"]["stored"] > 100_000
    assert len(report["timeline"]["sim_s"]) == 600  # 1200 s in 2 s steps
    assert report["detectors"] is not None
    capsys.readouterr()

    # the same scenario with the falling-object rule switched off
    rules = tmp_path / "no_falls.toml"
    text = DEFAULT_RULES_PATH.read_text().replace(
        "[rules.falling_object]\n", "[rules.falling_object]\nenabled = false\n"
    )
    rules.write_text(text)
    mine = tmp_path / "mine"
    args = ["replay", *SCENARIO, "--rules", str(rules), "--out", str(mine), "--no-store-readings"]
    assert main(["--log-level", "WARNING", *args, "--compare", str(base / "report.json")]) == 0
    out = capsys.readouterr().out
    new = orjson.loads((mine / "report.json").read_bytes())["evaluation"]
    assert new["falling_object"]["found"] == 0
    assert "compared with the earlier report" in out and "falling_object" in out
    # one seed, one simulation: the other kinds' alerts did not move
    for kind in ("cover_displaced", "overspeed", "entrapment"):
        assert new[kind]["found"] == ev[kind]["found"]
        assert new[kind]["time_to_alert_s"] == ev[kind]["time_to_alert_s"]


def test_replay_refuses_a_bad_compare_file(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text("[]")
    rc = main(["replay", "--devices", "10", "--duration", "10", "--out", str(tmp_path / "o"),
               "--compare", str(bogus)])  # fmt: skip
    assert rc == 1
