"""The faults a deployment meets, each mid-stream, each followed by the three promises:
every reading accepted is stored exactly once, every labelled fault still yields its
alert, and no alert is lost or duplicated in the dispatch queue.

Each test publishes the same kind of labelled scenario (1,200 devices, 4 simulated
minutes at 10x, fast-signature faults) to a Mosquitto of its own, into ``gridwatch run``
as a child process on a PostgreSQL schema of its own; the shared services are never
stopped. Detector checkpoints every 2 s keep the tests short.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from pipeline_testkit import (
    Feed,
    Gridwatch,
    Scenario,
    child_env,
    stored_count,
    verify_pipeline,
    wait_until,
)

from ingest.testing import OwnBroker

pytestmark = [pytest.mark.slow, pytest.mark.mqtt, pytest.mark.postgres]

SPEED = 10.0


def _status(data_dir: Path) -> dict[str, Any]:
    try:
        return dict(orjson.loads((data_dir / "status.json").read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


def _ready(data_dir: Path, workers: int) -> bool:
    st = _status(data_dir)
    if st.get("state") != "running":
        return False
    if workers == 1:
        return bool(st.get("mqtt_connected"))
    ws = st.get("workers") or []
    return len(ws) == workers and all(
        w.get("state") == "running" and w.get("mqtt_connected") for w in ws
    )


def _exited(gw: Gridwatch) -> bool:
    return not gw.alive


def _pipeline(
    tmp: Path, pg_url: str, schema: str, broker: OwnBroker, scenario: Scenario, *, workers: int
) -> Gridwatch:
    args = [
        "run",
        "--mqtt",
        broker.url,
        "--root",
        scenario.root,
        "--db",
        f"{pg_url}?schema={schema}",
        "--registry",
        str(scenario.registry_path),
        "--no-sim",
        "--no-console",
        "--metrics-port",
        "0",
        "--data-dir",
        str(tmp / "data"),
        "--no-summary",
    ]
    if workers > 1:
        args += ["--workers", str(workers)]
    env = child_env(
        GRIDWATCH_PIPELINE__CHECKPOINT_INTERVAL_S="2",
        GRIDWATCH_MQTT__CLIENT_ID=f"gwt-{uuid.uuid4().hex[:8]}",
    )
    return Gridwatch(args, tmp, env, tmp / "pipeline.log")


def _run_with_fault(
    tmp: Path,
    pg_url: str,
    schema: str,
    broker: OwnBroker,
    fault: Any,
    *,
    workers: int = 1,
    fault_at_s: float = 9.0,
) -> tuple[Scenario, Gridwatch, dict[str, Any]]:
    scenario = Scenario(tmp, root=f"gwt{uuid.uuid4().hex[:8]}")
    gw = _pipeline(tmp, pg_url, schema, broker, scenario, workers=workers).start()
    feed: Feed | None = None
    try:
        wait_until(
            lambda: _ready(tmp / "data", workers) or _exited(gw), 90, "the pipeline to subscribe"
        )
        assert gw.alive, f"gridwatch run exited:\n{gw.tail()}"
        feed = Feed(broker.url, scenario.steps, 2.0 / SPEED).start()
        time.sleep(fault_at_s)
        gw = fault(gw) or gw
        feed.wait(120)
        wait_until(
            lambda: stored_count(pg_url, schema) >= scenario.n_readings,
            120,
            f"{scenario.n_readings} readings stored",
            every=1.0,
        )
        time.sleep(2.0)  # the last flush's alerts
        assert gw.stop(90) == 0, gw.tail()
        figures = verify_pipeline(pg_url, schema, scenario)
    finally:
        if feed is not None:
            feed.close()
        gw.kill()
    assert figures["faults"] >= 5, f"scenario too quiet to prove anything: {figures}"
    return scenario, gw, figures


def test_broker_restart_mid_stream(
    tmp_path: Path, pg_url: str, schema: str, own_broker: OwnBroker
) -> None:
    def restart_broker(gw: Gridwatch) -> None:
        own_broker.stop()  # SIGTERM: Mosquitto saves sessions and queued messages
        time.sleep(3.0)
        own_broker.start()

    _, gw, _ = _run_with_fault(tmp_path, pg_url, schema, own_broker, restart_broker)
    assert gw.events("mqtt reconnected"), gw.tail()


def test_postgres_connections_killed_mid_stream(
    tmp_path: Path, pg_url: str, schema: str, own_broker: OwnBroker
) -> None:
    killed: list[int] = []

    def kill_connections(gw: Gridwatch) -> None:
        for _ in range(3):
            with psycopg.connect(pg_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                    (f"%/{schema}",),
                ).fetchall()
            killed.append(len(rows))
            time.sleep(2.0)

    _run_with_fault(tmp_path, pg_url, schema, own_broker, kill_connections)
    assert sum(killed) >= 3, f"no pipeline connection was killed: {killed}"


def test_worker_killed_with_sigkill_is_restarted(
    tmp_path: Path, pg_url: str, schema: str, own_broker: OwnBroker
) -> None:
    victim: dict[str, int] = {}

    def kill_worker(gw: Gridwatch) -> None:
        st = _status(tmp_path / "data")
        pid = int(st["workers"][0]["pid"])
        victim["pid"] = pid
        import os

        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: (_status(tmp_path / "data").get("workers") or [{}])[0].get("restarts", 0) >= 1,
            30,
            "the supervisor to notice the dead worker",
        )
        wait_until(lambda: _ready(tmp_path / "data", 2), 90, "the restarted worker")
        # the supervisor's /metrics: its own counters and the workers', labelled by worker
        url = _status(tmp_path / "data")["metrics_url"]
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'gridwatch_supervisor_worker_restarts_total{worker="0"} 1.0' in text
        assert 'gridwatch_ingest_readings_total{kind="sewage",worker="1"}' in text

    _, gw, _ = _run_with_fault(tmp_path, pg_url, schema, own_broker, kill_worker, workers=2)
    died = [e for e in gw.events("worker died; restarting") if e["worker"] == 0]
    assert died and died[0]["exit_code"] == -signal.SIGKILL, gw.tail()
    assert gw.events("caught up from storage"), gw.tail()


def test_sigterm_then_start_again_resumes(
    tmp_path: Path, pg_url: str, schema: str, own_broker: OwnBroker
) -> None:
    restarted: dict[str, Gridwatch] = {}

    def stop_and_start(gw: Gridwatch) -> Gridwatch:
        assert gw.stop(60) == 0, gw.tail()
        assert _status(tmp_path / "data")["state"] == "stopped"
        time.sleep(2.0)  # the broker queues the session's messages meanwhile
        again = Gridwatch(gw.args, gw.cwd, gw.env, tmp_path / "pipeline-2.log").start()
        restarted["gw"] = again
        return again

    _run_with_fault(tmp_path, pg_url, schema, own_broker, stop_and_start)
    again = restarted["gw"]
    restored = again.events("detector checkpoint restored")
    assert restored and restored[0]["watermark_ms"] > 0, again.tail()
    assert again.events("mqtt reconnected") or again.events("mqtt connected")
    first = [r for r in again.events("mqtt connected") if r.get("session_present")]
    assert first, "the restarted collector did not find its persistent session"


def test_fault_helpers_stop_cleanly() -> None:
    """The waits above rely on ``wait_until`` failing loudly; pin that."""
    flag = threading.Event()
    with pytest.raises(AssertionError, match=r"timed out after 0\.2 s waiting for never"):
        wait_until(flag.is_set, 0.2, "never", every=0.05)
