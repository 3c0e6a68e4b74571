"""TLS (off by default) against a Mosquitto of our own with a throw-away CA."""

from __future__ import annotations

import ssl
import subprocess
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
from ingest.testing import OwnBroker

pytestmark = pytest.mark.mqtt


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _pki(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, valid for a day."""
    f = {n: d / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt", "san.ext")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["ca.key"]),
             "-out", str(f["ca.crt"]), "-days", "1", "-subj", "/CN=gridwatch test CA")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["srv.key"]),
             "-out", str(f["srv.csr"]), "-subj", "/CN=127.0.0.1")  # fmt: skip
    f["san.ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(f["srv.csr"]), "-CA", str(f["ca.crt"]), "-CAkey",
             str(f["ca.key"]), "-CAcreateserial", "-out", str(f["srv.crt"]), "-days", "1",
             "-extfile", str(f["san.ext"]))  # fmt: skip
    for key in ("ca.key", "srv.key"):
        f[key].chmod(0o600)
    return f


def test_collector_over_tls_verifies_the_broker(
    small_registry: Registry, own_broker: Callable[..., OwnBroker], tmp_path: Path
) -> None:
    pki = _pki(tmp_path)
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
