"""Resume after a crash: replay what storage holds beyond the detector checkpoint.

A checkpoint is the detectors' state as of its watermark (the newest device timestamp
they had seen). A worker killed later had acknowledged, stored and alerted on readings
the checkpoint does not include; the broker will not send those again. So a starting
worker feeds the detectors every stored reading of its devices newer than the watermark
(per kind, in time order) before it takes new messages, and seeds ingest's duplicate
check with the newest stored timestamp per device, so that what the broker does redeliver
(stored, not yet acknowledged) is refused as a duplicate instead of seen twice.

The catch-up runs through the rules too: alerts already open are deduplicated by their
open key, alerts the crash prevented are opened now. Readings still in the local storage
backlog or the writer's spill files (database down at the crash) reach the database after
the restart but not the detectors; ``gridwatch status`` reports the backlog.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry
from storage import Storage
from storage.rollups import time_param
from storage.schema import TABLES

log = logging.getLogger(__name__)

CHUNK_ROWS = 100_000
NEVER = np.iinfo(np.int64).min


def stored_since(
    storage: Storage,
    registry: Registry,
    keys: npt.NDArray[np.int32],
    since_ms: int,
    *,
    mine: npt.NDArray[np.bool_] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[ReadingBatch]:
    """Stored readings with ``ts_ms > since_ms`` of this worker's devices, per kind in
    time order, as batches of at most ``chunk_rows`` (the same shape ingest hands on)."""
    # device key -> dense index
    inverse = np.full(int(keys.max()) + 1 if keys.size else 1, -1, dtype=np.int64)
    valid = keys >= 0
    inverse[keys[valid]] = np.flatnonzero(valid)
    d = storage.dialect
    for kind in DeviceKind:
        t = TABLES[kind]
        cols = ", ".join(f'"{f}"' for f in t.fields)  # "end" is an SQL keyword
        if d == "postgres":
            ts_expr, where = "(extract(epoch FROM ts) * 1000)::bigint", "ts > %s"
        else:
            ts_expr, where = "ts_ms", "ts_ms > %s"
        order = "ts" if d == "postgres" else "ts_ms"
        sql = f"SELECT device, {ts_expr}, {cols} FROM {t.name} WHERE {where} ORDER BY {order}"
        with storage.connection(readonly=True) as conn:
            cur = conn.execute(storage.sql(sql), (time_param(since_ms, d),))
            while True:
                rows = cur.fetchmany(chunk_rows)
                if not rows:
                    break
                batch = _batch(kind, rows, inverse, mine)
                if batch is not None:
                    yield batch


def _batch(
    kind: DeviceKind,
    rows: list[tuple[Any, ...]],
    inverse: npt.NDArray[np.int64],
    mine: npt.NDArray[np.bool_] | None,
) -> ReadingBatch | None:
    dev_key = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    known = (dev_key >= 0) & (dev_key < inverse.size)
    dev = np.full(dev_key.size, -1, dtype=np.int64)
    dev[known] = inverse[dev_key[known]]
    keep = dev >= 0
    if mine is not None:
        keep &= mine[np.maximum(dev, 0)]
    if not keep.any():
        return None
    idx = np.flatnonzero(keep)
    ts = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))[idx]
    fields = {}
    for j, spec in enumerate(FIELDS[kind]):
        col = [rows[i][2 + j] for i in idx.tolist()]
        if np.dtype(spec.dtype).kind == "i":
            fields[spec.name] = np.array([-1 if v is None else v for v in col], dtype=spec.dtype)
        else:
            fields[spec.name] = np.array(
                [np.nan if v is None else v for v in col], dtype=spec.dtype
            )
    return ReadingBatch(kind, dev[idx].astype(np.int32), ts, fields)


def catch_up(
    stage: Any,
    storage: Storage,
    registry: Registry,
    keys: npt.NDArray[np.int32],
    since_ms: int,
    *,
    mine: npt.NDArray[np.bool_] | None = None,
) -> tuple[int, npt.NDArray[np.int64]]:
    """Feed ``stage`` (a ``DetectStage``, not started) what storage holds after
    ``since_ms``; returns (readings fed, newest stored ts per device, ``NEVER`` if none)."""
    last = np.full(len(registry), NEVER, dtype=np.int64)
    n = 0
    for batch in stored_since(storage, registry, keys, since_ms, mine=mine):
        stage.process_batch(batch)
        np.maximum.at(last, batch.device, batch.ts_ms)
        n += len(batch)
    if n:
        stage.run_timers()
    log.info(
        "caught up from storage",
        extra={"since_ms": since_ms, "readings": n, "devices": int((last > NEVER).sum())},
    )
    return n, last
