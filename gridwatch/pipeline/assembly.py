"""From ``Settings`` to the objects every pipeline process needs, checked at start-up.

Each function fails with a ``GridwatchError`` that names the setting at fault, before any
thread starts: a wrong rules file or an unreachable database stops ``gridwatch run`` at
once with one line, never after minutes of running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.plans import DEFAULT_PLANS_PATH, PlansFile, load_plans
from gridwatch.config import Settings, parse_partition
from gridwatch.errors import ConfigError, StorageError
from gridwatch.registry import Registry
from ingest.partition import partition_grids, partition_of
from rules.load import DEFAULT_RULES_PATH, RuleSet, load_rules
from storage import Storage, open_storage

log = logging.getLogger(__name__)

Partition = tuple[int, int]


def load_registry(settings: Settings) -> Registry:
    """The registry file, or the built-in simulated district (``sim.devices``, ``sim.seed``)."""
    if settings.files.registry is not None:
        return Registry.load(settings.files.registry)
    from sim.fleet import FleetSpec, build_fleet

    return build_fleet(FleetSpec(n_devices=settings.sim.devices, seed=settings.sim.seed))


def partition_of_settings(settings: Settings) -> Partition | None:
    return parse_partition(settings.pipeline.partition)


def my_grids(registry: Registry, partition: Partition | None) -> list[str] | None:
    """The grids of ``partition`` (ingest's crc32 split); None = every grid."""
    if partition is None:
        return None
    grids = partition_grids(registry.grid_ids.tolist(), *partition)
    if not grids:
        k, n = partition
        raise ConfigError(f"partition {k}/{n}: no grid of the registry falls in it")
    return grids


def mine_mask(registry: Registry, grids: list[str] | None) -> npt.NDArray[np.bool_] | None:
    """Per dense device index: does this worker own the device? None = all of them."""
    if grids is None:
        return None
    own = np.isin(registry.grid_ids, np.asarray(grids, dtype=registry.grid_ids.dtype))
    return own[registry.device_grid]


def owner_filter(
    partition: Partition | None,
) -> Callable[[Mapping[str, Any]], bool] | None:
    """Which stored alerts a worker restores: those of its grids; a street-wide alert
    belongs to the partition its street hashes to (one worker, never two)."""
    if partition is None:
        return None
    k, n = partition

    def owns(row: Mapping[str, Any]) -> bool:
        grid = row.get("grid")
        if grid:
            return partition_of(str(grid), n) == k
        return partition_of(str(row.get("street") or ""), n) == k

    return owns


def load_policy(settings: Settings, registry: Registry) -> tuple[RuleSet, PlansFile]:
    """Plans first (rules refer to them by name), then the rules checked against both."""
    plans = load_plans(settings.files.plans or DEFAULT_PLANS_PATH)
    rules = load_rules(
        settings.files.rules or DEFAULT_RULES_PATH,
        registry=registry,
        plan_names=list(plans.plans),
    )
    return rules, plans


def open_store(
    settings: Settings, registry: Registry, *, initialise: bool, attempts: int = 1
) -> tuple[Storage, npt.NDArray[np.int32]]:
    """Open storage; ``initialise`` migrates and saves the registry (one process does it).

    Workers started by a supervisor only look their device keys up, so N processes never
    race on migrations or registry rows. ``attempts`` > 1 retries a database that is not
    up yet (a worker restarted during an outage), one second apart.
    """
    url = settings.storage.url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(max(1, attempts)):
        try:
            storage = open_storage(url)
            try:
                if initialise:
                    applied = storage.migrate()
                    if applied:
                        log.info("storage migrated", extra={"applied": applied})
                    keys = storage.save_registry(registry)
                else:
                    keys = storage.device_keys(registry)
            except BaseException:
                storage.close()
                raise
            return storage, np.asarray(keys, dtype=np.int32)
        except StorageError as exc:
            if attempt + 1 >= attempts:
                raise
            log.warning("storage not available yet; retrying", extra={"error": str(exc)})
            time.sleep(1.0)
    raise StorageError(f"cannot open storage {settings.masked()['storage']['url']}")
