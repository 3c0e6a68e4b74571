"""The device registry: every device with its place in the district and its physical constants.

Held as numpy columns, not as 480,000 Python objects: detectors index their state by the
registry's dense device index, ingest maps wire ids to that index with one vectorised
``searchsorted`` per batch, and the garbage collector never sees the fleet.

File format (CSV with a header, or JSON lines with the same keys; documented in
``docs/registry.md``)::

    device_id,kind,street,community,grid,building,floors,floor_height_m,rated_speed_mps,depth_m,overflow_level_m,interval_s
    el000001,elevator,s01,s01c01,s01c01g01,s01c01g01b001,18,3.0,1.75,,,10
    sw000001,sewage,s01,s01c01,s01c01g01,,,,,4.2,4.0,10

Empty cells are "not applicable" and load as NaN / -1.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from gridwatch.domain import DeviceKind, valid_id
from gridwatch.errors import RegistryError

COLUMNS: Final = (
    "device_id",
    "kind",
    "street",
    "community",
    "grid",
    "building",
    "floors",
    "floor_height_m",
    "rated_speed_mps",
    "depth_m",
    "overflow_level_m",
    "interval_s",
)
"""Registry file columns, in order. ``building`` may be empty for sewage manholes."""

_FLOAT_COLUMNS: Final = (
    "floor_height_m",
    "rated_speed_mps",
    "depth_m",
    "overflow_level_m",
    "interval_s",
)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a device is, resolved to ids; what a dispatcher reads on an alert."""

    street: str
    community: str
    grid: str
    building: str | None


def _unique_index(
    values: npt.NDArray[np.str_],
) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.int32]]:
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.astype(np.int32)


