"""Columnar batches that flow between stages: readings (ingest -> detectors, storage)
and detections (detectors -> rules).

Both are a handful of numpy arrays of equal length; nothing here holds one Python
object per reading, which is what lets a 2-core machine keep up with 480,000 devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gridwatch.domain import FIELDS, DetectionKind, DeviceKind


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """Accepted readings of one device kind, one row per reading.

    ``device`` holds dense registry indexes (int32), ``ts_ms`` device timestamps in
    epoch milliseconds (int64), and ``fields`` one array per field of the kind
    (``gridwatch.domain.FIELDS``), float32 unless the field spec says otherwise, NaN
    where an optional field was absent. Rows of one device are in time order.
    """

    kind: DeviceKind
    device: npt.NDArray[np.int32]
    ts_ms: npt.NDArray[np.int64]
    fields: Mapping[str, npt.NDArray[Any]]

    def __post_init__(self) -> None:
        n = self.device.shape[0]
        if self.ts_ms.shape[0] != n:
            raise ValueError(f"ts_ms has {self.ts_ms.shape[0]} rows, device has {n}")
        for name, arr in self.fields.items():
            if arr.shape[0] != n:
                raise ValueError(f"field {name!r} has {arr.shape[0]} rows, device has {n}")

    def __len__(self) -> int:
        return int(self.device.shape[0])

    @classmethod
    def empty(cls, kind: DeviceKind) -> ReadingBatch:
        return cls(
            kind,
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
            {f.name: np.zeros(0, f.dtype) for f in FIELDS[kind]},
        )

    def take(self, rows: npt.NDArray[Any]) -> ReadingBatch:
        """Rows selected by an index or boolean mask, as a new batch."""
        return ReadingBatch(
            self.kind,
            self.device[rows],
            self.ts_ms[rows],
            {k: v[rows] for k, v in self.fields.items()},
        )

    @classmethod
    def concat(cls, batches: Sequence[ReadingBatch]) -> ReadingBatch:
        if not batches:
            raise ValueError("concat needs at least one batch")
        kind = batches[0].kind
        if any(b.kind != kind for b in batches):
            raise ValueError("cannot concatenate batches of different kinds")
        names = batches[0].fields.keys()
        return cls(
            kind,
            np.concatenate([b.device for b in batches]),
            np.concatenate([b.ts_ms for b in batches]),
            {k: np.concatenate([b.fields[k] for b in batches]) for k in names},
        )


@dataclass(frozen=True, slots=True)
class Detections:
    """What detectors found in one update, one row per detection.

    ``kind`` holds ``DetectionKind.code`` values (uint8), ``score`` is in [0, 1] with
    higher meaning worse, ``ts_ms`` is the device time the detection refers to.
    ``evidence`` maps a name (with unit suffix, e.g. ``time_to_overflow_s``) to a
    float64 column; NaN where that evidence does not apply to the row's kind.
    """

    device: npt.NDArray[np.int32]
    kind: npt.NDArray[np.uint8]
    ts_ms: npt.NDArray[np.int64]
    score: npt.NDArray[np.float32]
    evidence: Mapping[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.device.shape[0]
        for name in ("kind", "ts_ms", "score"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, device has {n}")
        for name, arr in self.evidence.items():
            if arr.shape[0] != n:
                raise ValueError(f"evidence {name!r} has {arr.shape[0]} rows, device has {n}")

    def __len__(self) -> int:
        return int(self.device.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros(0, np.int32),
            np.zeros(0, np.uint8),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            {},
        )

    @classmethod
    def of(
        cls,
        kind: DetectionKind,
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        score: npt.ArrayLike,
        **evidence: npt.ArrayLike,
    ) -> Detections:
        """Detections of a single kind; scalars in ``score``/evidence are broadcast."""
        dev = np.asarray(device, dtype=np.int32).reshape(-1)
        n = dev.shape[0]
        return cls(
            dev,
            np.full(n, kind.code, dtype=np.uint8),
            np.broadcast_to(np.asarray(ts_ms, dtype=np.int64), (n,)).copy(),
            np.clip(np.broadcast_to(np.asarray(score, dtype=np.float32), (n,)), 0, 1).copy(),
            {
                k: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy()
                for k, v in evidence.items()
            },
        )

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        names = sorted({k for p in parts for k in p.evidence})
        evidence = {
            k: np.concatenate([p.evidence.get(k, np.full(len(p), np.nan)) for p in parts])
            for k in names
        }
        return cls(
            np.concatenate([p.device for p in parts]),
            np.concatenate([p.kind for p in parts]),
            np.concatenate([p.ts_ms for p in parts]),
            np.concatenate([p.score for p in parts]),
            evidence,
        )

    def take(self, rows: npt.NDArray[Any]) -> Detections:
        return Detections(
            self.device[rows],
            self.kind[rows],
            self.ts_ms[rows],
            self.score[rows],
            {k: v[rows] for k, v in self.evidence.items()},
        )

    def rows(self) -> list[dict[str, Any]]:
        """One dict per detection, evidence without NaNs: for rules and humans, not hot paths."""
        out = []
        ev = {k: v.tolist() for k, v in self.evidence.items()}
        for i, (d, k, t, s) in enumerate(
            zip(
                self.device.tolist(),
                self.kind.tolist(),
                self.ts_ms.tolist(),
                self.score.tolist(),
                strict=True,
            )
        ):
            evidence = {name: col[i] for name, col in ev.items() if col[i] == col[i]}
            out.append(
                {
                    "device": d,
                    "kind": DetectionKind.from_code(k),
                    "ts_ms": t,
                    "score": s,
                    "evidence": evidence,
                }
            )
        return out
