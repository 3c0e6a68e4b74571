from __future__ import annotations

import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from ingest_testkit import child_env, gridwatch_cmd, wait_until
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gridwatch import contract
from gridwatch.domain import DeviceKind
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry
from ingest.brokerauth import (
    broker_auth,
    mosquitto_hash,
    plan_credentials,
    read_credentials,
    verify_mosquitto_hash,
)
from ingest.collector import Collector
from ingest.config import IngestConfig
from ingest.mqtt import MqttCollector, MqttSettings
from ingest.sinks import MemorySink
from ingest.testing import OwnBroker


def test_hash_matches_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret"], check=True)
    user, hashed = path.read_text().strip().split(":", 1)
    assert user == "alice"
    assert verify_mosquitto_hash("s3cret", hashed)
    assert not verify_mosquitto_hash("wrong", hashed)
    ours = mosquitto_hash("s3cret", salt=b"0123456789ab")
    assert ours.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert verify_mosquitto_hash("s3cret", ours)


def test_plan_gives_each_device_only_its_own_topic(small_registry: Registry) -> None:
    reg = small_registry
    creds = plan_credentials(reg, root="gw", publisher_user="sim")
    by_user = {c.username: c for c in creds}
    assert len(creds) == len(reg) + 2
    d = int(reg.devices_of_kind(DeviceKind.SEWAGE)[3])
    dev = str(reg.device_ids[d])
    assert by_user[dev].write == (contract.telemetry_topic(reg.grid_of(d), "sewage", dev),)
    assert by_user[dev].read == ()
    assert by_user["gridwatch-collector"].read == ("gw/v1/+/+/+/telemetry", "gw/v1/+/+/batch")
    assert by_user["gridwatch-collector"].write == ("gw/v1/+/alerts/#",)
    assert "password='***'" in repr(by_user[dev])
    grid_creds = plan_credentials(reg, root="gw", per="grid")
    assert len(grid_creds) == 1 + reg.grid_ids.size
    g = str(reg.grid_ids[0])
    assert {c.username: c for c in grid_creds}[f"gateway-{g}"].write == (
        f"gw/v1/{g}/+/batch",
        f"gw/v1/{g}/+/+/telemetry",
    )
    with pytest.raises(ConfigError, match="pattern"):
        plan_credentials(reg, root="gw", per="grid", acl="pattern")


def test_rerun_keeps_passwords_and_files_are_private(
    small_registry: Registry, tmp_path: Path
) -> None:
    files = broker_auth(small_registry, tmp_path, root="gw", use_mosquitto_passwd=False)
    first = read_credentials(files.credentials)
    assert len(first) == files.users == len(small_registry) + 1
    assert stat.S_IMODE(files.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.passwd.stat().st_mode) == 0o600
    broker_auth(small_registry, tmp_path, root="gw", use_mosquitto_passwd=False)
    assert read_credentials(files.credentials) == first
    lines = dict(line.split(":", 1) for line in files.passwd.read_text().splitlines())
    dev = str(small_registry.device_ids[0])
    assert verify_mosquitto_hash(first[dev], lines[dev])
    acl = files.acl.read_text()
    assert f"user {dev}\ntopic write gw/v1/" in acl
    assert "allow_anonymous false" in files.conf.read_text()


class _Device:
    """A device (or anyone) connecting with a username and password over MQTT 5."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        self.connack: Any = None
        self.pubacks: dict[int, Any] = {}
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, reason, props: self.pubacks.__setitem__(
            mid, reason
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self.connected.set()

    def publish(self, topic: str, payload: bytes) -> Any:
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.pubacks, 10, "PUBACK")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.mqtt
@pytest.mark.parametrize("hasher", ["mosquitto_passwd", "hashlib"])
def test_broker_enforces_device_identity(
    small_registry: Registry,
    registry_csv: Path,
    own_broker: Callable[..., OwnBroker],
    tmp_path: Path,
    hasher: str,
) -> None:
    reg = small_registry
    out = tmp_path / "auth"
    subprocess.run(
        gridwatch_cmd(
            "broker-auth", "--registry", str(registry_csv), "--out", str(out), "--hasher", hasher
        ),
        check=True,
        env=child_env(),
        capture_output=True,
        timeout=120,
    )
    creds = read_credentials(out / "credentials.csv")
    broker = own_broker(auth_conf=out / "mosquitto-auth.conf")

    sink = MemorySink()
    collector = Collector(reg, sinks=[sink], config=IngestConfig())
    front = MqttCollector(
        collector,
        MqttSettings(
            port=broker.port,
            client_id="auth-collector",
            username="gridwatch-collector",
            password=creds["gridwatch-collector"],
            session_expiry_s=0,
        ),
        contract.subscription_filters(None, "gw"),
    )
    front.start()
    devices: list[_Device] = []
    try:
        assert front.wait_ready(10), broker.log()
        a, b = (int(i) for i in reg.devices_of_kind(DeviceKind.SEWAGE)[:2])
        a_id, b_id = str(reg.device_ids[a]), str(reg.device_ids[b])
        a_topic = contract.telemetry_topic(reg.grid_of(a), "sewage", a_id)
        b_topic = contract.telemetry_topic(reg.grid_of(b), "sewage", b_id)
        now = time.time_ns() // 1_000_000

        def reading(ts: int) -> bytes:
            return orjson.dumps({"ts": ts, "values": {"level_m": 1.0, "tilt_deg": 1.0}})

        # a wrong password and no credentials are both refused at CONNECT
        for user, pw in ((a_id, "not-the-password"), ("", "")):
            intruder = _Device(broker.port, user, pw)
            devices.append(intruder)
            assert intruder.connected.wait(10)
            assert intruder.connack.is_failure, intruder.connack

        dev_a = _Device(broker.port, a_id, creds[a_id])
        devices.append(dev_a)
        assert dev_a.connected.wait(10) and not dev_a.connack.is_failure
        denied = dev_a.publish(b_topic, reading(now))  # A pretending to be B
        assert denied.is_failure and "authori" in str(denied).lower(), str(denied)
        assert not dev_a.publish(a_topic, reading(now + 1)).is_failure  # its own topic
        dev_b = _Device(broker.port, b_id, creds[b_id])
        devices.append(dev_b)
        assert dev_b.connected.wait(10) and not dev_b.connack.is_failure
        assert not dev_b.publish(b_topic, reading(now + 2)).is_failure
        wait_until(lambda: sink.rows() >= 2, 20, "the two allowed readings")
        time.sleep(0.2)
        got = sink.of_kind(DeviceKind.SEWAGE)
        assert sorted(zip(got.device.tolist(), got.ts_ms.tolist(), strict=True)) == [
            (a, now + 1),
            (b, now + 2),
        ]
        assert collector.rejected == {}  # the forged reading never reached the collector
    finally:
        for d in devices:
            d.close()
        front.stop()
        collector.close()
