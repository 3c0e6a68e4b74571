"""Replays through the real Mosquitto (127.0.0.1:1883) decode back to exactly what was generated."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch import contract
from gridwatch.batch import ReadingBatch
from gridwatch.clock import ManualClock
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.errors import ConfigError, GridwatchError
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.fleet import FleetSpec, build_fleet
from sim.publish import MqttPublisher, PayloadFormat
from sim.replay import Replay, ReplaySpec

pytestmark = pytest.mark.mqtt


class Subscriber:
    """A plain paho subscriber collecting every message under ``{root}/v1/#``."""

    def __init__(self, host: str, port: int, root: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"{root}/v1/#", qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscription not acknowledged")

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    break
            time.sleep(0.02)
        time.sleep(0.2)  # anything extra would be a bug: let it arrive to be counted
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mqtt_broker: tuple[str, int], mqtt_root: str) -> Iterator[Subscriber]:
    sub = Subscriber(*mqtt_broker, mqtt_root)
    yield sub
    sub.close()


def _url(broker: tuple[str, int]) -> str:
    return f"mqtt://{broker[0]}:{broker[1]}"


def _expected(registry: Registry, seed: int, duration_ms: int) -> dict[DeviceKind, ReadingBatch]:
    sim = FleetSim(registry, SimSpec(seed=seed, fault_scale=20, warmup_s=0))
    return {b.kind: b for b in sim.advance(sim.now_ms + duration_ms)}


def _decoded(
    registry: Registry, messages: list[tuple[str, bytes]], root: str
) -> dict[DeviceKind, ReadingBatch]:
    parts: dict[DeviceKind, list[ReadingBatch]] = {k: [] for k in DeviceKind}
    for topic, payload in messages:
        info = contract.parse_topic(topic, root=root)
        wire = contract.decode(info, payload, now_ms=0)
        assert not wire.row_error.any()
        dev = registry.index_of(wire.device_ids)
        assert (dev >= 0).all()
        assert (registry.grid_ids[registry.device_grid[dev]] == info.grid).all()
        assert (registry.kind[dev] == info.kind.code).all()
        fields = {
            s.name: np.asarray(wire.fields[s.name]).astype(s.dtype) for s in FIELDS[info.kind]
        }
        parts[info.kind].append(ReadingBatch(info.kind, dev, wire.ts_ms.astype(np.int64), fields))
    return {k: ReadingBatch.concat(v) if v else ReadingBatch.empty(k) for k, v in parts.items()}


def _assert_same_readings(got: ReadingBatch, want: ReadingBatch) -> None:
    assert len(got) == len(want) > 0
    go = np.lexsort((got.ts_ms, got.device))
    wo = np.lexsort((want.ts_ms, want.device))
    assert np.array_equal(got.device[go], want.device[wo])
    assert np.array_equal(got.ts_ms[go], want.ts_ms[wo])
    for name, col in want.fields.items():
        assert np.array_equal(got.fields[name][go], col[wo], equal_nan=True), name


@pytest.mark.parametrize("fmt", [PayloadFormat.BINARY, PayloadFormat.JSON])
def test_batched_replay_decodes_to_the_generated_readings(
    small_registry: Registry,
    mqtt_broker: tuple[str, int],
    mqtt_root: str,
    subscriber: Subscriber,
    fmt: PayloadFormat,
) -> None:
    sim = FleetSim(small_registry, SimSpec(seed=9, fault_scale=20, warmup_s=0))
    spec = ReplaySpec(speed=None, duration_s=120, fmt=fmt, root=mqtt_root, max_batch=200)
    with MqttPublisher(_url(mqtt_broker), qos=1) as pub:
        stats = Replay(sim, pub, spec).run()
        assert pub.flush(30)
    messages = subscriber.wait_for(stats.messages)
    assert len(messages) == stats.messages
    for topic, payload in messages:
        assert topic.endswith("/batch")
        assert (payload[:4] == contract.BINARY_MAGIC) == (fmt is PayloadFormat.BINARY)
    got = _decoded(small_registry, messages, mqtt_root)
    want = _expected(small_registry, 9, 120_000)
    assert sum(len(b) for b in want.values()) == stats.total_readings
    for kind in DeviceKind:
        _assert_same_readings(got[kind], want[kind])
    assert (
        max(
            len(contract.decode(contract.parse_topic(t, root=mqtt_root), p, 0)) for t, p in messages
        )
        <= 200
    )


