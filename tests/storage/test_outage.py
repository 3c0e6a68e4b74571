"""The database goes away mid-stream; every accepted reading lands exactly once.

PostgreSQL access is cut with a TCP proxy the test owns (the shared server keeps
running) or by terminating the writer's own backend connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from storage.engine import PostgresStorage, Storage, open_storage
from storage.queries import duplicate_keys, reading_count
from storage.testing import TcpProxy, split_batch, synthetic_batch
from storage.writer import ReadingWriter

pytestmark = pytest.mark.postgres
T0 = time.time_ns() // 1_000_000 // 3_600_000 * 3_600_000 - 3_600_000  # recent: inside retention


def _wait_until(pred: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def test_proxy_outage_spills_and_replays_exactly_once(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path, pg_url: str
) -> None:
    assert isinstance(pg_storage, PostgresStorage)
    keys = pg_storage.save_registry(small_registry)
    batches = split_batch(
        synthetic_batch(small_registry, DeviceKind.SEWAGE, start_ms=T0, rounds=12, seed=5), 400
    )
    total = sum(len(b) for b in batches)
    spill = tmp_path / "spill"
    with TcpProxy.for_url(pg_url)[0] as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        via_proxy = open_storage(url, schema=pg_storage.schema, pool_min=0)
        w = ReadingWriter(
            via_proxy,
            keys,
            spill_dir=spill,
            commit_rows=500,
            max_memory_rows=2_000,
            retry_initial_s=0.05,
            retry_max_s=0.3,
        ).start()
        try:
            third = len(batches) // 3
            for b in batches[:third]:
                w.submit(b, timeout=30)
            proxy.cut()  # mid-stream: some rows committed, some in flight, most to come
            for b in batches[third:]:
                w.submit(b, timeout=30)  # keeps accepting: memory, then disk
            _wait_until(lambda: w.stats().spill_files > 0 and not w.stats().db_up)
            during = w.stats()
            assert during.outages >= 1
            assert during.spilled_rows > 0
            assert list(spill.glob("*.npz"))
            assert reading_count(pg_storage, DeviceKind.SEWAGE) < total
            proxy.restore()
            assert w.flush(timeout=120)
        finally:
            w.stop()
            via_proxy.close()
    st = w.stats()
    assert reading_count(pg_storage, DeviceKind.SEWAGE) == total
    assert duplicate_keys(pg_storage, DeviceKind.SEWAGE) == 0
    assert st.written_rows + st.duplicate_rows == total + st.duplicate_rows
    assert st.written_rows == total
    assert st.replayed_rows >= st.spilled_rows - st.duplicate_rows
    assert not list(spill.glob("*.npz"))
    assert st.outstanding_rows == 0 and st.spill_files == 0


def test_terminated_backend_reconnects_without_loss(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path, pg_url: str
) -> None:
    assert isinstance(pg_storage, PostgresStorage)
    keys = pg_storage.save_registry(small_registry)
    batches = split_batch(
        synthetic_batch(small_registry, DeviceKind.ELEVATOR, start_ms=T0, rounds=20, seed=6), 250
    )
    total = sum(len(b) for b in batches)
    name = "outage"
    app = f"gridwatch-writer-{name}/{pg_storage.schema}"[-63:]
    killed = 0
    with (
        ReadingWriter(
            pg_storage,
            keys,
            spill_dir=tmp_path / "spill",
            commit_rows=300,
            retry_initial_s=0.05,
            retry_max_s=0.2,
            name=name,
        ) as w,
        psycopg.connect(pg_url, autocommit=True) as admin,
    ):

        def writer_backends() -> int:
            return int(
                admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
                ).fetchone()[0]
            )

        for i, b in enumerate(batches):
            w.submit(b, timeout=30)
            if i % 7 == 3:
                _wait_until(lambda: writer_backends() > 0)  # (re)connected: kill it again
                killed += admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (app,),
                ).fetchone()[0]
        assert w.flush(timeout=120)
        st = w.stats()
    assert killed >= 1
    assert st.outages >= 1
    assert reading_count(pg_storage, DeviceKind.ELEVATOR) == total
    assert duplicate_keys(pg_storage, DeviceKind.ELEVATOR) == 0
    assert st.written_rows == total


def test_pool_reports_an_outage_and_recovers(pg_storage: Storage, pg_url: str) -> None:
    from gridwatch.errors import StorageError

    assert isinstance(pg_storage, PostgresStorage)
    with TcpProxy.for_url(pg_url)[0] as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        s = open_storage(url, schema=pg_storage.schema, connect_timeout_s=1)
        try:
            assert s.dead_letter_counts() == {}
            proxy.cut()
            with pytest.raises(StorageError, match="unavailable: no connection within"):
                s.dead_letter_counts()
            proxy.restore()
            _wait_until(lambda: _answers(s))  # the pool reconnects on its own back-off

            assert s.dead_letter_counts() == {}
        finally:
            s.close()


def _answers(storage: Storage) -> bool:
    from gridwatch.errors import StorageError

    try:
        storage.dead_letter_counts()
    except StorageError:
        return False
    return True


def test_sync_makes_rows_durable_on_disk_while_the_database_is_down(
    pg_storage: Storage, small_registry: Registry, tmp_path: Path, pg_url: str
) -> None:
    """``sync`` returns during an outage (rows spilled, fsynced), ``flush`` does not; a
    writer stopped in the outage leaves files that the next writer replays exactly once."""
    assert isinstance(pg_storage, PostgresStorage)
    keys = pg_storage.save_registry(small_registry)
    batch = synthetic_batch(small_registry, DeviceKind.SEWAGE, start_ms=T0, rounds=2, seed=9)
    spill = tmp_path / "spill"
    with TcpProxy.for_url(pg_url)[0] as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        via_proxy = open_storage(url, schema=pg_storage.schema, pool_min=0)
        w = ReadingWriter(
            via_proxy,
            keys,
            spill_dir=spill,
            commit_rows=100_000,
            max_memory_rows=200_000,
            retry_initial_s=0.05,
            retry_max_s=0.2,
        ).start()
        try:
            proxy.cut()
            w.submit(batch, timeout=30)  # far below the memory bound: would sit in memory
            assert w.sync(timeout=60)
            st = w.stats()
            assert st.outstanding_rows == 0
            assert st.spilled_rows == len(batch)
            assert list(spill.glob("*.npz"))
            assert not w.flush(timeout=0.5)  # committed? no: the database is still away
        finally:
            w.stop(timeout=1)
            via_proxy.close()
    assert reading_count(pg_storage, DeviceKind.SEWAGE) == 0
    again = ReadingWriter(pg_storage, keys, spill_dir=spill).start()
    try:
        assert again.flush(timeout=60)
    finally:
        again.stop()
    assert reading_count(pg_storage, DeviceKind.SEWAGE) == len(batch)
    assert duplicate_keys(pg_storage, DeviceKind.SEWAGE) == 0
    assert not list(spill.glob("*.npz"))
