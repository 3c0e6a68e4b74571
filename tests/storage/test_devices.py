from __future__ import annotations

import numpy as np
import pytest

from gridwatch.errors import StorageError
from gridwatch.registry import Registry
from storage.engine import Storage


def test_registry_round_trips(storage: Storage, small_registry: Registry) -> None:
    keys = storage.save_registry(small_registry)
    assert keys.shape == (len(small_registry),)
    assert keys.dtype == np.int32
    assert np.unique(keys).size == len(small_registry)
    loaded = storage.load_registry()
    assert len(loaded) == len(small_registry)
    # Same devices with the same attributes, whatever the order.
    order = loaded.index_of(small_registry.device_ids)
    assert (order >= 0).all()
    a, b = small_registry.columns(), loaded.subset(order).columns()
    for name, col in a.items():
        if col.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(col), np.isnan(b[name]), err_msg=name)
            np.testing.assert_allclose(col[~np.isnan(col)], b[name][~np.isnan(col)], err_msg=name)
        else:
            np.testing.assert_array_equal(col, b[name], err_msg=name)


def test_keys_are_stable_and_retired_devices_keep_theirs(
    storage: Storage, small_registry: Registry
) -> None:
    keys = storage.save_registry(small_registry)
    # Reorder and drop the first 10 devices: survivors keep their keys.
    rows = np.arange(len(small_registry))[::-1][:-10]
    smaller = small_registry.subset(rows)
    keys2 = storage.save_registry(smaller)
    np.testing.assert_array_equal(keys2, keys[rows])
    assert len(storage.load_registry()) == len(small_registry) - 10
    assert len(storage.load_registry(include_retired=True)) == len(small_registry)
    # Bringing them back restores the old keys, never new ones.
    keys3 = storage.save_registry(small_registry)
    np.testing.assert_array_equal(keys3, keys)
    np.testing.assert_array_equal(storage.device_keys(small_registry), keys)


def test_device_keys_refuses_unsaved_devices(storage: Storage, small_registry: Registry) -> None:
    storage.save_registry(small_registry.subset(np.arange(5)))
    with pytest.raises(StorageError, match=r"1995 devices of the registry are not in the database"):
        storage.device_keys(small_registry)


def test_checkpoints_round_trip(storage: Storage) -> None:
    assert storage.load_checkpoint("sewage") is None
    state = {
        "mean_": np.linspace(0, 1, 7, dtype=np.float64),
        "n_seen_": np.arange(7, dtype=np.int32),
        "last_ts_ms_": np.full(7, 1_780_000_000_000, dtype=np.int64),
    }
    storage.save_checkpoint("sewage", state)
    got = storage.load_checkpoint("sewage")
    assert got is not None and got.keys() == state.keys()
    for k, v in state.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
    storage.save_checkpoint("sewage", {"mean_": np.zeros(3, np.float32)})
    got = storage.load_checkpoint("sewage")
    assert got is not None and list(got) == ["mean_"] and got["mean_"].shape == (3,)


def test_checkpoint_refuses_objects(storage: Storage) -> None:
    with pytest.raises(ValueError, match=r"array 'x' has dtype object"):
        storage.save_checkpoint("bad", {"x": np.array([{}, 1], dtype=object)})
    with pytest.raises(ValueError, match=r"array name 'a b' is not an identifier"):
        storage.save_checkpoint("bad", {"a b": np.zeros(1)})
