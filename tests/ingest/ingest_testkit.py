"""Helpers of the ingest tests: brokers of our own, publishers, waiting, child processes.

Tests that stop, restart or lock down a broker start their OWN Mosquitto on a free
loopback port with the shipped ``deploy/mosquitto.conf`` (only the port, persistence
directory, log destination and user are changed), never the machine's shared one.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch import contract
from gridwatch.batch import ReadingBatch
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


class Publisher:
    """A paho QoS 1 publisher that remembers which messages the broker acknowledged."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        max_inflight: int = 200,
        persistent: bool = False,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-pub-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1.0)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.acked: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, props: self.acked.add(mid)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def publish_all(self, messages: Sequence[tuple[str, bytes]], timeout: float = 30.0) -> None:
        infos = [self.publish(t, p) for t, p in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise AssertionError(f"publish {info.mid} not acknowledged in {timeout} s")

    def wait_acked(self, infos: Sequence[mqtt.MQTTMessageInfo], timeout: float = 60.0) -> None:
        """Wait for the broker's PUBACK of every message, across reconnects (paho resends
        what was unacknowledged; ``info.rc`` keeps the error of a send while offline)."""
        wait_until(lambda: all(i.mid in self.acked for i in infos), timeout, "PUBACKs")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def gridwatch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gridwatch", "--log-format", "json", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def expected_readings(
    registry: Registry, messages: Sequence[tuple[str, bytes]], root: str, now_ms: int = 0
) -> dict[DeviceKind, ReadingBatch]:
    """What was published, decoded independently with the contract, per kind."""
    parts: dict[DeviceKind, list[ReadingBatch]] = {k: [] for k in DeviceKind}
    for topic, payload in messages:
        info = contract.parse_topic(topic, root)
        wire = contract.decode(info, payload, now_ms)
        assert not wire.row_error.any()
        fields = {
            s.name: wire.fields[s.name].astype(s.dtype) if s.name in wire.fields else None
            for s in FIELDS[info.kind]
        }
        parts[info.kind].append(
            ReadingBatch(
                info.kind,
                registry.index_of(wire.device_ids),
                wire.ts_ms.astype(np.int64),
                {k: v for k, v in fields.items() if v is not None},
            )
        )
    return {k: ReadingBatch.concat(v) if v else ReadingBatch.empty(k) for k, v in parts.items()}


def assert_same_readings(got: ReadingBatch, expected: ReadingBatch) -> None:
    """Same multiset of readings: count, devices, timestamps and every field value."""
    assert len(got) == len(expected), f"{got.kind}: {len(got)} rows, expected {len(expected)}"
    go = np.lexsort((got.ts_ms, got.device))
    eo = np.lexsort((expected.ts_ms, expected.device))
    assert np.array_equal(got.device[go], expected.device[eo])
    assert np.array_equal(got.ts_ms[go], expected.ts_ms[eo])
    for spec in FIELDS[got.kind]:
        a = got.fields[spec.name][go]
        b = expected.fields[spec.name][eo].astype(a.dtype)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), spec.name