def test_per_device_replay_decodes_to_the_generated_readings(
    mqtt_broker: tuple[str, int], mqtt_root: str, subscriber: Subscriber
) -> None:
    registry = build_fleet(FleetSpec(n_devices=150, seed=3))
    sim = FleetSim(registry, SimSpec(seed=9, fault_scale=20, warmup_s=0))
    spec = ReplaySpec(speed=None, duration_s=60, fmt=PayloadFormat.DEVICE, root=mqtt_root)
    with MqttPublisher(_url(mqtt_broker), qos=1) as pub:
        stats = Replay(sim, pub, spec).run()
    messages = subscriber.wait_for(stats.messages)
    assert len(messages) == stats.messages
    topics = {t for t, _ in messages}
    assert all(t.endswith("/telemetry") for t in topics)
    assert len({t.split("/")[4] for t in topics}) == len(registry)  # every device its own topic
    got = _decoded(registry, messages, mqtt_root)
    want = _expected(registry, 9, 60_000)
    for kind in DeviceKind:
        _assert_same_readings(got[kind], want[kind])


def test_in_process_sink_gets_the_bytes_mqtt_carries(
    small_registry: Registry, mqtt_broker: tuple[str, int], mqtt_root: str, subscriber: Subscriber
) -> None:
    spec = ReplaySpec(speed=None, duration_s=30, root=mqtt_root)
    sunk: list[tuple[str, bytes]] = []
    Replay(FleetSim(small_registry, SimSpec(seed=4)), lambda t, p: sunk.append((t, p)), spec).run()
    with MqttPublisher(_url(mqtt_broker), qos=0) as pub:
        Replay(FleetSim(small_registry, SimSpec(seed=4)), pub, spec).run()
    received = subscriber.wait_for(len(sunk))
    assert sorted(received) == sorted(sunk)


def test_qos1_backpressure_bounds_unacknowledged_messages(
    mqtt_broker: tuple[str, int], mqtt_root: str, subscriber: Subscriber
) -> None:
    peak = 0
    with MqttPublisher(_url(mqtt_broker), qos=1, max_inflight=4, max_pending=8) as pub:
        for i in range(300):
            pub(f"{mqtt_root}/v1/g1/sewage/batch", b"x" * (i % 50))
            peak = max(peak, pub.unacked)
        assert pub.flush(30) and pub.unacked == 0
    assert 0 < peak <= 8
    assert len(subscriber.wait_for(300)) == 300


def test_publisher_refuses_bad_settings_and_unreachable_brokers() -> None:
    with pytest.raises(ConfigError, match="qos must be 0 or 1, got 2"):
        MqttPublisher("mqtt://127.0.0.1:1883", qos=2)
    with pytest.raises(ConfigError, match=r"max_pending must be 1..65535, got 70000"):
        MqttPublisher("mqtt://127.0.0.1:1883", max_pending=70_000)
    with pytest.raises(ConfigError, match="scheme must be mqtt:// or tcp://"):
        MqttPublisher("http://127.0.0.1:1883")
    with pytest.raises(GridwatchError, match="cannot connect to MQTT broker"):
        MqttPublisher("mqtt://127.0.0.1:1", connect_timeout_s=2)


