from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from gridwatch.registry import Registry
from storage.engine import Storage
from storage.queries import duplicate_keys, reading_count, series
from storage.rows import Rows
from storage.sinks import SinkUnavailableError, WriteResult
from storage.testing import split_batch, synthetic_batch
from storage.writer import ReadingWriter, WriterFullError

T0 = time.time_ns() // 1_000_000 // 3_600_000 * 3_600_000 - 3_600_000  # recent: inside retention


def _batches(
    reg: Registry, kind: DeviceKind, rounds: int, size: int, seed: int = 1
) -> list[ReadingBatch]:
    return split_batch(synthetic_batch(reg, kind, start_ms=T0, rounds=rounds, seed=seed), size)


def test_writes_every_reading_once_with_values(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = storage.save_registry(small_registry)
    sewage = synthetic_batch(small_registry, DeviceKind.SEWAGE, start_ms=T0, rounds=3, seed=2)
    highfall = synthetic_batch(small_registry, DeviceKind.HIGHFALL, start_ms=T0, rounds=2, seed=3)
    with ReadingWriter(storage, keys, spill_dir=tmp_path / "spill", commit_rows=1_000) as w:
        for b in split_batch(sewage, 640) + split_batch(highfall, 333):
            w.submit(b)
        assert w.flush(timeout=60)
        st = w.stats()
    assert st.written_rows == len(sewage) + len(highfall)
    assert st.duplicate_rows == 0 and st.outstanding_rows == 0
    assert reading_count(storage, DeviceKind.SEWAGE) == len(sewage)
    assert reading_count(storage, DeviceKind.HIGHFALL) == len(highfall)
    # Values survive the trip (NaN as NULL, int64 exact), for one device.
    dev = int(sewage.device[0])
    mine = np.flatnonzero(sewage.device == dev)
    got = series(storage, str(small_registry.device_ids[dev]), T0, T0 + 3_600_000, resolution="raw")
    order = mine[np.argsort(sewage.ts_ms[mine])]
    np.testing.assert_array_equal(got.ts_ms, sewage.ts_ms[order])
    for name in ("level_m", "tilt_deg", "rain_mmph"):
        np.testing.assert_array_equal(got.columns[name], sewage.fields[name][order])
    hdev = int(highfall.device[0])
    hmine = np.flatnonzero(highfall.device == hdev)
    hgot = series(
        storage, str(small_registry.device_ids[hdev]), T0, T0 + 3_600_000, resolution="raw"
    )
    np.testing.assert_array_equal(
        np.sort(hgot.columns["track_id"]), np.sort(highfall.fields["track_id"][hmine])
    )


def test_idempotent_on_device_and_ts(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = storage.save_registry(small_registry)
    batches = _batches(small_registry, DeviceKind.ELEVATOR, rounds=2, size=100)
    total = sum(len(b) for b in batches)
    dup_inside = ReadingBatch.concat([batches[0], batches[0]])  # duplicates within one batch
    with ReadingWriter(storage, keys, spill_dir=tmp_path / "s", commit_rows=250) as w:
        for b in batches:
            w.submit(b)
        w.submit(batches[1])  # a redelivered batch
        w.submit(dup_inside)
        assert w.flush(timeout=60)
        st = w.stats()
    assert reading_count(storage, DeviceKind.ELEVATOR) == total
    assert duplicate_keys(storage, DeviceKind.ELEVATOR) == 0
    assert st.written_rows == total
    assert st.duplicate_rows == len(batches[1]) + len(dup_inside)


def test_rollups_follow_the_writes(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = storage.save_registry(small_registry)
    b = synthetic_batch(small_registry, DeviceKind.SEWAGE, start_ms=T0, rounds=12, seed=4)
    with ReadingWriter(
        storage, keys, spill_dir=tmp_path / "s", commit_rows=5_000, rollup_interval_s=0.0
    ) as w:
        for part in split_batch(b, 2_000):
            w.submit(part)
        assert w.flush(timeout=60)
    dev = int(b.device[0])
    did = str(small_registry.device_ids[dev])
    roll = series(storage, did, T0 - 60_000, T0 + 3_600_000, resolution="1m")
    mine = b.device == dev
    minutes = b.ts_ms[mine] // 60_000 * 60_000
    np.testing.assert_array_equal(roll.ts_ms, np.unique(minutes))
    assert int(roll.columns["n"].sum()) == int(mine.sum())
    for m, n, mx in zip(roll.ts_ms, roll.columns["n"], roll.columns["level_m_max"], strict=True):
        sel = minutes == m
        assert n == sel.sum()
        assert mx == pytest.approx(float(b.fields["level_m"][mine][sel].max()), rel=1e-6)
    # "auto" on a long range answers from the rollups.
    assert series(storage, did, T0 - 86_400_000, T0 + 86_400_000).resolution == "1m"


class _FlakySink:
    """A sink that is 'down' until told otherwise, then delegates; counts attempts."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.up = False
        self.attempts = 0

    def write(self, chunk: list[Rows]) -> WriteResult:
        self.attempts += 1
        if not self.up:
            raise SinkUnavailableError("down for the test")
        return self.inner.write(chunk)  # type: ignore[attr-defined]

    def refresh_dirty(self, until_ms: int | None) -> int | None:
        if not self.up:
            raise SinkUnavailableError("down for the test")
        return self.inner.refresh_dirty(until_ms)  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


def test_back_pressure_when_memory_is_full(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    from storage.sinks import make_sink

    keys = storage.save_registry(small_registry)
    sink = _FlakySink(make_sink(storage))
    batches = _batches(small_registry, DeviceKind.SEWAGE, rounds=1, size=100)
    w = ReadingWriter(
        storage,
        keys,
        spill_dir=tmp_path / "s",
        commit_rows=100,
        max_memory_rows=300,
        max_spill_bytes=0,  # no disk either: memory is the only buffer
        sink=sink,
    ).start()
    try:
        for b in batches[:3]:
            w.submit(b, timeout=5)
        assert not w.offer(batches[3])
        with pytest.raises(WriterFullError, match=r"rows held in memory \(max_memory_rows=300\)"):
            w.submit(batches[3], timeout=0.05)
        sink.up = True
        w.submit(batches[3], timeout=30)  # room again once the database takes rows
        assert w.flush(timeout=30)
    finally:
        w.stop()
    assert reading_count(storage, DeviceKind.SEWAGE) == 400


def test_stop_while_down_spills_and_next_writer_replays(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    from storage.sinks import make_sink

    keys = storage.save_registry(small_registry)
    spill = tmp_path / "spill"
    batches = _batches(small_registry, DeviceKind.SEWAGE, rounds=2, size=250)
    total = sum(len(b) for b in batches)
    sink = _FlakySink(make_sink(storage))
    w = ReadingWriter(storage, keys, spill_dir=spill, commit_rows=500, sink=sink).start()
    for b in batches:
        w.submit(b)
    assert not w.flush(timeout=0.3)
    w.stop()
    st = w.stats()
    assert st.spilled_rows == total and st.written_rows == 0 and st.spill_files >= 1
    assert list(spill.glob("*.npz"))
    assert reading_count(storage, DeviceKind.SEWAGE) == 0
    with ReadingWriter(storage, keys, spill_dir=spill, commit_rows=500) as w2:
        assert w2.flush(timeout=60)
        st2 = w2.stats()
    assert st2.replayed_rows == total
    assert reading_count(storage, DeviceKind.SEWAGE) == total
    assert not list(spill.glob("*.npz"))


def test_two_writers_cannot_share_a_spill_dir(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = storage.save_registry(small_registry)
    with (
        ReadingWriter(storage, keys, spill_dir=tmp_path / "s"),
        pytest.raises(StorageError, match="in use by another writer"),
    ):
        ReadingWriter(storage, keys, spill_dir=tmp_path / "s")


def test_bad_batches_are_refused_at_submit(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    keys = storage.save_registry(small_registry)
    b = _batches(small_registry, DeviceKind.SEWAGE, rounds=1, size=10)[0]
    with ReadingWriter(storage, keys[:5], spill_dir=tmp_path / "s") as w:
        with pytest.raises(ValueError, match="key map covers 5 devices"):
            w.submit(b)
        unknown = ReadingBatch(b.kind, b.device * 0 - 1, b.ts_ms, dict(b.fields))
        with pytest.raises(ValueError, match="negative device indexes"):
            w.submit(unknown)
        partial = ReadingBatch(b.kind, b.device, b.ts_ms, {"level_m": b.fields["level_m"]})
        w2 = ReadingWriter(storage, keys, spill_dir=tmp_path / "t").start()
        try:
            with pytest.raises(
                ValueError, match=r"sewage batch lacks fields \['tilt_deg', 'rain_mmph'\]"
            ):
                w2.submit(partial)
        finally:
            w2.stop()
    with pytest.raises(StorageError, match="is not running"):
        w.submit(b)


def test_parameters_are_checked(storage: Storage, tmp_path: Path) -> None:
    keys = np.zeros(1, np.int32)
    with pytest.raises(ValueError, match=r"max_memory_rows \(10\) must be >= commit_rows \(100\)"):
        ReadingWriter(storage, keys, spill_dir=tmp_path, commit_rows=100, max_memory_rows=10)
    with pytest.raises(ValueError, match="commit_rows must be >= 1, got 0"):
        ReadingWriter(storage, keys, spill_dir=tmp_path, commit_rows=0)


class _AckLostSink:
    """Commits the first chunk, then reports the connection lost (the ack never came)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.lost = 0

    def write(self, chunk: list[Rows]) -> WriteResult:
        result = self.inner.write(chunk)  # type: ignore[attr-defined]
        if self.lost == 0:
            self.lost += 1
            raise SinkUnavailableError("connection lost after COMMIT was sent")
        return result

    def refresh_dirty(self, until_ms: int | None) -> int | None:
        return self.inner.refresh_dirty(until_ms)  # type: ignore[attr-defined,no-any-return]

    def maintain(self, now_ms: int) -> dict[str, object]:
        raise RuntimeError("maintenance bug")  # must never stop the writes

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


def test_commit_with_lost_ack_is_not_written_twice(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    from storage.sinks import make_sink

    keys = storage.save_registry(small_registry)
    sink = _AckLostSink(make_sink(storage))
    batches = _batches(small_registry, DeviceKind.HIGHFALL, rounds=2, size=200)
    total = sum(len(b) for b in batches)
    with ReadingWriter(
        storage, keys, spill_dir=tmp_path / "s", commit_rows=200, retry_initial_s=0.01, sink=sink
    ) as w:
        for b in batches:
            w.submit(b)
        assert w.flush(timeout=60)
        st = w.stats()
    assert sink.lost == 1
    assert reading_count(storage, DeviceKind.HIGHFALL) == total
    assert duplicate_keys(storage, DeviceKind.HIGHFALL) == 0
    # The lost-ack chunk was committed once; its retry finds it there (a duplicate).
    assert st.written_rows == total - 200 and st.duplicate_rows == 200
    assert st.errors == 0  # a failing maintenance pass is logged, not a writer error


class _RefusingSink(_FlakySink):
    def write(self, chunk: list[Rows]) -> WriteResult:
        if any(int(r.ts_ms.min()) < 0 for r in chunk):
            raise ValueError("the database refused these rows")
        return self.inner.write(chunk)  # type: ignore[attr-defined,no-any-return]


def test_refused_chunk_is_quarantined_not_lost(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    from storage.sinks import make_sink

    keys = storage.save_registry(small_registry)
    sink = _RefusingSink(make_sink(storage))
    good = _batches(small_registry, DeviceKind.SEWAGE, rounds=1, size=300)
    bad = ReadingBatch(good[0].kind, good[0].device, good[0].ts_ms * 0 - 5, dict(good[0].fields))
    with ReadingWriter(storage, keys, spill_dir=tmp_path / "s", commit_rows=300, sink=sink) as w:
        w.submit(bad)
        for b in good:
            w.submit(b)
        assert w.flush(timeout=60)
        st = w.stats()
    assert st.quarantined_rows == len(bad)
    assert st.written_rows == sum(len(b) for b in good)
    kept = list((tmp_path / "s").glob("*.bad"))
    assert len(kept) == 1
    assert "refused" in st.last_error


def test_corrupt_spill_file_is_set_aside_and_the_rest_replayed(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    from storage.spill import SpillDir

    keys = storage.save_registry(small_registry)
    spill_path = tmp_path / "spill"
    spill = SpillDir(spill_path)
    good = Rows.from_batch(_batches(small_registry, DeviceKind.SEWAGE, 1, 10_000)[0], keys)
    broken = spill.write([good])
    spill.write([good])
    spill.close()
    broken.write_bytes(b"garbage")
    with ReadingWriter(storage, keys, spill_dir=spill_path) as w:
        assert w.flush(timeout=60)
        st = w.stats()
    assert reading_count(storage, DeviceKind.SEWAGE) == len(good)
    assert st.replayed_rows == len(good)
    assert [p.name for p in spill_path.iterdir() if not p.name.startswith(".")] == [
        broken.with_suffix(".bad").name
    ]


def test_partial_chunks_wait_for_linger_or_flush(
    storage: Storage, small_registry: Registry, tmp_path: Path
) -> None:
    from gridwatch.clock import ManualClock

    keys = storage.save_registry(small_registry)
    clock = ManualClock(T0)
    b = _batches(small_registry, DeviceKind.SEWAGE, rounds=1, size=100)
    with ReadingWriter(
        storage,
        keys,
        spill_dir=tmp_path / "s",
        commit_rows=1_000,
        linger_s=5.0,
        clock=clock,
        maintenance_interval_s=None,
    ) as w:
        w.submit(b[0])
        time.sleep(0.4)  # the worker runs, but the clock has not moved: it keeps waiting
        assert w.stats().written_rows == 0
        clock.advance(5.0)
        w.wake()
        deadline = time.monotonic() + 30
        while w.stats().written_rows < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.stats().written_rows == 100
        w.submit(b[1])
        assert w.flush(timeout=30)  # a flush does not wait for the linger
        assert w.stats().written_rows == 200
