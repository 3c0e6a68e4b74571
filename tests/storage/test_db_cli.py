from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gridwatch.cli import main
from gridwatch.cli.query import parse_time
from gridwatch.deadletter import DeadLetter
from gridwatch.domain import DeviceKind
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry
from storage.engine import open_storage
from storage.testing import pg_schema, synthetic_batch
from storage.writer import ReadingWriter


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``main`` points the root logger at this test's stderr; put the old handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, pg_url: str):  # type: ignore[no-untyped-def]
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/cli.db"
    else:
        with pg_schema(pg_url) as schema:
            yield f"{pg_url}?schema={schema}"


def test_migrate_stats_and_queries(
    db_url: str, small_registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "migrate", "--db", db_url]) == 0
    assert "applied 0001_core" in capsys.readouterr().out
    assert main(["db", "migrate", "--db", db_url]) == 0
    assert "up to date" in capsys.readouterr().out

    reg_file = tmp_path / "fleet.csv"
    small_registry.to_csv(reg_file)
    assert main(["db", "load-registry", str(reg_file), "--db", db_url]) == 0
    assert f"stored {len(small_registry)} devices" in capsys.readouterr().out

    now = time.time_ns() // 1_000_000
    storage = open_storage(db_url)
    try:
        keys = storage.device_keys(small_registry)
        batch = synthetic_batch(small_registry, DeviceKind.SEWAGE, start_ms=now - 600_000, seed=1)
        with ReadingWriter(storage, keys, spill_dir=tmp_path / "spill") as w:
            w.submit(batch)
            assert w.flush(timeout=60)
        storage.write_dead_letters([DeadLetter.of("gw/x", "bad_json", b"{", now)])
    finally:
        storage.close()

    assert main(["db", "stats", "--db", db_url, "--json"]) == 0
    stats = orjson.loads(capsys.readouterr().out)
    assert stats["active_devices"] == len(small_registry)
    assert stats["dead_letters_by_reason"] == {"bad_json": {"records": 1, "rows": 1}}
    assert main(["db", "stats", "--db", db_url]) == 0
    assert "sewage" in capsys.readouterr().out

    dev = str(small_registry.device_ids[int(batch.device[0])])
    assert main(["query", "device", dev, "--since", "1h", "--db", db_url, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["ts_ms"] == int(batch.ts_ms[0])
    assert main(["query", "device", dev, "--since", "2d", "--db", db_url]) == 0
    assert "1m" in capsys.readouterr().out
    assert main(["query", "last", "sewage", "--device", dev, "--db", db_url, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["device_id"] == dev
    assert main(["query", "deadletters", "--reason", "bad_json", "--db", db_url, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["topic"] == "gw/x"
    assert main(["query", "deadletters", "--counts", "--db", db_url]) == 0
    assert "bad_json" in capsys.readouterr().out
    assert main(["query", "grids", "--db", db_url, "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == small_registry.grid_ids.size
    assert main(["db", "maintain", "--db", db_url]) == 0
    assert main(["query", "device", "nope", "--db", db_url]) == 1
    assert "unknown device 'nope'" in capsys.readouterr().err


def test_parse_time() -> None:
    assert parse_time("90s", 100_000) == 10_000
    assert parse_time("1.5h", 10_000_000) == 4_600_000
    assert parse_time("2026-11-26T00:00:00", 0) == parse_time("2026-11-26T00:00:00Z", 0)
    with pytest.raises(ConfigError, match="time 'yesterday': use a duration"):
        parse_time("yesterday", 0)
