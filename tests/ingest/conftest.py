"""Fixtures of the ingest tests (helpers live in ``ingest_testkit``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gridwatch.contract import subscription_filters
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.config import IngestConfig
from ingest.mqtt import MqttCollector, MqttSettings
from ingest.sinks import MemoryDeadLetters, MemorySink
from ingest.testing import OwnBroker


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Callable[..., OwnBroker]]:
    """Factory: ``own_broker(extra=[...], auth_conf=path)`` starts a private Mosquitto."""
    started: list[OwnBroker] = []

    def make(**kwargs: object) -> OwnBroker:
        b = OwnBroker(tmp_path / f"broker{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.kill()


@pytest.fixture
def registry_csv(tmp_path: Path, small_registry: Registry) -> Path:
    path = tmp_path / "registry.csv"
    small_registry.to_csv(path)
    return path


@pytest.fixture
def live_collector(
    small_registry: Registry, mqtt_broker: tuple[str, int], mqtt_root: str
) -> Iterator[Callable[..., Any]]:
    """Factory: a running ``MqttCollector`` on the shared broker under ``mqtt_root``,
    with memory sinks; returns ``(front, sink, dead_letters)``. Stopped at teardown."""
    started: list[Any] = []

    def make(
        *, protocol: str = "5", **cfg: Any
    ) -> tuple[MqttCollector, MemorySink, MemoryDeadLetters]:
        host, port = mqtt_broker
        sink, dead = MemorySink(), MemoryDeadLetters()
        collector = Collector(
            small_registry,
            sinks=[sink],
            dead_letters=dead,
            config=IngestConfig(root=mqtt_root, **cfg),
        )
        settings = MqttSettings(
            host=host,
            port=port,
            client_id=f"test-{mqtt_root}-{len(started)}",
            session_expiry_s=0,
            protocol=protocol,  # type: ignore[arg-type]
        )
        front = MqttCollector(collector, settings, subscription_filters(None, mqtt_root))
        front.start()
        started.append(front)
        assert front.wait_ready(10), "collector did not subscribe"
        return front, sink, dead

    yield make
    for front in started:
        front.stop()
        front.collector.close()
