"""PostgreSQL binary COPY payloads built from numpy columns, without a Python loop per row.

A binary COPY row is ``int16 field count`` then, per field, ``int32 byte length`` and the
big-endian value (length -1 and no bytes for NULL). With every field present, rows have
a fixed width, so a packed big-endian structured array *is* the payload. NaN becomes
NULL; since NULLs change a row's width, rows are grouped by their NULL pattern (row
order within one COPY does not matter) and each group is one fixed-width block.

>>> import numpy as np
>>> payload = encode_rows(
...     np.array([7], np.int32), np.array([946_684_800_000], np.int64),
...     [np.array([np.nan], np.float32)])
>>> payload[:11], len(payload)
(b'PGCOPY\\n\\xff\\r\\n\\x00', 47)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from storage.schema import PG_EPOCH_OFFSET_MS

HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"
_BE: Final = {"float32": ">f4", "float64": ">f8", "int64": ">i8", "int32": ">i4"}


def _block(
    device: npt.NDArray[np.int32],
    ts_us: npt.NDArray[np.int64],
    fields: Sequence[npt.NDArray[Any]],
    present: Sequence[bool],
) -> bytes:
    spec: list[tuple[str, str]] = [("n", ">i2"), ("ld", ">i4"), ("d", ">i4"), ("lt", ">i4")]
    spec.append(("t", ">i8"))
    for i, (arr, here) in enumerate(zip(fields, present, strict=True)):
        spec.append((f"l{i}", ">i4"))
        if here:
            spec.append((f"v{i}", _BE[arr.dtype.name]))
    rows = np.empty(device.shape[0], dtype=np.dtype(spec))
    rows["n"] = 2 + len(fields)
    rows["ld"] = 4
    rows["d"] = device
    rows["lt"] = 8
    rows["t"] = ts_us
    for i, (arr, here) in enumerate(zip(fields, present, strict=True)):
        rows[f"l{i}"] = arr.dtype.itemsize if here else -1
        if here:
            rows[f"v{i}"] = arr
    return rows.tobytes()


def encode_rows(
    device: npt.NDArray[np.int32],
    ts_ms: npt.NDArray[np.int64],
    fields: Sequence[npt.NDArray[Any]],
    *,
    header: bool = True,
) -> bytes:
    """The binary COPY payload of rows ``(device int4, ts timestamptz, *fields)``.

    ``fields`` are float32/float64 (NaN -> NULL) or int64 columns, in table order.
    With ``header=False`` only the row blocks are returned, for callers that stream
    several blocks into one COPY between ``HEADER`` and ``TRAILER``.
    """
    ts_us = (ts_ms.astype(np.int64, copy=False) - PG_EPOCH_OFFSET_MS) * 1000
    nan_cols = [
        (i, np.isnan(f)) for i, f in enumerate(fields) if f.dtype.kind == "f" and np.isnan(f).any()
    ]
    parts = [HEADER] if header else []
    if not nan_cols:
        parts.append(_block(device, ts_us, fields, [True] * len(fields)))
    else:
        pattern = np.zeros(device.shape[0], dtype=np.int64)
        for bit, (_, isnan) in enumerate(nan_cols):
            pattern |= isnan.astype(np.int64) << bit
        for code in np.unique(pattern).tolist():
            rows = np.flatnonzero(pattern == code)
            present = [True] * len(fields)
            for bit, (i, _) in enumerate(nan_cols):
                if code >> bit & 1:
                    present[i] = False
            parts.append(_block(device[rows], ts_us[rows], [f[rows] for f in fields], present))
    if header:
        parts.append(TRAILER)
    return b"".join(parts)
