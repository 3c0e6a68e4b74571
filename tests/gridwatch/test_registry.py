from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gridwatch.domain import DeviceKind
from gridwatch.errors import RegistryError
from gridwatch.registry import COLUMNS, Registry
from sim.fleet import FleetSpec, build_fleet

HEADER = ",".join(COLUMNS)


def test_index_of_maps_every_id_and_flags_unknown(small_registry: Registry) -> None:
    reg = small_registry
    perm = np.random.default_rng(0).permutation(len(reg))
    assert np.array_equal(reg.index_of(reg.device_ids[perm]), perm)
    assert np.array_equal(reg.index_of(reg.device_ids[perm].astype("S")), perm)
    got = reg.index_of(np.array(["nope", "el000001", "el0000011", "", "é"]))
    assert got.tolist() == [-1, reg.index("el000001"), -1, -1, -1]


def test_tree_is_consistent(small_registry: Registry) -> None:
    reg = small_registry
    for i in (0, 300, 1999):
        place = reg.place(i)
        assert reg.street_of_grid(place.grid) == place.street
        assert reg.community_of_grid(place.grid) == place.community
        assert place.grid in reg.grids_of_street(place.street)
    sewage = reg.devices_of_kind(DeviceKind.SEWAGE)
    assert reg.place(int(sewage[0])).building is None
    assert np.all(reg.overflow_level_m[sewage] < reg.depth_m[sewage])


def test_csv_round_trip(tmp_path: Path, small_registry: Registry) -> None:
    path = tmp_path / "reg.csv"
    small_registry.to_csv(path)
    back = Registry.load(path)
    for name, col in small_registry.columns().items():
        other = back.columns()[name]
        if col.dtype.kind == "f":
            assert np.array_equal(col, other, equal_nan=True), name
        else:
            assert np.array_equal(col, other), name


def test_jsonl_loads(tmp_path: Path) -> None:
    path = tmp_path / "reg.jsonl"
    path.write_text(
        '{"device_id": "sw1", "kind": "sewage", "street": "s1", "community": "c1", '
        '"grid": "g1", "building": null, "floors": null, "floor_height_m": null, '
        '"rated_speed_mps": null, "depth_m": 3.0, "overflow_level_m": 2.9, "interval_s": 10}\n'
    )
    reg = Registry.load(path)
    assert reg.device_ids.tolist() == ["sw1"]
    assert reg.overflow_level_m[0] == pytest.approx(2.9)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("e1,lift,s1,c1,g1,b1,10,3,1,,,10", "kind 'lift' is not one of"),
        ("e/1,elevator,s1,c1,g1,b1,10,3,1,,,10", "device_id id 'e/1' is not valid"),
        ("e1,elevator,s1,c1,g1,b1,10,3,1,,,0", "interval_s must be > 0"),
        ("e1,elevator,s1,c1,g1,b1,10,x,1,,,10", "non-numeric"),
        ("e1,elevator,s1,c1,g1,b1,10,3,1,,10", "cells, header has"),
    ],
)
def test_bad_rows_are_refused_with_a_reason(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "reg.csv"
    path.write_text(f"{HEADER}\n{row}\n")
    with pytest.raises(RegistryError, match=message):
        Registry.load(path)


def test_duplicate_ids_and_broken_tree_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "reg.csv"
    path.write_text(
        f"{HEADER}\ne1,elevator,s1,c1,g1,b1,10,3,1,,,10\ne1,elevator,s1,c1,g1,b1,10,3,1,,,10\n"
    )
    with pytest.raises(RegistryError, match="appears more than once"):
        Registry.load(path)
    path.write_text(
        f"{HEADER}\ne1,elevator,s1,c1,g1,b1,10,3,1,,,10\ne2,elevator,s1,c2,g1,b1,10,3,1,,,10\n"
    )
    with pytest.raises(RegistryError, match="grid 'g1' appears under two parents"):
        Registry.load(path)


def test_full_district_shape() -> None:
    reg = build_fleet(FleetSpec(n_devices=48_000))
    counts = {k: int(np.count_nonzero(reg.kind == k.code)) for k in DeviceKind}
    assert counts == {
        DeviceKind.ELEVATOR: 6_000,
        DeviceKind.SEWAGE: 30_000,
        DeviceKind.HIGHFALL: 12_000,
    }
    assert reg.grid_ids.size == 120
    assert reg.street_ids.size == 12
    # Same seed, same fleet.
    again = build_fleet(FleetSpec(n_devices=48_000))
    assert np.array_equal(again.device_grid, reg.device_grid)
    assert np.array_equal(again.depth_m, reg.depth_m, equal_nan=True)
