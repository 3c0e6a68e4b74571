"""Split the district between collectors by grid, with plain MQTT topic filters.

A grid goes to partition ``crc32(grid_id) % N``: stable across processes, machines and
Python versions (unlike ``hash``), and independent of the registry's order, so adding a
grid never moves the others. Every device belongs to one grid, so N collectors started
with ``k/N`` for k = 0..N-1 share no device and together cover every registered grid.

>>> grids = ["g1", "g2", "g3", "g4"]
>>> sorted(partition_grids(grids, 0, 2) + partition_grids(grids, 1, 2)) == grids
True
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence

from gridwatch.contract import subscription_filters
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry

_PARTITION = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_partition(text: str) -> tuple[int, int]:
    """``"k/N"`` with 0 <= k < N, e.g. ``0/3``, ``1/3``, ``2/3``."""
    m = _PARTITION.match(text)
    if not m:
        raise ConfigError(f"--partition {text!r}: expected k/N, e.g. 0/3")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--partition {text!r}: need 0 <= k < N (partitions are 0-based)")
    return k, n


def partition_of(grid_id: str, n: int) -> int:
    return zlib.crc32(grid_id.encode("utf-8")) % n


def partition_grids(grid_ids: Iterable[str], k: int, n: int) -> list[str]:
    return [g for g in grid_ids if partition_of(g, n) == k]


def collector_filters(
    registry: Registry,
    *,
    root: str,
    grids: Sequence[str] | None = None,
    partition: tuple[int, int] | None = None,
) -> list[str]:
    """Topic filters of one collector: all grids, a ``grids`` list, or a partition.

    The whole district uses two wildcard filters (and so also receives, and dead-letters,
    grids missing from the registry); a subset lists two filters per grid.
    """
    if grids is not None and partition is not None:
        raise ConfigError("give --grids or --partition, not both")
    if grids is not None:
        known = set(registry.grid_ids.tolist())
        unknown = [g for g in grids if g not in known]
        if unknown:
            raise ConfigError(f"--grids: not in the registry: {unknown[:10]}")
        if not grids:
            raise ConfigError("--grids: empty list")
        return subscription_filters(list(grids), root)
    if partition is not None:
        mine = partition_grids(registry.grid_ids.tolist(), *partition)
        if not mine:
            k, n = partition
            raise ConfigError(f"--partition {k}/{n}: no grid of the registry falls in it")
        return subscription_filters(mine, root)
    return subscription_filters(None, root)
