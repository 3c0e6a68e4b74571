"""Wire device ids to dense registry indexes, as fast as the ids allow.

``Registry.index_of`` binary-searches byte strings: about 0.2 µs per row over 480,000
ids, a third of what a 500-row binary batch costs to ingest. When every registered id is
at most 8 bytes (the simulated district's ``sw000123``), an id is also a big-endian
``uint64`` whose integer order is the byte order, and the search runs on integers.
Longer registry ids fall back to ``Registry.index_of``; the answer is the same.

>>> from sim.fleet import FleetSpec, build_fleet
>>> reg = build_fleet(FleetSpec(n_devices=100, seed=1))
>>> ids = DeviceIds(reg)
>>> wire = ["sw000001", "nope", "sw0000011"]
>>> ids(wire).tolist() == reg.index_of(wire).tolist() == [12, -1, -1]
True
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from gridwatch.registry import Registry

_WIDTH: Final = 8


def _as_u64(ids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.uint64]:
    padded = np.zeros(ids.shape[0], dtype=f"S{_WIDTH}")
    padded[:] = ids
    return padded.view(">u8").astype(np.uint64)


class DeviceIds:
    """Callable like ``Registry.index_of``: ids (str or bytes) -> int32 index, -1 unknown."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        ids = registry.device_ids.astype(np.bytes_) if len(registry) else np.zeros(0, "S1")
        self.fast = len(registry) > 0 and ids.dtype.itemsize <= _WIDTH
        if self.fast:
            keys = _as_u64(ids)
            order = np.argsort(keys, kind="stable")
            self._keys = keys[order]
            self._index = order.astype(np.int32)

    def __call__(self, ids: npt.ArrayLike) -> npt.NDArray[np.int32]:
        arr = np.asarray(ids)
        if not self.fast or arr.size == 0:
            return self._registry.index_of(arr)
        if arr.dtype.kind == "U":
            try:
                arr = arr.astype(np.bytes_)
            except UnicodeEncodeError:  # non-ASCII: the slow path sorts it out
                return self._registry.index_of(arr)
        elif arr.dtype.kind != "S":
            return self._registry.index_of(arr)
        too_long = None
        if arr.dtype.itemsize > _WIDTH:
            too_long = np.char.str_len(arr) > _WIDTH
        keys = _as_u64(arr.astype(f"S{_WIDTH}") if too_long is not None else arr)
        pos = np.minimum(np.searchsorted(self._keys, keys), self._keys.shape[0] - 1)
        found = self._keys[pos] == keys
        if too_long is not None:
            found &= ~too_long
        return np.where(found, self._index[pos], np.int32(-1)).astype(np.int32, copy=False)
