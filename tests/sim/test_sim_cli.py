"""``gridwatch sim``: dry-run counts, a real publish with ground truth, and refused input."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch.cli import main
from sim.engine import FleetSim, SimSpec
from sim.faults import read_truth
from sim.fleet import FleetSpec, build_fleet

START = 1_780_000_000_000


def _last_json(out: str) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return obj


def test_dry_run_counts_what_the_simulator_generates(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--devices", "400", "--seed", "3", "--duration", "900", "--dry-run"]
    assert main([*argv, "--start-ms", str(START), "--fault-scale", "20"]) == 0
    out = _last_json(capsys.readouterr().out)
    sim = FleetSim(
        build_fleet(FleetSpec(n_devices=400, seed=3)),
        SimSpec(seed=3, start_ms=START, fault_scale=20),
    )
    batches = sim.advance(START + 900_000)
    assert out["readings"] == {b.kind.value: len(b) for b in batches}
    assert out["messages"] > 0 and out["bytes"] == 0
    labels: dict[str, int] = {}
    for lb in sim.labels:
        labels[lb.kind] = labels.get(lb.kind, 0) + 1
    assert out["labels"] == labels and out["faults"] > 0


@pytest.mark.mqtt
def test_publish_with_truth(
    capsys: pytest.CaptureFixture[str],
    mqtt_broker: tuple[str, int],
    mqtt_root: str,
    tmp_path: Path,
) -> None:
    got: list[str] = []
    ready = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cli-{uuid.uuid4().hex[:8]}")
    sub.on_message = lambda c, u, m: got.append(m.topic)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_connect = lambda c, *a: c.subscribe(f"{mqtt_root}/v1/#", qos=1)
    sub.connect(*mqtt_broker)
    sub.loop_start()
    truth = tmp_path / "truth.jsonl"
    try:
        assert ready.wait(10)
        rc = main(
            [
                "sim", "--devices", "300", "--speed", "0", "--duration", "1200",
                "--mqtt", f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}", "--root", mqtt_root,
                "--qos", "1", "--format", "json", "--truth", str(truth), "--fault-scale", "30",
                "--no-progress",
            ]
        )  # fmt: skip
        assert rc == 0
        out = _last_json(capsys.readouterr().out)
        for _ in range(200):
            if len(got) >= out["messages"]:
                break
            threading.Event().wait(0.05)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert len(got) == out["messages"] > 0 and out["unacked"] == 0
    labels = read_truth(truth)
    assert len(labels) == sum(out["labels"].values()) > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "sewage.bogus=1"], "unknown fault rate 'sewage.bogus'"),
        (["--speed", "-1"], "--speed must be >= 0"),
        (["--devices", "0"], "--devices must be >= 1"),
        (["--mqtt", "http://x"], "scheme must be mqtt://"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "--duration", "10", *argv]) == 1
    assert message in capsys.readouterr().err
