"""The README's first command: ``gridwatch run`` with nothing configured.

A newcomer must see alerts of all three device kinds within a minute, with no server
installed (in-process transport, SQLite under ./data), and Ctrl-C must stop it cleanly.
Only the two listening ports are set to "any free port", so the test never collides with
another process on 8080/9108; everything else is the default.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest
from pipeline_testkit import ALERT_DEVICE_KIND, Gridwatch, child_env, running, sqlite_rows

from gridwatch.domain import DeviceKind

pytestmark = pytest.mark.slow


def _kinds_seen(db: Path) -> dict[DeviceKind, list[str]]:
    rows = sqlite_rows(db, "SELECT kind, grade FROM alerts WHERE scope = 'device'")
    out: dict[DeviceKind, list[str]] = {}
    for kind, grade in rows:
        dk = ALERT_DEVICE_KIND.get(kind)
        if dk is not None:
            out.setdefault(dk, []).append(f"{kind}/{grade}")
    return out


def test_run_with_nothing_configured_alerts_on_all_three_kinds_within_a_minute(
    tmp_path: Path,
) -> None:
    env = child_env(GRIDWATCH_CONSOLE__PORT="0", GRIDWATCH_PIPELINE__METRICS_PORT="0")
    gw = Gridwatch(["run"], tmp_path, env, tmp_path / "run.log")
    db = tmp_path / "data" / "gridwatch.db"
    with running(gw):
        t0 = time.monotonic()
        seen: dict[DeviceKind, list[str]] = {}
        while time.monotonic() - t0 < 60:
            assert gw.alive, f"gridwatch run exited early:\n{gw.tail()}"
            seen = _kinds_seen(db)
            if set(seen) == set(DeviceKind):
                break
            time.sleep(1.0)
        assert set(seen) == set(DeviceKind), f"after 60 s only {seen}\n{gw.tail()}"
        # Ctrl-C: a clean stop (flush, checkpoint), exit code 0
        gw.signal(signal.SIGINT)
        assert gw.wait(60) == 0, gw.tail()

    red = [a for v in seen.values() for a in v if a.endswith("/red")]
    assert red, seen
    status = orjson.loads((tmp_path / "data" / "status.json").read_bytes())
    assert status["state"] == "stopped"
    assert status["readings"]["accepted"] > 1000
    # every accepted reading reached SQLite before the process exited
    stored = sum(
        sqlite_rows(db, f"SELECT count(*) FROM readings_{k.value}")[0][0] for k in DeviceKind
    )
    assert stored == status["readings"]["accepted"]
    assert (tmp_path / "data" / "checkpoints" / "detectors-all.npz").exists()
    assert gw.events("detector checkpoint saved"), gw.tail()
    # the alerts are in the grids' dispatch queues, claimable
    items = sqlite_rows(db, "SELECT count(*) FROM dispatch_queue WHERE level = 'grid'")[0][0]
    assert items >= len(red)
