"""Storage fixtures: every test that takes ``storage`` runs on PostgreSQL and SQLite.

The PostgreSQL run lives in a schema of its own on the ``test`` database, dropped
afterwards; the SQLite run in a file under ``tmp_path``. Other packages can copy this
fixture or call ``storage.testing.temp_storage`` directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.engine import Storage
from storage.testing import temp_storage


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(backend: str, tmp_path: Path, pg_url: str) -> Iterator[Storage]:
    """A migrated storage of ``backend`` that is dropped after the test."""
    with temp_storage(backend, pg_url=pg_url, tmp_dir=tmp_path) as s:  # type: ignore[arg-type]
        yield s


@pytest.fixture
def pg_storage(tmp_path: Path, pg_url: str) -> Iterator[Storage]:
    """PostgreSQL only: partitions, COPY, outages."""
    with temp_storage("postgres", pg_url=pg_url, tmp_dir=tmp_path) as s:
        yield s
