"""TLS (off by default) against a Mosquitto of our own with a throw-away CA."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from ingest_testkit import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch import contract
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.mqtt import MqttCollector, MqttSettings
from ingest.sinks import MemorySink
from ingest.testing import OwnBroker, throwaway_pki

pytestmark = pytest.mark.mqtt


def test_collector_over_tls_verifies_the_broker(
    small_registry: Registry, own_broker: Callable[..., OwnBroker], tmp_path: Path
) -> None:
    pki = throwaway_pki(tmp_path)
    broker = own_broker(
        extra=[f"cafile {pki['ca.crt']}", f"certfile {pki['srv.crt']}", f"keyfile {pki['srv.key']}"]
    )
    reg = small_registry
    sink = MemorySink()
    collector = Collector(reg, sinks=[sink])
    settings = MqttSettings.from_url(
        f"mqtts://127.0.0.1:{broker.port}", client_id="tls-collector", ca_file=str(pki["ca.crt"])
    )
    assert settings.tls
    front = MqttCollector(collector, settings, contract.subscription_filters(None, "gw"))
    untrusting = Collector(reg)
    stranger = MqttCollector(
        untrusting,
        MqttSettings.from_url(f"mqtts://127.0.0.1:{broker.port}", client_id="tls-untrusting"),
        contract.subscription_filters(None, "gw"),
    )
    front.start()
    stranger.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tls-pub")
    try:
        assert front.wait_ready(15), broker.log()
        pub.tls_set(ca_certs=str(pki["ca.crt"]), cert_reqs=ssl.CERT_REQUIRED)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        d = int(reg.devices_of_kind(DeviceKind.SEWAGE)[0])
        topic = contract.telemetry_topic(reg.grid_of(d), "sewage", str(reg.device_ids[d]))
        now = time.time_ns() // 1_000_000
        pub.publish(
            topic, orjson.dumps({"ts": now, "values": {"level_m": 1, "tilt_deg": 1}}), qos=1
        )
        wait_until(lambda: sink.rows() == 1, 20, "the reading over TLS")
        # a collector without the CA refuses the broker's certificate and never subscribes
        assert not stranger.wait_ready(1.0)
        assert not stranger.connected
    finally:
        pub.loop_stop()
        for f in (front, stranger):
            f.stop()
        collector.close()
        untrusting.close()
