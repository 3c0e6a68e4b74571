"""Fixtures shared by every test package.

Integration tests use the real services of the machine (DEVELOPERS.md): Mosquitto on
127.0.0.1:1883 and PostgreSQL on 127.0.0.1:5432. Each test isolates itself by a unique
MQTT topic root or a unique PostgreSQL schema, so tests can run side by side.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from gridwatch.registry import Registry
from sim.fleet import FleetSpec, build_fleet

MQTT_HOST = os.environ.get("GRIDWATCH_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("GRIDWATCH_TEST_MQTT_PORT", "1883"))
PG_URL = os.environ.get("GRIDWATCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def small_registry() -> Registry:
    """2,000 devices over 5 grids: every kind present, fast to build."""
    return build_fleet(FleetSpec(n_devices=2_000, seed=7))


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """The machine's Mosquitto; fails loudly (never skips) when it is down."""
    if not _port_open(MQTT_HOST, MQTT_PORT):
        pytest.fail(f"Mosquitto is not listening on {MQTT_HOST}:{MQTT_PORT}; run .ci/run")
    return MQTT_HOST, MQTT_PORT


@pytest.fixture
def mqtt_root() -> str:
    """A topic root no other test uses, so concurrent tests never see each other's messages."""
    return f"gwt{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The machine's PostgreSQL; fails loudly (never skips) when it is down."""
    if not _port_open("127.0.0.1", 5432):
        pytest.fail("PostgreSQL is not listening on 127.0.0.1:5432; run .ci/run")
    yield PG_URL
