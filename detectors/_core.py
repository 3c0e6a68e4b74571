"""Internals shared by the detectors: kind-local indexing, per-device rounds, state arrays.

Why rounds: a batch may hold several readings of one device (an elevator reporting every
second, the points of a camera track). Fancy-index scatter (``a[idx] = v``) keeps only one
of them, so the hot path processes a batch in *rounds*: round ``k`` holds every device's
``k``-th reading of the batch, so within a round each device appears once and plain
gather/scatter is exact. Readings of one device keep their order, and a batch split in two
gives the same state as the whole. The common case (each device at most once) is one round
found by a counting sort.

Why device order: per-device state arrays are far larger than a batch's columns (the
sewage ring alone is 72 MB), and random gathers/scatters into them dominated the cost.
Each round's rows are visited in ascending local index, so state is walked forwards and
the hardware prefetcher hides the memory latency; the batch's few columns are permuted
once instead (``BatchPlan``, shared by the kind detector and the generic checks).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry


class KindIndex:
    """Dense per-kind indexes: state arrays hold only the devices of one kind.

    ``local_of[device]`` is the device's position among devices of ``kind`` (-1 for other
    kinds); ``devices[local]`` maps back. Arrays sized to the kind, not the whole registry,
    use 8x less memory for elevators and stay in cache, which makes gathers faster.
    Local indexes are ``intp``: numpy converts any other index dtype to it on every
    fancy-index operation (measured: +0.5 ms per gather of 300,000 rows).
    """

    def __init__(self, registry: Registry, kind: DeviceKind) -> None:
        self.kind = kind
        mask = registry.kind == kind.code
        self.devices: npt.NDArray[np.int32] = np.flatnonzero(mask).astype(np.int32)
        self.local_of: npt.NDArray[np.intp] = np.full(len(registry), -1, dtype=np.intp)
        self.local_of[self.devices] = np.arange(self.devices.size, dtype=np.intp)
        # a kind whose devices are one run of registry indexes (as the fleet builder lays
        # them out) maps by a subtraction instead of a random gather (5x faster)
        n = self.devices.size
        self._first: int | None = (
            int(self.devices[0])
            if n and int(self.devices[-1]) - int(self.devices[0]) == n - 1
            else None
        )

    @property
    def size(self) -> int:
        return int(self.devices.size)

    def local(self, device: npt.NDArray[np.int32]) -> npt.NDArray[np.intp]:
        """Local indexes of ``device``; raises when a device is not of this kind."""
        first = self._first
        if first is not None and device.size:
            lo, hi = int(device.min()), int(device.max())
            if lo >= first and hi < first + self.devices.size:
                return np.subtract(device, first, dtype=np.intp)
        loc = np.take(self.local_of, device)  # faster than local_of[device] for int32
        if loc.size and int(loc.min()) < 0:
            bad = device[loc < 0]
            raise ValueError(
                f"{bad.size} readings of devices that are not {self.kind.value} devices "
                f"reached the {self.kind.value} detector (first device index {int(bad[0])})"
            )
        return loc


def device_rounds(
    loc: npt.NDArray[np.integer[Any]], n_local: int
) -> list[npt.NDArray[np.intp]] | None:
    """Row groups in which each device appears at most once, each in device order.

    ``rounds[k]`` are the rows holding each device's ``k``-th reading, sorted by local
    index (ties cannot occur), so the detectors' gathers and scatters into per-device
    state walk memory forwards instead of at random: a full-fleet batch in random device
    order then costs one permutation of its few columns instead of random accesses into
    every state array (measured: 0.3 vs 1.2-1.8 ms per 300,000-row gather). Returns
    ``None`` when the rows are already in strictly ascending device order (one round,
    no permutation needed).

    >>> device_rounds(np.array([3, 1, 3, 2, 3], np.int32), 4)
    [array([1, 3, 0]), array([2]), array([4])]
    >>> device_rounds(np.array([0, 2, 5]), 6) is None
    True
    """
    rounds = _rounds(loc, n_local)
    return None if rounds is None else [rows for rows, _ in rounds]


def _rounds(
    loc: npt.NDArray[np.integer[Any]], n_local: int
) -> list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]] | None:
    """``device_rounds`` with each round's local indexes (ascending) beside its rows."""
    n = loc.size
    if n == 0:
        return []
    if n == 1 or _ascending(loc):
        return None
    if n * 2 >= n_local:
        # counting sort: each row's number at its device's slot, read back in device order
        # (passes over every device of the kind: for batches of at least half of them)
        slot = np.full(n_local, -1, dtype=np.int32)
        slot[loc] = np.arange(n, dtype=np.int32)
        if n == n_local and int(slot.min()) >= 0:  # every device once: a permutation
            return [(slot.astype(np.intp), _all_local(n_local))]
        present = slot >= 0
        rows = slot[present]
        if rows.size == n:
            return [(rows.astype(np.intp), np.flatnonzero(present))]
        order = _stable_order(loc, n_local)
    else:
        order = _stable_order(loc, n_local)
        s = loc[order]
        if bool((s[1:] != s[:-1]).all()):
            return [(order, s.astype(np.intp))]
    # rank of each row among its device's rows, in row order
    s = loc[order]
    new = np.empty(n, dtype=np.bool_)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    pos = np.arange(n)
    rank = pos - np.maximum.accumulate(np.where(new, pos, 0))
    small = np.uint16 if int(rank.max()) < 1 << 16 else np.intp
    by_rank = order[np.argsort(rank.astype(small), kind="stable")]  # device order within
    counts = np.bincount(rank)
    return [(r, loc[r].astype(np.intp)) for r in np.split(by_rank, np.cumsum(counts)[:-1])]


