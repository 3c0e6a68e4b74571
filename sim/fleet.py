"""Build a district's device registry: streets, communities, grids, buildings, devices.

The default mirrors the district in ``shared/seed``: 12 streets/towns, about 120
communities, about 1,200 grids and 480,000 devices. Devices are placed per building
(elevators and facade cameras) or per grid (manholes), vectorised so the full fleet
builds in well under a second.

>>> reg = build_fleet(FleetSpec(n_devices=1000, seed=1))
>>> len(reg), reg.grid_ids.size
(1000, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """Shape of a simulated district. Shares in ``mix`` are elevator, sewage, highfall.

    ``devices_per_grid`` sets how many grids there are (480,000 / 400 = 1,200 grids);
    ``grids_per_community`` and ``communities_per_street`` then build the tree above.
    Reporting intervals are the longest gap between two readings of an idle device:
    elevators report every second while moving and on every state change.
    """

    n_devices: int = 480_000
    mix: tuple[float, float, float] = (0.125, 0.625, 0.25)
    n_streets: int = 12
    devices_per_grid: int = 400
    grids_per_community: int = 10
    elevators_per_building: int = 2
    cameras_per_building: int = 4
    elevator_interval_s: float = 10.0
    sewage_interval_s: float = 10.0
    highfall_interval_s: float = 30.0
    seed: int = 20261126

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {self.n_devices}")
        if len(self.mix) != 3 or any(m < 0 for m in self.mix) or sum(self.mix) <= 0:
            raise ValueError(f"mix must be three non-negative shares, got {self.mix}")

    def counts(self) -> dict[DeviceKind, int]:
        """Devices per kind; rounding puts the remainder on sewage."""
        total = sum(self.mix)
        n_el = int(self.n_devices * self.mix[0] / total)
        n_hf = int(self.n_devices * self.mix[2] / total)
        return {
            DeviceKind.ELEVATOR: n_el,
            DeviceKind.SEWAGE: self.n_devices - n_el - n_hf,
            DeviceKind.HIGHFALL: n_hf,
        }


def _ids(prefix: str, n: int, width: int) -> npt.NDArray[np.str_]:
    if n == 0:
        return np.zeros(0, dtype=np.str_)
    nums = np.char.zfill(np.arange(1, n + 1).astype(np.str_), width)
    return np.char.add(prefix, nums)


def _width(n: int) -> int:
    return max(2, len(str(n)))


def build_fleet(spec: FleetSpec | None = None) -> Registry:
    """A deterministic registry for ``spec`` (same seed, same fleet)."""
    spec = spec or FleetSpec()
    rng = np.random.default_rng(spec.seed)
    counts = spec.counts()

    n_grids = max(1, round(spec.n_devices / spec.devices_per_grid))
    n_comms = max(1, -(-n_grids // spec.grids_per_community))
    n_streets = max(1, min(spec.n_streets, n_comms))
    # Communities round-robin over streets, grids round-robin over communities.
    comm_street = np.arange(n_comms) % n_streets
    grid_comm = np.arange(n_grids) % n_comms
    comm_local = np.zeros(n_comms, dtype=np.int64)
    for s in range(n_streets):
        sel = np.flatnonzero(comm_street == s)
        comm_local[sel] = np.arange(sel.size)
    grid_local = np.zeros(n_grids, dtype=np.int64)
    for c in range(n_comms):
        sel = np.flatnonzero(grid_comm == c)
        grid_local[sel] = np.arange(sel.size)
    street_ids = _ids("s", n_streets, 2)
    comm_ids = np.char.add(
        street_ids[comm_street],
        np.char.add("c", np.char.zfill((comm_local + 1).astype(np.str_), _width(n_comms))),
    )
    grid_ids = np.char.add(
        comm_ids[grid_comm],
        np.char.add("g", np.char.zfill((grid_local + 1).astype(np.str_), 2)),
    )

    # Buildings carry elevators and facade cameras; each building sits in one grid.
    n_el, n_sw, n_hf = (counts[k] for k in DeviceKind)
    n_buildings = max(
        1,
        -(-n_el // spec.elevators_per_building) if n_el else -(-n_hf // spec.cameras_per_building),
    )
    bld_grid = rng.permutation(np.arange(n_buildings) % n_grids)
    bld_floors = rng.integers(6, 35, n_buildings)
    bld_floor_h = np.round(rng.uniform(2.8, 3.3, n_buildings), 2)
    bld_local = np.zeros(n_buildings, dtype=np.int64)
    order = np.argsort(bld_grid, kind="stable")
    first = np.searchsorted(bld_grid[order], bld_grid[order])
    bld_local[order] = np.arange(n_buildings) - first
    bld_ids = np.char.add(
        grid_ids[bld_grid], np.char.add("b", np.char.zfill((bld_local + 1).astype(np.str_), 3))
    )

    el_bld = np.arange(n_el) % n_buildings
    hf_bld = np.arange(n_hf) % n_buildings
    sw_grid = rng.permutation(np.arange(n_sw) % n_grids)
    el_floors = bld_floors[el_bld]
    rated = np.where(el_floors <= 11, 1.0, np.where(el_floors <= 20, 1.75, 2.5))
    depth = np.round(rng.uniform(1.5, 6.0, n_sw), 2)

    n = spec.n_devices
    nan = np.full(n, np.nan, dtype=np.float32)
    device_grid = np.concatenate([bld_grid[el_bld], sw_grid, bld_grid[hf_bld]])
    building = np.concatenate([bld_ids[el_bld], np.full(n_sw, ""), bld_ids[hf_bld]])
    floors = np.concatenate([el_floors, np.full(n_sw, -1), bld_floors[hf_bld]])
    floor_h = np.concatenate([bld_floor_h[el_bld], nan[:n_sw], bld_floor_h[hf_bld]])
    rated_speed = np.concatenate([rated, nan[: n_sw + n_hf]])
    depth_all = np.concatenate([nan[:n_el], depth, nan[:n_hf]])
    # Overflow when the water reaches 5 cm below the cover (the ground surface).
    overflow = np.concatenate([nan[:n_el], depth - 0.05, nan[:n_hf]])
    interval = np.concatenate(
        [
            np.full(n_el, spec.elevator_interval_s),
            np.full(n_sw, spec.sewage_interval_s),
            np.full(n_hf, spec.highfall_interval_s),
        ]
    )
    g_comm = grid_comm[device_grid]
    return Registry(
        {
            "device_id": np.concatenate(
                [_ids("el", n_el, 6), _ids("sw", n_sw, 6), _ids("hf", n_hf, 6)]
            ),
            "kind": np.repeat([k.value for k in DeviceKind], [n_el, n_sw, n_hf]),
            "street": street_ids[comm_street[g_comm]],
            "community": comm_ids[g_comm],
            "grid": grid_ids[device_grid],
            "building": building.astype(np.str_),
            "floors": floors,
            "floor_height_m": floor_h,
            "rated_speed_mps": rated_speed,
            "depth_m": depth_all,
            "overflow_level_m": overflow,
            "interval_s": interval,
        }
    )
