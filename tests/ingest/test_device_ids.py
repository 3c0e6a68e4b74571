from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gridwatch.registry import Registry
from ingest.ids import DeviceIds
from sim.fleet import FleetSpec, build_fleet

_ID_CHARS = "sw0123456789elhfz-._"


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(st.integers(0, 1999), max_size=20),
    noise=st.lists(st.text(_ID_CHARS, max_size=12), max_size=10),
    as_bytes=st.booleans(),
)
def test_same_answer_as_the_registry(
    small_registry: Registry, picks: list[int], noise: list[str], as_bytes: bool
) -> None:
    ids = [str(small_registry.device_ids[i]) for i in picks] + noise
    arr: Any = np.array(ids, dtype="S" if as_bytes else "U") if ids else np.array([], dtype="U1")
    fast = DeviceIds(small_registry)
    assert fast.fast
    assert fast(arr).tolist() == small_registry.index_of(arr).tolist()


def test_long_registry_ids_use_the_registry() -> None:
    reg = build_fleet(FleetSpec(n_devices=50, seed=1))
    cols = reg.columns()
    cols["device_id"] = np.char.add("device-with-a-long-id-", cols["device_id"])
    long_reg = Registry(cols)
    ids = DeviceIds(long_reg)
    assert not ids.fast
    wire = [str(long_reg.device_ids[3]), "nope", "é"]
    assert ids(wire).tolist() == [3, -1, -1]
