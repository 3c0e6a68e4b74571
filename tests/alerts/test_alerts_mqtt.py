"""Alert changes reach integrators over MQTT (QoS 1) from the durable outbox."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from alerts.mqtt import AlertPublisher
from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.contract import alert_topic
from gridwatch.domain import DetectionKind as K
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from storage.engine import Storage

pytestmark = pytest.mark.mqtt


def test_alerts_are_published_per_grid_and_grade_then_removed_from_the_outbox(
    *,
    make_dispatcher: Any,
    storage: Storage,
    small_registry: Registry,
    clock: ManualClock,
    mqtt_broker: tuple[str, int],
    mqtt_root: str,
) -> None:
    host, port = mqtt_broker
    got: list[tuple[str, dict[str, Any]]] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append((msg.topic, orjson.loads(msg.payload)))
        if len(got) >= 3:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{mqtt_root}-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(host, port)
    sub.subscribe(f"{mqtt_root}/v1/+/alerts/+", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        d = make_dispatcher()
        el = small_registry.devices_of_kind(DeviceKind.ELEVATOR)[:2]
        d.handle(Detections.of(K.ENTRAPMENT, el, clock.now_ms(), 1.0, stopped_s=40.0))
        sw = small_registry.devices_of_kind(DeviceKind.SEWAGE)[:1]
        d.handle(Detections.of(K.STUCK, sw, clock.now_ms(), 1.0))
        with AlertPublisher(
            storage, host, port, root=mqtt_root, client_id=f"{mqtt_root}-pub"
        ) as pub:
            assert pub.drain() == 3
        assert done.wait(10)
    finally:
        sub.loop_stop()
        sub.disconnect()
    topics = sorted(t for t, _ in got)
    expected = sorted(
        [alert_topic(small_registry.grid_of(int(e)), "red", root=mqtt_root) for e in el]
        + [alert_topic(small_registry.grid_of(int(sw[0])), "yellow", root=mqtt_root)]
    )
    assert topics == expected
    red = [p for t, p in got if t.endswith("/red")]
    assert {p["kind"] for p in red} == {"trapped_passenger"}
    assert {p["event"] for p in red} == {"opened"} and red[0]["evidence"]["stopped_s"] == 40.0
    with storage.connection(readonly=True) as conn:
        assert conn.execute("SELECT count(*) FROM alert_outbox").fetchone()[0] == 0