class Registry:
    """Columns of the fleet, indexed by a dense device index ``0..n-1``.

    Grids, communities, streets and buildings get dense indexes of their own
    (``grid_ids[device_grid[i]]`` is device ``i``'s grid id). Per-kind constants are NaN
    where they do not apply (``rated_speed_mps`` of a manhole).
    """

    def __init__(self, columns: Mapping[str, Sequence[Any] | npt.NDArray[Any]]) -> None:
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise RegistryError(f"registry lacks columns {missing}; expected {list(COLUMNS)}")
        n = len(columns["device_id"])
        for name in COLUMNS:
            if len(columns[name]) != n:
                raise RegistryError(
                    f"registry column {name!r} has {len(columns[name])} rows, device_id has {n}"
                )
        self.device_ids: npt.NDArray[np.str_] = np.asarray(columns["device_id"], dtype=np.str_)
        self._check_ids("device_id", self.device_ids)
        kinds = np.asarray(columns["kind"], dtype=np.str_)
        self.kind: npt.NDArray[np.int8] = np.full(n, -1, dtype=np.int8)
        for k in DeviceKind:
            self.kind[kinds == k.value] = k.code
        if (bad := np.flatnonzero(self.kind < 0)).size:
            i = int(bad[0])
            raise RegistryError(
                f"device {str(self.device_ids[i])!r}: kind {str(kinds[i])!r} is not one of "
                f"{[k.value for k in DeviceKind]}"
            )

        streets = np.asarray(columns["street"], dtype=np.str_)
        communities = np.asarray(columns["community"], dtype=np.str_)
        grids = np.asarray(columns["grid"], dtype=np.str_)
        buildings = np.asarray(columns["building"], dtype=np.str_)
        for name, arr in (("street", streets), ("community", communities), ("grid", grids)):
            self._check_ids(name, arr)

        self.grid_ids, self.device_grid = _unique_index(grids)
        self.community_ids, device_community = _unique_index(communities)
        self.street_ids, device_street = _unique_index(streets)
        # The tree must be a tree: a grid belongs to exactly one community and street.
        self.grid_community = self._parent_of(
            "grid", self.grid_ids, self.device_grid, device_community, self.community_ids
        )
        self.community_street = self._parent_of(
            "community", self.community_ids, device_community, device_street, self.street_ids
        )
        has_building = buildings != ""
        self.building_ids, inverse = _unique_index(buildings[has_building])
        self.device_building: npt.NDArray[np.int32] = np.full(n, -1, dtype=np.int32)
        self.device_building[has_building] = inverse
        if self.building_ids.size:
            self._check_ids("building", self.building_ids)
            self.building_grid = self._parent_of(
                "building",
                self.building_ids,
                inverse,
                self.device_grid[has_building],
                self.grid_ids,
            )
        else:
            self.building_grid = np.zeros(0, dtype=np.int32)

        self.floors: npt.NDArray[np.int16] = _int_column(columns["floors"], n, "floors")
        for name in _FLOAT_COLUMNS:
            setattr(self, name, _float_column(columns[name], n, name))
        self.floor_height_m: npt.NDArray[np.float32]
        self.rated_speed_mps: npt.NDArray[np.float32]
        self.depth_m: npt.NDArray[np.float32]
        self.overflow_level_m: npt.NDArray[np.float32]
        self.interval_s: npt.NDArray[np.float32]
        if np.any(~(self.interval_s > 0)):
            i = int(np.flatnonzero(~(self.interval_s > 0))[0])
            raise RegistryError(
                f"device {str(self.device_ids[i])!r}: interval_s must be > 0, "
                f"got {float(self.interval_s[i])}"
            )

        order = np.argsort(self.device_ids, kind="stable")
        sorted_ids = self.device_ids[order]
        if n > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
            dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0]
            raise RegistryError(f"device id {str(dup)!r} appears more than once in the registry")
        self._order = order.astype(np.int32)
        self._sorted_ids_b = sorted_ids.astype(np.bytes_)
        self._grid_lookup = {g: i for i, g in enumerate(self.grid_ids.tolist())}

    # -- construction helpers -------------------------------------------------

    @staticmethod
    def _check_ids(name: str, values: npt.NDArray[np.str_]) -> None:
        for v in np.unique(values).tolist():
            if not valid_id(v):
                raise RegistryError(
                    f"{name} id {v!r} is not valid: use 1-32 of A-Z a-z 0-9 _ . - "
                    "(ids travel inside MQTT topics)"
                )

    @staticmethod
    def _parent_of(
        name: str,
        child_ids: npt.NDArray[np.str_],
        child_of_row: npt.NDArray[np.int32],
        parent_of_row: npt.NDArray[np.int32],
        parent_ids: npt.NDArray[np.str_],
    ) -> npt.NDArray[np.int32]:
        parent = np.full(child_ids.size, -1, dtype=np.int32)
        parent[child_of_row] = parent_of_row
        clash = parent[child_of_row] != parent_of_row
        if np.any(clash):
            i = int(np.flatnonzero(clash)[0])
            raise RegistryError(
                f"{name} {str(child_ids[child_of_row[i]])!r} appears under two parents: "
                f"{str(parent_ids[parent[child_of_row[i]]])!r} and "
                f"{str(parent_ids[parent_of_row[i]])!r}"
            )
        return parent

    # -- sizes and lookups ----------------------------------------------------

    def __len__(self) -> int:
        return int(self.device_ids.size)

    @property
    def n_devices(self) -> int:
        return int(self.device_ids.size)

    def __repr__(self) -> str:
        counts = {k.value: int(np.count_nonzero(self.kind == k.code)) for k in DeviceKind}
        return f"Registry(devices={len(self)}, grids={self.grid_ids.size}, kinds={counts})"

    def index_of(self, ids: npt.ArrayLike) -> npt.NDArray[np.int32]:
        """Dense indexes of wire device ids (str or bytes); -1 where unknown. Vectorised."""
        arr = np.asarray(ids)
        if arr.dtype.kind != "S":
            arr = np.asarray(arr, dtype=np.str_)
            try:
                arr = arr.astype(np.bytes_)
            except UnicodeEncodeError:  # non-ASCII ids can never be registered ones
                arr = np.char.encode(arr, "ascii", "replace")
        if arr.size == 0 or len(self) == 0:
            return np.full(arr.shape, -1, dtype=np.int32)
        pos = np.searchsorted(self._sorted_ids_b, arr)
        pos = np.minimum(pos, len(self) - 1)
        found = self._sorted_ids_b[pos] == arr
        return np.where(found, self._order[pos], -1).astype(np.int32)

    def index(self, device_id: str) -> int:
        """Dense index of one device; raises ``RegistryError`` for an unknown id."""
        i = int(self.index_of(np.array([device_id]))[0])
        if i < 0:
            raise RegistryError(f"unknown device {device_id!r}")
        return i

    def grid_index(self, grid_id: str) -> int:
        try:
            return self._grid_lookup[grid_id]
        except KeyError:
            raise RegistryError(f"unknown grid {grid_id!r}") from None

    def kind_of(self, index: int) -> DeviceKind:
        return DeviceKind.from_code(int(self.kind[index]))

    def grid_of(self, index: int) -> str:
        return str(self.grid_ids[self.device_grid[index]])

    def place(self, index: int) -> Place:
        g = int(self.device_grid[index])
        c = int(self.grid_community[g])
        b = int(self.device_building[index])
        return Place(
            street=str(self.street_ids[self.community_street[c]]),
            community=str(self.community_ids[c]),
            grid=str(self.grid_ids[g]),
            building=str(self.building_ids[b]) if b >= 0 else None,
        )

    def devices_of_kind(self, kind: DeviceKind) -> npt.NDArray[np.int32]:
        return np.flatnonzero(self.kind == kind.code).astype(np.int32)

    def devices_in_grids(self, grid_ids: Iterable[str]) -> npt.NDArray[np.int32]:
        gi = np.array([self.grid_index(g) for g in grid_ids], dtype=np.int32)
        return np.flatnonzero(np.isin(self.device_grid, gi)).astype(np.int32)

    def grids_of_street(self, street_id: str) -> list[str]:
        s = np.flatnonzero(self.street_ids == street_id)
        if s.size == 0:
            raise RegistryError(f"unknown street {street_id!r}")
        comms = np.flatnonzero(self.community_street == s[0])
        return self.grid_ids[np.isin(self.grid_community, comms)].tolist()

    def grids_of_community(self, community_id: str) -> list[str]:
        c = np.flatnonzero(self.community_ids == community_id)
        if c.size == 0:
            raise RegistryError(f"unknown community {community_id!r}")
        return self.grid_ids[self.grid_community == c[0]].tolist()

    def street_of_grid(self, grid_id: str) -> str:
        c = self.grid_community[self.grid_index(grid_id)]
        return str(self.street_ids[self.community_street[c]])

    def community_of_grid(self, grid_id: str) -> str:
        return str(self.community_ids[self.grid_community[self.grid_index(grid_id)]])

    # -- columns out / in -----------------------------------------------------

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """The registry as file columns (the inverse of ``Registry(columns)``)."""
        g = self.device_grid
        c = self.grid_community[g]
        b = self.device_building
        building = np.where(
            b >= 0, self.building_ids[np.maximum(b, 0)] if self.building_ids.size else "", ""
        )
        kinds = np.array([k.value for k in DeviceKind])[self.kind]
        return {
            "device_id": self.device_ids,
            "kind": kinds,
            "street": self.street_ids[self.community_street[c]],
            "community": self.community_ids[c],
            "grid": self.grid_ids[g],
            "building": building.astype(np.str_),
            "floors": self.floors,
            **{name: getattr(self, name) for name in _FLOAT_COLUMNS},
        }

    def subset(self, rows: npt.NDArray[np.integer[Any]]) -> Registry:
        """A registry of the given device rows (their dense indexes are renumbered)."""
        return Registry({k: v[rows] for k, v in self.columns().items()})

    # -- files ----------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Registry:
        """Load a ``.csv`` or ``.jsonl`` registry file (see module docstring)."""
        path = Path(path)
        if not path.exists():
            raise RegistryError(f"registry file {path} does not exist")
        if path.suffix in (".jsonl", ".ndjson"):
            return cls.from_jsonl(path.read_bytes(), source=str(path))
        return cls.from_csv(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def from_csv(cls, text: str, source: str = "<csv>") -> Registry:
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader)
        except StopIteration:
            raise RegistryError(f"{source}: empty registry file") from None
        header = [h.strip() for h in header]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise RegistryError(f"{source}: header lacks {missing}; expected {list(COLUMNS)}")
        rows = [r for r in reader if r]
        for lineno, r in enumerate(rows, start=2):
            if len(r) != len(header):
                raise RegistryError(f"{source}:{lineno}: {len(r)} cells, header has {len(header)}")
        cols = list(zip(*rows, strict=True)) if rows else [()] * len(header)
        data = {h: list(c) for h, c in zip(header, cols, strict=True)}
        try:
            return cls({c: data[c] for c in COLUMNS})
        except RegistryError as exc:
            raise RegistryError(f"{source}: {exc}") from exc

    @classmethod
    def from_jsonl(cls, data: bytes, source: str = "<jsonl>") -> Registry:
        cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        for lineno, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise RegistryError(f"{source}:{lineno}: not JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise RegistryError(f"{source}:{lineno}: expected an object")
            for c in COLUMNS:
                v = obj.get(c)
                cols[c].append("" if v is None else v)
        try:
            return cls(cols)
        except RegistryError as exc:
            raise RegistryError(f"{source}: {exc}") from exc

    def to_csv(self, path: str | Path) -> None:
        cols = self.columns()
        with Path(path).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            as_text = [_text_column(cols[c]) for c in COLUMNS]
            w.writerows(zip(*as_text, strict=True))


def _float_column(
    values: Sequence[Any] | npt.NDArray[Any], n: int, name: str
) -> npt.NDArray[np.float32]:
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu":
        return arr.astype(np.float32)
    out = np.full(n, np.nan, dtype=np.float32)
    text = arr.astype(np.str_)
    present = np.char.strip(text) != ""
    try:
        out[present] = text[present].astype(np.float64)
    except ValueError as exc:
        raise RegistryError(f"column {name!r}: non-numeric value ({exc})") from exc
    return out


def _int_column(
    values: Sequence[Any] | npt.NDArray[Any], n: int, name: str
) -> npt.NDArray[np.int16]:
    f = _float_column(values, n, name)
    return np.where(np.isnan(f), -1, f).astype(np.int16)


def _text_column(arr: npt.NDArray[Any]) -> list[str]:
    if arr.dtype.kind == "f":
        return ["" if np.isnan(v) else f"{v:.6g}" for v in arr.tolist()]
    if arr.dtype.kind in "iu":
        return ["" if v < 0 else str(v) for v in arr.tolist()]
    return [str(v) for v in arr.tolist()]
