"""Nothing acknowledged is lost: broker restarts and a collector killed with SIGKILL.

Both tests start their own Mosquitto (``deploy/mosquitto.conf``, persistence on) on a free
loopback port, never the machine's shared broker.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from ingest_testkit import Publisher, child_env, gridwatch_cmd, wait_until

from gridwatch import contract
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.config import IngestConfig
from ingest.mqtt import MqttCollector, MqttSettings
from ingest.sinks import MemoryDeadLetters, MemorySink, read_reading_log
from ingest.testing import OwnBroker

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _workload(
    reg: Registry, n_messages: int, root: str = "gw"
) -> list[tuple[str, bytes, list[tuple[str, int]]]]:
    """Messages (alternating per-device JSON and 10-row binary batches) and their readings."""
    now = time.time_ns() // 1_000_000 - 3_600_000
    sewage = reg.devices_of_kind(DeviceKind.SEWAGE)
    grid0 = str(reg.grid_ids[0])
    in_grid0 = [int(i) for i in sewage if reg.grid_of(int(i)) == grid0][:10]
    out: list[tuple[str, bytes, list[tuple[str, int]]]] = []
    for k in range(n_messages):
        ts = now + k
        if k % 2:
            ids = [str(reg.device_ids[i]) for i in in_grid0]
            payload = contract.encode_binary(
                DeviceKind.SEWAGE,
                ids,
                np.full(len(ids), ts),
                {"level_m": np.full(len(ids), k % 30), "tilt_deg": np.zeros(len(ids))},
            )
            out.append(
                (contract.batch_topic(grid0, "sewage", root=root), payload, [(i, ts) for i in ids])
            )
        else:
            d = int(sewage[k % sewage.size])
            dev = str(reg.device_ids[d])
            payload = orjson.dumps({"ts": ts, "values": {"level_m": k % 30, "tilt_deg": 1.0}})
            out.append(
                (
                    contract.telemetry_topic(reg.grid_of(d), "sewage", dev, root=root),
                    payload,
                    [(dev, ts)],
                )
            )
    return out


def _publish_paced(
    pub: Publisher, messages: list[Any], per_s: float, infos: list[Any], done: threading.Event
) -> None:
    start = time.monotonic()
    for k, (topic, payload, _) in enumerate(messages):
        delay = start + k / per_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        infos.append(pub.publish(topic, payload))
    done.set()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_restart_loses_nothing_and_duplicates_nothing(
    small_registry: Registry, own_broker: Callable[..., OwnBroker], protocol: str
) -> None:
    """Also on MQTT 3.1.1 (the pipeline's default), whose PUBLISH framing is the
    collector's own; its window is the broker's 1,000, so flushes of 400 messages."""
    reg = small_registry
    broker = own_broker()
    sink, dead = MemorySink(), MemoryDeadLetters()
    flushes = {"flush_messages": 400} if protocol == "3.1.1" else {}
    collector = Collector(
        reg, sinks=[sink], dead_letters=dead, config=IngestConfig(max_age_s=None, **flushes)
    )
    front = MqttCollector(
        collector,
        MqttSettings(
            port=broker.port,
            client_id="restart-collector",
            session_expiry_s=3600,
            reconnect_max_s=0.5,
            protocol=protocol,  # type: ignore[arg-type]
        ),
        contract.subscription_filters(None, "gw"),
    )
    front.start()
    assert front.wait_ready(10)
    messages = _workload(reg, 3000)
    pub = Publisher(broker.port, client_id="restart-publisher", persistent=True, max_inflight=100)
    infos: list[Any] = []
    done = threading.Event()
    producer = threading.Thread(target=_publish_paced, args=(pub, messages, 1500.0, infos, done))
    try:
        producer.start()
        wait_until(lambda: len(infos) > 1000, 20, "a third of the stream")
        broker.stop()  # SIGTERM: Mosquitto writes its persistence file
        time.sleep(0.5)
        broker.start()
        producer.join(60)
        assert done.is_set()
        pub.wait_acked(infos, 60)
        total = sum(len(r) for _, _, r in messages)
        wait_until(lambda: sink.rows() >= total, 60, f"{total} readings")
        wait_until(lambda: front.unacked == 0, 20, "every delivery acknowledged")
    finally:
        pub.close()
        front.stop()
        collector.close()
    got = Counter()
    for b in sink.batches:
        got.update(zip(reg.device_ids[b.device].tolist(), b.ts_ms.tolist(), strict=True))
    expected = Counter(r for _, _, rows in messages for r in rows)
    assert got == expected  # every reading, exactly once
    assert set(dead.counts()) <= {"duplicate"}  # redeliveries were filtered, nothing else
    assert front.reconnects >= 1
    assert (
        collector.metrics.registry.get_sample_value("gridwatch_ingest_reconnects_total")
        == front.reconnects
    )


class _Child:
    """A ``gridwatch ingest`` subprocess whose JSON log lines are collected."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            gridwatch_cmd("ingest", *args),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=child_env(),
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"event": raw.decode(errors="replace")})

    def events(self) -> list[str]:
        return [str(line.get("event")) for line in list(self.lines)]

    def wait_subscribed(self, timeout: float = 30) -> None:
        wait_until(
            lambda: "subscribed" in self.events() or self.proc.poll() is not None,
            timeout,
            "subscription",
        )
        assert self.proc.poll() is None, self.events()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_collector_killed_mid_stream_loses_nothing_acknowledged(
    small_registry: Registry,
    registry_csv: Path,
    own_broker: Callable[..., OwnBroker],
    tmp_path: Path,
) -> None:
    reg = small_registry
    broker = own_broker()
    out = tmp_path / "readings.log"
    args = [
        "--mqtt", f"mqtt://127.0.0.1:{broker.port}",
        "--registry", str(registry_csv),
        "--client-id", "kill9-collector",
        "--out", str(out),
        "--stats-every-s", "0.5",
    ]  # fmt: skip
    child = _Child(args)
    child.wait_subscribed()
    messages = _workload(reg, 4000)
    pub = Publisher(broker.port, client_id="kill9-publisher", persistent=True)
    infos: list[Any] = []
    done = threading.Event()
    producer = threading.Thread(target=_publish_paced, args=(pub, messages, 1000.0, infos, done))
    try:
        producer.start()
        wait_until(lambda: len(infos) > 1500, 30, "part of the stream")
        child.kill()  # SIGKILL: no flush, no goodbye
        wait_until(lambda: len(infos) > 2500, 30, "more of the stream while it is down")
        child = _Child(args)  # same client id: the broker kept its session and queue
        child.wait_subscribed()
        producer.join(60)
        assert done.is_set()
        for info in infos:
            info.wait_for_publish(30)
        acked = [
            r
            for (_, _, rows), info in zip(messages, infos, strict=True)
            if info.is_published()
            for r in rows
        ]
        assert len(acked) == sum(len(r) for _, _, r in messages)

        def stored() -> Counter[tuple[str, int]]:
            got: Counter[tuple[str, int]] = Counter()
            for _kind, ids, ts, _fields in read_reading_log(out):
                got.update(zip(np.char.decode(ids, "ascii").tolist(), ts.tolist(), strict=True))
            return got

        wait_until(lambda: set(stored()) >= set(acked), 60, "every acknowledged reading stored")
        assert child.stop() == 0
    finally:
        pub.close()
        if child.proc.poll() is None:
            child.kill()
    got = stored()
    missing = set(acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
    assert max(got.values()) == 1  # the restarted collector refused what it had stored
    assert "collector stopped" in child.events()  # a clean stop after SIGTERM
