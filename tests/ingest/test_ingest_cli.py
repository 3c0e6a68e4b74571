"""``gridwatch ingest`` / ``deadletters`` as a user runs them: subprocesses, real services."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from ingest_testkit import Publisher, child_env, gridwatch_cmd, wait_until

from gridwatch import contract
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from ingest.testing import free_port


def _metric(port: int, name: str) -> float:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.mqtt
@pytest.mark.slow
def test_ingest_into_a_database_with_metrics(
    small_registry: Registry,
    registry_csv: Path,
    mqtt_broker: tuple[str, int],
    mqtt_root: str,
    tmp_path: Path,
) -> None:
    from storage import open_storage

    host, port = mqtt_broker
    db = f"sqlite:///{tmp_path / 'gw.db'}"
    metrics_port = free_port()
    proc = subprocess.Popen(
        gridwatch_cmd(
            "ingest",
            "--mqtt",
            f"mqtt://{host}:{port}",
            "--registry",
            str(registry_csv),
            "--root",
            mqtt_root,
            "--client-id",
            f"{mqtt_root}-cli",
            "--session-expiry-s",
            "0",
            "--db",
            db,
            "--spill-dir",
            str(tmp_path / "spill"),
            "--metrics-port",
            str(metrics_port),
        ),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=child_env(),
    )
    events: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            try:
                events.append(str(orjson.loads(raw).get("event")))
            except orjson.JSONDecodeError:
                events.append(raw.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(lambda: "subscribed" in events or proc.poll() is not None, 60, "subscription")
        assert proc.poll() is None, events
        reg = small_registry
        now = time.time_ns() // 1_000_000
        devices = reg.devices_of_kind(DeviceKind.SEWAGE)[:20].tolist()
        messages = [
            (
                contract.telemetry_topic(
                    reg.grid_of(d), "sewage", str(reg.device_ids[d]), root=mqtt_root
                ),
                orjson.dumps({"ts": now, "values": {"level_m": 1.5, "tilt_deg": 0.2}}),
            )
            for d in devices
        ]
        messages.append((messages[0][0], b"not json"))
        pub = Publisher(port)
        try:
            pub.publish_all(messages)
        finally:
            pub.close()
        wait_until(
            lambda: _metric(metrics_port, "gridwatch_ingest_acks_total") >= len(messages),
            30,
            "every message acknowledged (after the database has it)",
        )
        assert _metric(metrics_port, "gridwatch_ingest_readings_total") == 20
        assert (
            _metric(metrics_port, 'gridwatch_ingest_rejected_readings_total{reason="not_json"}')
            == 1
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, events
    finally:
        if proc.poll() is None:
            proc.kill()
    with open_storage(db) as store:
        with store.connection(readonly=True) as conn:
            (count,) = conn.execute("SELECT count(*) FROM readings_sewage").fetchone()
        assert count == 20
        assert store.dead_letter_counts() == {"not_json": (1, 1)}
    out = subprocess.run(
        gridwatch_cmd("deadletters", "--db", db),
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    ).stdout
    assert out.splitlines()[1].split() == ["not_json", "1", "1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "x.log", "--db", "sqlite:///x.db"], "not both"),
        (
            ["--out", "x.log", "--flush-messages", "900", "--receive-maximum", "1000"],
            "at most half",
        ),
        (["--out", "x.log", "--partition", "3/3"], "0 <= k < N"),
        (["--out", "x.log", "--grids", "nope"], "not in the registry"),
        (["--out", "x.log", "--mqtt", "http://x"], "scheme must be"),
    ],
)
def test_ingest_refuses_bad_options_with_a_clear_message(
    registry_csv: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    res = subprocess.run(
        gridwatch_cmd("ingest", "--registry", str(registry_csv), *extra),
        check=False,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert res.returncode == 1
    assert message in res.stderr
