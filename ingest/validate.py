"""Judge pending rows against the registry, the physics and the clock, all rows at once.

Every check is a numpy expression over the whole flush; a row keeps the first reason it
fails (``RowReason`` order, then field order), which makes the outcome independent of how
rows were split into messages. Duplicates are judged last (``ingest.dedup``), only among
rows that passed everything else, so a refused row never hides a later valid one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.contract import MAX_TS_MS
from gridwatch.domain import FIELDS
from ingest.dedup import Dedup
from ingest.reasons import RowReason
from ingest.rows import RawRows


@dataclass(frozen=True, slots=True)
class Limits:
    """The clock limits of a judgement, in milliseconds; None disables a check."""

    now_ms: int
    max_future_ms: int | None
    max_age_ms: int | None


def judge(
    rows: RawRows,
    device_kind: npt.NDArray[np.int8],
    device_grid: npt.NDArray[np.int32],
    limits: Limits,
    *,
    dedup: Dedup,
    now_s: float,
) -> ReadingBatch:
    """Mark every refused row in ``rows.code`` and return the accepted ones.

    ``device_kind``/``device_grid`` are the registry's columns; ``dedup`` remembers the
    accepted rows (``now_s``: the collector's monotonic clock). Accepted fields are cast
    to the kind's dtypes; rows keep arrival order unless a late reading forces time
    order within a device.
    """
    code = rows.code
    bad_field = rows.bad_field
    ok = code == 0

    def refuse(mask: npt.NDArray[np.bool_], reason: RowReason, field: int = 0) -> None:
        nonlocal ok
        mask &= ok
        code[mask] = reason
        if field:
            bad_field[mask] = field
        ok &= ~mask

    dev = rows.device
    refuse(dev < 0, RowReason.UNKNOWN_DEVICE)
    known = np.maximum(dev, 0)
    refuse(device_kind[known] != rows.kind.code, RowReason.WRONG_KIND)
    refuse(device_grid[known] != rows.topic_grid, RowReason.WRONG_GRID)
    ts = rows.ts_ms
    refuse((ts <= -MAX_TS_MS) | (ts >= MAX_TS_MS), RowReason.BAD_TS)

    for pos, spec in enumerate(FIELDS[rows.kind], start=1):
        col = rows.fields[spec.name]
        if col.dtype.kind == "f":
            nan = np.isnan(col)
            inf = np.isinf(col)
            refuse(inf | nan if spec.required else inf, RowReason.NOT_FINITE, pos)
        c64 = col.astype(np.float64, copy=False)
        refuse((c64 < spec.lo) | (c64 > spec.hi), RowReason.OUT_OF_RANGE, pos)
        if np.dtype(spec.dtype).kind in "iu" and col.dtype.kind == "f":
            refuse(np.isfinite(c64) & (c64 != np.floor(c64)), RowReason.NOT_INTEGER, pos)

    if limits.max_future_ms is not None:
        refuse(ts > limits.now_ms + limits.max_future_ms, RowReason.TS_FUTURE)
    if limits.max_age_ms is not None:
        refuse(ts < limits.now_ms - limits.max_age_ms, RowReason.TS_TOO_OLD)

    idx = np.flatnonzero(ok)
    verdict, reorder = dedup.check(dev[idx], ts[idx], now_s)
    code[idx[verdict == 1]] = RowReason.DUPLICATE
    code[idx[verdict == 2]] = RowReason.LATE
    ok[idx[verdict != 0]] = False
    batch = _accepted(rows, ok)
    if reorder:  # a late reading: restore time order within each device
        batch = batch.take(np.lexsort((batch.ts_ms, batch.device)))
    return batch


def _accepted(rows: RawRows, ok: npt.NDArray[np.bool_]) -> ReadingBatch:
    fields: dict[str, npt.NDArray[Any]] = {}
    all_ok = bool(ok.all())
    for spec in FIELDS[rows.kind]:
        col = rows.fields[spec.name] if all_ok else rows.fields[spec.name][ok]
        dt = np.dtype(spec.dtype)
        if dt.kind in "iu" and col.dtype.kind == "f":
            col = np.where(np.isnan(col), 0, col)
        fields[spec.name] = col.astype(dt, copy=False)
    if all_ok:
        return ReadingBatch(rows.kind, rows.device.astype(np.int32, copy=False), rows.ts_ms, fields)
    return ReadingBatch(rows.kind, rows.device[ok], rows.ts_ms[ok], fields)
