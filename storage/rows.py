"""Readings ready for storage: device keys instead of dense indexes, fields in table order.

``Rows`` is what the writer queues, spills to disk and replays. It no longer depends on
the registry (keys are stable), so a spill file written before a restart replays
correctly after it, even with an edited registry file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from storage.schema import TABLES


@dataclass(frozen=True, slots=True)
class Rows:
    kind: DeviceKind
    device: npt.NDArray[np.int32]
    ts_ms: npt.NDArray[np.int64]
    fields: tuple[npt.NDArray[Any], ...]

    def __len__(self) -> int:
        return int(self.device.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.device.nbytes + self.ts_ms.nbytes + sum(f.nbytes for f in self.fields))

    @classmethod
    def from_batch(cls, batch: ReadingBatch, keys: npt.NDArray[np.int32]) -> Rows:
        """Map a batch's dense device indexes to keys and order its fields like the table.

        Raises ``ValueError`` for devices without a key or a missing field: both are
        bugs upstream (ingest only emits registered devices and complete batches).
        """
        t = TABLES[batch.kind]
        if batch.device.size and int(batch.device.min()) < 0:
            raise ValueError("batch has negative device indexes (unknown devices)")
        try:
            dev = keys[batch.device]
        except IndexError as exc:
            raise ValueError(
                f"batch has device index {int(batch.device.max())} but the key map covers "
                f"{keys.shape[0]} devices"
            ) from exc
        if dev.size and int(dev.min()) < 0:
            raise ValueError("batch has devices without a storage key; call save_registry first")
        missing = [f for f in t.fields if f not in batch.fields]
        if missing:
            raise ValueError(f"{batch.kind} batch lacks fields {missing}")
        fields = tuple(
            np.asarray(batch.fields[f], dtype=d) for f, d in zip(t.fields, t.dtypes, strict=True)
        )
        return cls(
            batch.kind, dev.astype(np.int32, copy=False), batch.ts_ms.astype(np.int64), fields
        )

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        return cls(
            parts[0].kind,
            np.concatenate([p.device for p in parts]),
            np.concatenate([p.ts_ms for p in parts]),
            tuple(np.concatenate(cols) for cols in zip(*(p.fields for p in parts), strict=True)),
        )

    def take(self, rows: npt.NDArray[Any] | slice) -> Rows:
        return Rows(
            self.kind, self.device[rows], self.ts_ms[rows], tuple(f[rows] for f in self.fields)
        )


def by_kind(chunk: Sequence[Rows]) -> dict[DeviceKind, Rows]:
    """One concatenated ``Rows`` per kind present in ``chunk`` (order within a kind kept)."""
    groups: dict[DeviceKind, list[Rows]] = {}
    for r in chunk:
        if len(r):
            groups.setdefault(r.kind, []).append(r)
    return {k: Rows.concat(v) for k, v in groups.items()}
