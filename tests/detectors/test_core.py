"""Rounds (several readings of one device in a batch) and per-kind indexing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors._core import KindIndex, device_rounds
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry


def test_no_repeats_is_one_round() -> None:
    assert device_rounds(np.array([4, 2, 9], np.int32), 10) is None
    assert device_rounds(np.array([3], np.int32), 10) is None


@given(st.lists(st.integers(0, 20), min_size=0, max_size=200), st.sampled_from([21, 100_000]))
def test_rounds_hold_each_device_once_in_order(devs: list[int], n_local: int) -> None:
    loc = np.array(devs, dtype=np.int32)
    rounds = device_rounds(loc, n_local)
    if rounds is None:
        assert len(set(devs)) == len(devs)
        return
    seen: dict[int, int] = {}
    all_rows = np.concatenate(rounds)
    assert sorted(all_rows.tolist()) == list(range(len(devs)))
    for k, rows in enumerate(rounds):
        assert len(set(loc[rows].tolist())) == rows.size  # each device once per round
        for r in rows.tolist():
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