@functools.lru_cache(maxsize=8)
def _all_local(n_local: int) -> npt.NDArray[np.intp]:
    """``arange(n_local)``, shared and read-only: the local indexes of a batch that holds
    every device of the kind."""
    out = np.arange(n_local, dtype=np.intp)
    out.setflags(write=False)
    return out


def _ascending(loc: npt.NDArray[np.integer[Any]]) -> bool:
    """Strictly ascending (checked on a prefix first: a shuffled batch fails at once)."""
    head = loc[:64]
    if not bool((head[1:] > head[:-1]).all()):
        return False
    return bool((loc[1:] > loc[:-1]).all())


def _stable_order(loc: npt.NDArray[np.integer[Any]], n_local: int) -> npt.NDArray[np.intp]:
    """``argsort(loc, kind="stable")`` by 16-bit radix passes (numpy radix-sorts only
    integers of up to 16 bits; its stable sort of wider ones is ~8x slower, and faster
    than the counting sort below half of the kind's devices: 0.3 vs 1.7 ms for 30,000
    of 300,000)."""
    if n_local <= 1 << 16:
        return np.argsort(loc.astype(np.uint16), kind="stable")
    order = np.argsort((loc & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while n_local > 1 << shift:
        digit = ((loc[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


class Round:
    """One round of a batch: rows (each device at most once) in device order.

    Columns are gathered in that order on first use and cached, so the kind detector
    and the generic checks of one batch share one permutation of each column.
    ``rows`` is None when the round is the whole batch in its own order.
    """

    __slots__ = ("_batch", "_cols", "_ts", "loc", "rows")

    def __init__(
        self,
        batch: ReadingBatch,
        rows: npt.NDArray[np.intp] | None,
        loc: npt.NDArray[np.intp],
    ) -> None:
        self._batch = batch
        self.rows = rows
        self.loc = loc
        self._ts: npt.NDArray[np.int64] | None = batch.ts_ms if rows is None else None
        self._cols: dict[str, npt.NDArray[Any] | None] = {}

    def __len__(self) -> int:
        return int(self.loc.size)

    @property
    def ts_ms(self) -> npt.NDArray[np.int64]:
        """Timestamps at this round's rows (gathered on first use)."""
        if self._ts is None:
            self._ts = np.take(self._batch.ts_ms, self.rows)
        return self._ts

    def get(self, name: str) -> npt.NDArray[Any] | None:
        """Field ``name`` at this round's rows (None when the batch lacks the field)."""
        try:
            return self._cols[name]
        except KeyError:
            src = self._batch.fields.get(name)
            out = None if src is None else (src if self.rows is None else np.take(src, self.rows))
            self._cols[name] = out
            return out

    def col(self, name: str) -> npt.NDArray[Any]:
        """Field ``name`` at this round's rows; ``KeyError`` when the batch lacks it."""
        out = self.get(name)
        if out is None:
            raise KeyError(name)
        return out

    def has(self, name: str) -> bool:
        """Whether the batch carries field ``name``."""
        return name in self._batch.fields


class BatchPlan:
    """A batch's local indexes and rounds, computed once and shared by its detectors.

    ``rounds`` is computed on first use: a detector that only needs ``loc`` (the generic
    checks of a kind without numeric channels) never pays for the sort.
    """

    __slots__ = ("_index", "_rounds", "batch", "loc")

    def __init__(self, batch: ReadingBatch, index: KindIndex) -> None:
        self.batch = batch
        self._index = index
        self.loc = index.local(batch.device)
        self._rounds: list[Round] | None = None

    @property
    def rounds(self) -> list[Round]:
        if self._rounds is None:
            rounds = _rounds(self.loc, self._index.size)
            if rounds is None:
                self._rounds = [Round(self.batch, None, self.loc)]
            else:
                self._rounds = [Round(self.batch, rows, loc) for rows, loc in rounds]
        return self._rounds


CHUNK_ROWS = 32768
"""Rows of a round that the per-row checks (generic, sewage) process at once: a chunk's
temporaries (a few dozen arrays of 32,768 float64) stay in a core's L2 cache; larger
chunks stream through memory, smaller ones pay numpy's per-call overhead more often."""


def run_slice(loc: npt.NDArray[np.intp]) -> npt.NDArray[np.intp] | slice:
    """``loc`` (ascending, distinct: a round's) as a slice when it is a run of consecutive
    devices, else ``loc``.

    Per-device state is then read through views and written back as one block instead of
    gathered and scattered: every chunk of a batch that holds every device of the kind.
    The check is O(1).

    >>> run_slice(np.array([4, 5, 6]))
    slice(4, 7, None)
    >>> run_slice(np.array([4, 6, 7]))
    array([4, 6, 7])
    """
    m = loc.size
    if m and int(loc[m - 1]) - int(loc[0]) == m - 1:
        return slice(int(loc[0]), int(loc[0]) + m)
    return loc


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
