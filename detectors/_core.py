"""Internals shared by the detectors: kind-local indexing, per-device rounds, state arrays.

Why rounds: a batch may hold several readings of one device (an elevator reporting every
second, the points of a camera track). Fancy-index scatter (``a[idx] = v``) keeps only one
of them, so the hot path processes a batch in *rounds*: round ``k`` holds every device's
``k``-th reading of the batch, so within a round each device appears once and plain
gather/scatter is exact. Readings of one device keep their order, and a batch split in two
gives the same state as the whole. The common case (each device at most once) is one round
and costs a single ``bincount``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry

_SMALL_BATCH_RATIO = 64
"""Below n_local / 64 rows, finding repeats by sorting is cheaper than a full bincount."""


class KindIndex:
    """Dense per-kind indexes: state arrays hold only the devices of one kind.

    ``local_of[device]`` is the device's position among devices of ``kind`` (-1 for other
    kinds); ``devices[local]`` maps back. Arrays sized to the kind, not the whole registry,
    use 8x less memory for elevators and stay in cache, which makes gathers faster.
    """

    def __init__(self, registry: Registry, kind: DeviceKind) -> None:
        self.kind = kind
        mask = registry.kind == kind.code
        self.devices: npt.NDArray[np.int32] = np.flatnonzero(mask).astype(np.int32)
        self.local_of: npt.NDArray[np.int32] = np.full(len(registry), -1, dtype=np.int32)
        self.local_of[self.devices] = np.arange(self.devices.size, dtype=np.int32)

    @property
    def size(self) -> int:
        return int(self.devices.size)

    def local(self, device: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """Local indexes of ``device``; raises when a device is not of this kind."""
        loc = self.local_of[device]
        if loc.size and int(loc.min()) < 0:
            bad = device[loc < 0]
            raise ValueError(
                f"{bad.size} readings of devices that are not {self.kind.value} devices "
                f"reached the {self.kind.value} detector (first device index {int(bad[0])})"
            )
        return loc


def device_rounds(loc: npt.NDArray[np.int32], n_local: int) -> list[npt.NDArray[np.intp]] | None:
    """Row groups in which each device appears at most once, in within-device order.

    Returns ``None`` when no device repeats (the whole batch is one round). Otherwise
    ``rounds[k]`` are the rows holding each device's ``k``-th reading, ascending.

    >>> device_rounds(np.array([3, 1, 3, 2, 3], np.int32), 4)
    [array([0, 1, 3]), array([2]), array([4])]
    """
    n = loc.size
    if n <= 1:
        return None
    if n * _SMALL_BATCH_RATIO < n_local:
        if np.unique(loc).size == n:
            return None
    elif int(np.bincount(loc, minlength=n_local).max()) <= 1:
        return None
    order = np.argsort(loc, kind="stable")
    s = loc[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    pos = np.arange(n)
    start = np.maximum.accumulate(np.where(new, pos, 0))
    rank = np.empty(n, dtype=np.intp)
    rank[order] = pos - start
    by_rank = np.argsort(rank, kind="stable")
    counts = np.bincount(rank)
    return np.split(by_rank, np.cumsum(counts)[:-1])


def as_f64(a: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    return np.asarray(a, dtype=np.float64)


class StateArrays:
    """``state()`` / ``load_state()`` over the attributes whose names end in ``_``.

    Learned state lives only in numpy arrays (sklearn's trailing-underscore convention),
    so a checkpoint is a flat ``{name: array}`` dict that ``np.savez`` writes as is.
    """

    def _state_names(self) -> list[str]:
        return sorted(
            k for k, v in vars(self).items() if k.endswith("_") and isinstance(v, np.ndarray)
        )

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Copies of every learned array (the caller may keep or mutate them freely)."""
        return {k: getattr(self, k).copy() for k in self._state_names()}

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Replace the learned arrays; every key must be present with its shape and dtype."""
        current = {k: getattr(self, k) for k in self._state_names()}
        for k, v in checked_state(type(self).__name__, current, state).items():
            setattr(self, k, v)


def checked_state(
    owner: str, current: Mapping[str, npt.NDArray[Any]], state: Mapping[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """Copies of ``state`` after checking it has exactly ``current``'s keys, shapes, dtypes.

    Nothing is replaced unless everything matches, so a bad checkpoint leaves a detector
    as it was.
    """
    missing = sorted(set(current) - set(state))
    extra = sorted(set(state) - set(current))
    if missing or extra:
        raise ValueError(f"{owner} state does not match: missing {missing}, unexpected {extra}")
    new: dict[str, npt.NDArray[Any]] = {}
    for k, cur in current.items():
        arr = np.asarray(state[k])
        if arr.shape != cur.shape or arr.dtype != cur.dtype:
            raise ValueError(
                f"{owner} state {k!r}: expected shape {cur.shape} {cur.dtype}, "
                f"got {arr.shape} {arr.dtype}"
            )
        new[k] = arr.copy()
    return new
