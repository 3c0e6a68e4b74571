"""``gridwatch alerts ...`` and ``gridwatch plans ...`` against an embedded SQLite database."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from alerts.dispatch import Dispatcher
from gridwatch.batch import Detections
from gridwatch.cli import main
from gridwatch.clock import SystemClock
from gridwatch.domain import DetectionKind as K
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from rules.engine import RulesEngine
from rules.load import load_rules
from storage import open_storage


def test_dispatcher_workflow_from_the_command_line(
    tmp_path: Path, small_registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    reg = tmp_path / "reg.csv"
    small_registry.to_csv(reg)
    st = open_storage(db)
    st.migrate()
    d = Dispatcher(st, RulesEngine(load_rules(), small_registry, SystemClock()))
    d.start()
    el = small_registry.devices_of_kind(DeviceKind.ELEVATOR)[:1]
    d.handle(Detections.of(K.ENTRAPMENT, el, SystemClock().now_ms(), 1.0))
    common = ["--db", db, "--registry", str(reg)]

    assert main(["alerts", "list", *common, "--json"]) == 0
    (alert,) = orjson.loads(capsys.readouterr().out)["items"]
    assert (alert["kind"], alert["grade"], alert["state"]) == ("trapped_passenger", "red", "open")
    aid = str(alert["id"])
    assert main(["alerts", "ack", aid, "--by", "wang", *common]) == 0
    assert capsys.readouterr().out.strip() == f"alert {aid} is now acknowledged"
    assert main(["alerts", "resolve", aid, "--by", "wang", "--note", "freed", *common]) == 0
    assert main(["alerts", "show", aid, *common]) == 0
    out = capsys.readouterr().out
    assert "resolved" in out and "wang" in out and "freed" in out
    assert main(["alerts", "ack", aid, "--by", "wang", *common]) == 1
    assert "cannot ack it" in capsys.readouterr().err

    grid = alert["grid"]
    assert main(["alerts", "queues", *common]) == 0
    assert f"grid      {grid}" in capsys.readouterr().out
    assert main(["alerts", "claim", grid, "--consumer", "cli", *common, "--json"]) == 0
    (item,) = orjson.loads(capsys.readouterr().out)
    assert main(["alerts", "ack-item", str(item["id"]), "--consumer", "cli", *common]) == 0
    capsys.readouterr()

    assert (
        main(
            [
                "alerts",
                "silence",
                "--grid",
                grid,
                "--for",
                "2h",
                "--by",
                "li",
                "--reason",
                "inspection",
                *common,
            ]
        )
        == 0
    )
    assert "silence 1: grid" in capsys.readouterr().out
    assert main(["alerts", "silences", *common]) == 0
    assert "inspection" in capsys.readouterr().out

    street = small_registry.street_of_grid(grid)
    assert (
        main(["plans", "activate", "high_rise_fire", "--street", street, "--by", "zhang", *common])
        == 0
    )
    out = capsys.readouterr().out
    n = len(small_registry.grids_of_street(street))
    assert "plan #1 high_rise_fire" in out and f"0/{n} grids acknowledged" in out
    assert main(["plans", "ack", "1", "--grid", grid, "--by", "wang", *common]) == 0
    assert f"1/{n} grids acknowledged" in capsys.readouterr().out
    assert main(["plans", "close", "1", "--by", "zhang", *common]) == 0
    assert "closed" in capsys.readouterr().out
    assert main(["plans", "list", *common]) == 0
    assert "geological_hazard" in capsys.readouterr().out


def test_a_bad_duration_is_a_clear_error(
    tmp_path: Path, small_registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "reg.csv"
    small_registry.to_csv(reg)
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    rc = main(
        [
            "alerts",
            "silence",
            "--grid",
            str(small_registry.grid_ids[0]),
            "--for",
            "soon",
            "--by",
            "li",
            "--reason",
            "r",
            "--db",
            db,
            "--registry",
            str(reg),
        ]
    )
    assert rc == 1
    assert "--for 'soon': expected a duration like 90s, 30m, 2h or 1d" in capsys.readouterr().err