def _sink_checking_time(
    clock: ManualClock, start_ms: int, speed: float, seen: list[int]
) -> Callable[[str, bytes], None]:
    def sink(topic: str, payload: bytes) -> None:
        wire = contract.decode(contract.parse_topic(topic), payload, 0)
        wall_sim_ms = start_ms + clock.monotonic() * 1000 * speed
        seen.append(int(wire.ts_ms.max() - wall_sim_ms))

    return sink


@pytest.mark.parametrize("speed", [1.0, 10.0])
def test_paced_replay_never_sends_a_reading_before_its_time(
    small_registry: Registry, speed: float
) -> None:
    clock = ManualClock()
    sim = FleetSim(small_registry, SimSpec(seed=2))
    ahead: list[int] = []
    spec = ReplaySpec(speed=speed, duration_s=20)
    replay = Replay(
        sim,
        _sink_checking_time(clock, sim.now_ms, speed, ahead),
        spec,
        clock=clock,
        sleep=clock.advance,
    )
    stats = replay.run()
    assert stats.sim_ms == 20_000
    assert clock.monotonic() == pytest.approx(20 / speed)
    assert stats.wall_s == pytest.approx(20 / speed)
    assert ahead and max(ahead) <= 0, "a reading left before the clock reached its timestamp"
    assert min(ahead) >= -spec.step_ms * 2


def test_ctrl_c_stops_cleanly_and_keeps_the_stats(small_registry: Registry) -> None:
    calls = 0

    def sink(topic: str, payload: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt

    stats = Replay(FleetSim(small_registry, SimSpec(seed=2)), sink, ReplaySpec(speed=None)).run()
    assert stats.interrupted and stats.messages == 4


def test_stop_event_ends_the_replay_after_the_current_step(small_registry: Registry) -> None:
    stop = threading.Event()
    spec = ReplaySpec(speed=None, duration_s=None, step_s=5)
    replay = Replay(FleetSim(small_registry, SimSpec(seed=2)), lambda t, p: stop.set(), spec)
    stats = replay.run(stop=stop)
    assert stats.interrupted and stats.sim_ms == 5_000


def test_count_only_counts_what_would_be_sent(small_registry: Registry) -> None:
    sent: list[bytes] = []
    spec = ReplaySpec(speed=None, duration_s=60)
    real = Replay(FleetSim(small_registry, SimSpec(seed=8)), lambda t, p: sent.append(p), spec)
    counted = Replay(
        FleetSim(small_registry, SimSpec(seed=8)),
        None,
        ReplaySpec(speed=None, duration_s=60, count_only=True),
    )
    a, b = real.run(), counted.run()
    assert a.messages == b.messages == len(sent) and a.readings == b.readings
    assert b.bytes == 0
    with pytest.raises(ValueError, match="needs a sink unless it only counts"):
        Replay(FleetSim(small_registry, SimSpec(seed=8)), None, spec)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto(conf: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    time.sleep(0.4)
    assert proc.poll() is None, "our own mosquitto did not start"
    return proc


@pytest.mark.slow
def test_qos1_publisher_waits_out_a_broker_restart_and_loses_nothing(tmp_path: Path) -> None:
    """Our own broker on another port dies mid-replay: the publisher blocks, reconnects, resends."""
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    brokers = [_mosquitto(conf)]

    def restart() -> None:
        brokers[0].kill()
        brokers[0].wait()
        time.sleep(1.0)
        brokers.append(_mosquitto(conf))

    restarter = threading.Thread(target=restart, name="test-broker-restart")
    try:
        with MqttPublisher(
            f"mqtt://127.0.0.1:{port}", qos=1, max_inflight=10, max_pending=50
        ) as pub:
            for i in range(2_000):
                if i == 500:
                    restarter.start()
                pub("t/v1/g/sewage/batch", b"x" * 64)
                assert pub.unacked <= 50
            restarter.join()
            assert pub.flush(30)
            assert pub.published == pub.acked == 2_000
    finally:
        if restarter.is_alive():
            restarter.join()
        for proc in brokers:
            proc.kill()
            proc.wait()
