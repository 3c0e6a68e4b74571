from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gridwatch.domain import DeviceKind
from gridwatch.errors import StorageError
from gridwatch.registry import Registry
from storage.rows import Rows
from storage.spill import SpillDir
from storage.testing import synthetic_batch


def _rows(reg: Registry, kind: DeviceKind, seed: int) -> Rows:
    b = synthetic_batch(reg, kind, start_ms=1_780_000_000_000, seed=seed)
    return Rows.from_batch(b, np.arange(len(reg), dtype=np.int32) + 1)


def test_round_trip_in_order_and_survives_reopen(tmp_path: Path, small_registry: Registry) -> None:
    runs = [_rows(small_registry, k, i) for i, k in enumerate(DeviceKind)]
    spill = SpillDir(tmp_path)
    first = spill.write(runs[:2])
    second = spill.write(runs[2:])
    assert spill.files() == [first, second]
    spill.close()
    reopened = SpillDir(tmp_path)  # a restart: numbering continues after the last file
    third = reopened.write(runs[:1])
    assert reopened.files() == [first, second, third]
    got = reopened.read(first) + reopened.read(second)
    for want, have in zip(runs, got, strict=True):
        assert have.kind == want.kind
        np.testing.assert_array_equal(have.device, want.device)
        np.testing.assert_array_equal(have.ts_ms, want.ts_ms)
        for a, b in zip(want.fields, have.fields, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    reopened.remove(first)
    assert reopened.files() == [second, third]
    reopened.close()


def test_unfinished_temp_files_are_cleared_and_bad_files_quarantined(
    tmp_path: Path, small_registry: Registry
) -> None:
    (tmp_path / ".000000000009.tmp").write_bytes(b"half a file")
    spill = SpillDir(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    path = spill.write([_rows(small_registry, DeviceKind.SEWAGE, 1)])
    path.write_bytes(b"not an npz")
    with pytest.raises(StorageError, match="is unreadable"):
        spill.read(path)
    bad = spill.quarantine(path, "test")
    assert bad.suffix == ".bad" and bad.exists()
    assert spill.files() == []
    spill.close()
