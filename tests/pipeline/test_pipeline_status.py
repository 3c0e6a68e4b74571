from __future__ import annotations

import time
from pathlib import Path

import orjson

from gridwatch.cli import main
from gridwatch.pipeline.status import StatusReporter, read_status, status_path, write_status


def test_reporter_writes_atomically_and_marks_the_final_state(tmp_path: Path) -> None:
    n = {"calls": 0}

    def snap() -> dict[str, object]:
        n["calls"] += 1
        return {"state": "running", "readings": {"accepted": n["calls"]}}

    path = status_path(tmp_path)
    rep = StatusReporter(path, snap, interval_s=0.05).start()
    deadline = time.monotonic() + 5
    while n["calls"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    st = read_status(path)
    assert st is not None and st["fresh"] and st["state"] == "running"
    rep.stop()
    st = read_status(path)
    assert st is not None and st["state"] == "stopped" and not st["fresh"]
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_a_broken_snapshot_keeps_the_last_good_one(tmp_path: Path) -> None:
    calls = {"n": 0}

    def snap() -> dict[str, object]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")
        return {"state": "running", "x": 1}

    rep = StatusReporter(tmp_path / "s.json", snap)
    rep.write_once()
    data = rep.write_once()
    assert data["x"] == 1


def test_stale_status_is_not_fresh(tmp_path: Path) -> None:
    path = status_path(tmp_path)
    write_status(path, {"state": "running", "updated_ms": time.time_ns() // 1_000_000 - 60_000})
    st = read_status(path)
    assert st is not None and not st["fresh"] and st["age_s"] >= 59


def test_status_cli_exit_codes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["status", "--data-dir", str(tmp_path), "-q"]) == 4
    path = status_path(tmp_path)
    now = time.time_ns() // 1_000_000
    write_status(
        path,
        {
            "state": "running",
            "updated_ms": now,
            "readings": {"accepted": 1234, "per_s": 50.0},
            "alerts": {"opened": {"red": 2}},
        },
    )
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "red 2" in out and "1,234" in out
    assert main(["status", "--data-dir", str(tmp_path), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["readings"]["accepted"] == 1234
    write_status(path, {"state": "stopped", "updated_ms": now})
    assert main(["status", "--data-dir", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out


def test_status_cli_refuses_a_non_http_url() -> None:
    assert main(["status", "--url", "file:///etc/passwd"]) == 1


def test_read_status_of_garbage_is_none(tmp_path: Path) -> None:
    p = tmp_path / "status.json"
    p.write_text("{not json")
    assert read_status(p) is None
    assert read_status(tmp_path / "absent.json") is None
