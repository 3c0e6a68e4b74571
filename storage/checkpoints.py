"""Detector checkpoints: a named dict of numpy arrays kept as one ``.npz`` blob.

Detectors' ``state()`` is exactly such a dict (1-D arrays sized to the registry), so a
checkpoint round-trips without knowing any detector. ``allow_pickle`` stays off both
ways: a checkpoint is data, never code.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gridwatch.errors import StorageError

if TYPE_CHECKING:
    from storage.engine import Storage

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def save_checkpoint(
    storage: Storage,
    name: str,
    arrays: Mapping[str, npt.NDArray[Any]],
    *,
    saved_ms: int | None = None,
) -> None:
    """Replace checkpoint ``name`` with ``arrays`` (object arrays are refused)."""
    if not name or len(name) > 200:
        raise ValueError(f"checkpoint name must be 1-200 characters, got {name!r}")
    for key, arr in arrays.items():
        if not _KEY.match(key):
            raise ValueError(f"checkpoint {name!r}: array name {key!r} is not an identifier")
        if np.asarray(arr).dtype.hasobject:
            raise ValueError(f"checkpoint {name!r}: array {key!r} has dtype object")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    blob = buf.getvalue()
    nbytes = sum(int(np.asarray(v).nbytes) for v in arrays.values())
    saved_ms = time.time_ns() // 1_000_000 if saved_ms is None else saved_ms
    query = (
        "INSERT INTO detector_checkpoints (name, saved_ms, arrays, nbytes, state) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
        "saved_ms = excluded.saved_ms, arrays = excluded.arrays, "
        "nbytes = excluded.nbytes, state = excluded.state"
    )
    with storage.connection() as conn:
        conn.execute(storage.sql(query), (name, saved_ms, len(arrays), nbytes, blob))


def load_checkpoint(storage: Storage, name: str) -> dict[str, npt.NDArray[Any]] | None:
    """The arrays saved under ``name``, or None if there is no such checkpoint."""
    with storage.connection(readonly=True) as conn:
        row = conn.execute(
            storage.sql("SELECT state FROM detector_checkpoints WHERE name = %s"), (name,)
        ).fetchone()
    if row is None:
        return None
    try:
        with np.load(io.BytesIO(bytes(row[0])), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise StorageError(f"checkpoint {name!r} is corrupt: {exc}") from exc


def checkpoint_names(storage: Storage) -> dict[str, tuple[int, int]]:
    """``name -> (saved_ms, nbytes)`` of every checkpoint."""
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(
            "SELECT name, saved_ms, nbytes FROM detector_checkpoints ORDER BY name"
        ).fetchall()
    return {str(n): (int(s), int(b)) for n, s, b in rows}
