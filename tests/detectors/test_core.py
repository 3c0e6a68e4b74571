"""Rounds (several readings of one device in a batch) and per-kind indexing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors._core import KindIndex, device_rounds
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from tests.detectors.conftest import tiny_columns


def test_no_repeats_is_one_round_in_device_order() -> None:
    assert [r.tolist() for r in device_rounds(np.array([4, 2, 9], np.int32), 10)] == [[1, 0, 2]]
    # small batch of a large kind (sorted, not counted) and already ascending rows
    assert [r.tolist() for r in device_rounds(np.array([7, 3], np.int32), 10_000)] == [[1, 0]]
    assert device_rounds(np.array([2, 4, 9], np.int32), 10) is None
    assert device_rounds(np.array([3], np.int32), 10) is None
    assert device_rounds(np.zeros(0, np.int32), 10) == []


@given(
    st.lists(st.integers(0, 70_000), min_size=0, max_size=200),
    st.sampled_from([70_001, 200_000]),
)
def test_rounds_of_wide_indexes_use_every_radix_digit(devs: list[int], n_local: int) -> None:
    loc = np.array(devs, dtype=np.intp)
    rounds = device_rounds(loc, n_local)
    if rounds is None:
        assert all(a < b for a, b in itertools.pairwise(devs))
        return
    all_rows = np.concatenate(rounds) if rounds else np.zeros(0, np.intp)
    assert sorted(all_rows.tolist()) == list(range(len(devs)))
    for rows in rounds:
        assert (np.diff(loc[rows]) > 0).all()


@given(st.lists(st.integers(0, 20), min_size=0, max_size=200), st.sampled_from([21, 100_000]))
def test_rounds_hold_each_device_once_in_order(devs: list[int], n_local: int) -> None:
    loc = np.array(devs, dtype=np.int32)
    rounds = device_rounds(loc, n_local)
    if rounds is None:
        assert all(a < b for a, b in itertools.pairwise(devs))
        return
    seen: dict[int, int] = {}
    all_rows = np.concatenate(rounds) if rounds else np.zeros(0, np.intp)
    assert sorted(all_rows.tolist()) == list(range(len(devs)))
    for k, rows in enumerate(rounds):
        assert (np.diff(loc[rows]) > 0).all()  # each device once per round, device order
        for r in sorted(rows.tolist()):
            d = devs[r]
            assert seen.get(d, -1) < r  # a device's rounds follow its row order
            seen[d] = r
        if k:
            assert rows.size <= rounds[k - 1].size


def test_kind_index_maps_both_ways(tiny: Registry) -> None:
    ki = KindIndex(tiny, DeviceKind.SEWAGE)
    assert ki.size == 4
    assert tiny.device_ids[ki.devices].tolist() == ["sw1", "sw2", "sw3", "sw4"]
    assert ki.local(tiny.index_of(np.array(["sw3", "sw1"]))).tolist() == [2, 0]
    with pytest.raises(ValueError, match="1 readings of devices that are not sewage"):
        ki.local(tiny.index_of(np.array(["sw3", "el1"])))


def test_kind_index_of_a_contiguous_kind_rejects_devices_on_both_sides(tiny: Registry) -> None:
    # the tiny registry lists each kind in one run: local indexes come by subtraction
    ki = KindIndex(tiny, DeviceKind.SEWAGE)
    loc = ki.local(tiny.index_of(np.array(["sw4", "sw2", "sw1"])))
    assert loc.dtype == np.intp
    assert loc.tolist() == [3, 1, 0]
    for other in ("el3", "hf1"):  # just below and just above the run
        with pytest.raises(ValueError, match="1 readings of devices that are not sewage"):
            ki.local(tiny.index_of(np.array(["sw1", other])))


def test_kind_index_of_an_interleaved_kind_maps_the_same(tiny: Registry) -> None:
    cols = tiny_columns()
    order = [0, 3, 7, 1, 4, 8, 2, 5, 6]  # elevator, sewage, camera, elevator, ...
    mixed = Registry({k: [v[i] for i in order] for k, v in cols.items()})
    ki = KindIndex(mixed, DeviceKind.SEWAGE)
    assert mixed.device_ids[ki.devices].tolist() == ["sw1", "sw2", "sw3", "sw4"]
    assert ki.local(mixed.index_of(np.array(["sw4", "sw1", "sw3"]))).tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="1 readings of devices that are not sewage"):
        ki.local(mixed.index_of(np.array(["sw2", "el2"])))
