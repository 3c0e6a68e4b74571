"""The bench's lean QoS 1 publisher (``sim.publish.GatewayPublisher``) against real Mosquitto:
every message arrives once, byte for byte, acknowledgements are counted, the window holds."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch.errors import ConfigError, GridwatchError
from sim.publish import GatewayPublisher

pytestmark = pytest.mark.mqtt


def _subscribe(host: str, port: int, root: str, out: list[tuple[str, bytes]]) -> mqtt.Client:
    ready = threading.Event()
    lock = threading.Lock()

    def on_message(client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            out.append((msg.topic, bytes(msg.payload)))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-gwsub-{uuid.uuid4().hex[:8]}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_connect = lambda c, *a: c.subscribe(f"{root}/v1/#", qos=1)
    sub.connect(host, port)
    sub.loop_start()
    assert ready.wait(10), "subscription not acknowledged"
    return sub


def test_every_message_arrives_once_and_the_window_holds(
    mqtt_broker: tuple[str, int], mqtt_root: str
) -> None:
    got: list[tuple[str, bytes]] = []
    sub = _subscribe(*mqtt_broker, mqtt_root, got)
    sent = [
        (
            f"{mqtt_root}/v1/g{i % 7}/sewage/batch",
            bytes([i % 251]) * (i % 300 + (200 if i % 5 else 0)),
        )
        for i in range(600)
    ]  # payloads of 0..499 bytes: one- and two-byte remaining lengths
    peak = 0
    try:
        with GatewayPublisher(f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}", max_pending=8) as pub:
            for topic, payload in sent:
                pub(topic, payload)
                peak = max(peak, pub.unacked)
            pub.poll()
            assert pub.flush(30)
            assert pub.acked == pub.published == len(sent)
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # a duplicate would arrive now
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert sorted(got) == sorted(sent)
    assert 0 < peak <= 8


def test_refuses_bad_settings_and_unreachable_brokers() -> None:
    with pytest.raises(ConfigError):
        GatewayPublisher("mqtt://127.0.0.1:1883", max_pending=0)
    with pytest.raises(GridwatchError, match="cannot connect"):
        GatewayPublisher("mqtt://127.0.0.1:1", connect_timeout_s=2)
