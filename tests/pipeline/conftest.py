"""Fixtures of the pipeline tests: a PostgreSQL schema and a Mosquitto of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.testing import OwnBroker
from storage.testing import pg_schema


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A fresh schema, dropped afterwards (its sessions terminated first)."""
    with pg_schema(pg_url, prefix="gwp") as name:
        yield name


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()
