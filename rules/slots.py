"""Sparse per-(device, alert kind) state held in growable numpy columns.

A dense ``n_devices x n_alert_kinds`` table would cost hundreds of MB for 480k devices and
be almost empty; only devices that ever had a detection get a row. Lookups are vectorised:
keys are kept sorted beside their row numbers and found with one ``searchsorted``.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

KEY_STRIDE: Final = 64
"""``key = device * KEY_STRIDE + alert_code``; there are fewer than 64 alert kinds."""

IDLE: Final = 0
PENDING: Final = 1
FIRING: Final = 2

UNBOUND: Final = -1
"""Alert id of a firing slot whose alert is being written (no id from the database yet)."""
SUPPRESSED: Final = -2
"""Alert id of a firing slot held back by a silence or an inhibition: no alert exists."""

_COLUMNS: Final = {
    "key": (np.int64, -1),
    "device": (np.int32, -1),
    "acode": (np.int8, -1),
    "rid": (np.int32, -1),
    "phase": (np.int8, IDLE),
    "pend_since": (np.int64, 0),
    "pend_sev": (np.int8, -1),
    "pend_count": (np.int64, 0),
    "last_dev": (np.int64, 0),
    "last_wall": (np.int64, 0),
    "first_dev": (np.int64, 0),
    "sev": (np.int8, -1),
    "alert_id": (np.int64, UNBOUND),
    "count_delta": (np.int64, 0),
    "value": (np.float64, np.nan),
    "dirty": (np.bool_, False),
}


class Slots:
    """Columns named as in ``_COLUMNS``; ``rows(keys)`` maps keys to rows, adding new ones."""

    key: npt.NDArray[np.int64]
    device: npt.NDArray[np.int32]
    acode: npt.NDArray[np.int8]
    rid: npt.NDArray[np.int32]
    phase: npt.NDArray[np.int8]
    pend_since: npt.NDArray[np.int64]
    pend_sev: npt.NDArray[np.int8]
    pend_count: npt.NDArray[np.int64]
    last_dev: npt.NDArray[np.int64]
    last_wall: npt.NDArray[np.int64]
    first_dev: npt.NDArray[np.int64]
    sev: npt.NDArray[np.int8]
    alert_id: npt.NDArray[np.int64]
    count_delta: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    dirty: npt.NDArray[np.bool_]

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0
        for name, (dtype, fill) in _COLUMNS.items():
            setattr(self, name, np.full(capacity, fill, dtype=dtype))
        self._sorted_keys = np.zeros(0, dtype=np.int64)
        self._sorted_rows = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def find(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Rows of ``keys``; -1 for keys without a row."""
        if self._sorted_keys.size == 0 or keys.size == 0:
            return np.full(keys.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._sorted_keys, keys)
        pos = np.minimum(pos, self._sorted_keys.size - 1)
        found = self._sorted_keys[pos] == keys
        return np.where(found, self._sorted_rows[pos], -1)

    def rows(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Rows of ``keys`` (unique), creating idle rows for keys seen for the first time."""
        rows = self.find(keys)
        new = rows < 0
        if new.any():
            new_keys = keys[new]
            m = new_keys.size
            self._grow(self.n + m)
            new_rows = np.arange(self.n, self.n + m, dtype=np.int64)
            self.key[new_rows] = new_keys
            self.device[new_rows] = (new_keys // KEY_STRIDE).astype(np.int32)
            self.acode[new_rows] = (new_keys % KEY_STRIDE).astype(np.int8)
            self.n += m
            rows[new] = new_rows
            all_keys = np.concatenate([self._sorted_keys, new_keys])
            all_rows = np.concatenate([self._sorted_rows, new_rows])
            order = np.argsort(all_keys, kind="stable")
            self._sorted_keys = all_keys[order]
            self._sorted_rows = all_rows[order]
        return rows

    def _grow(self, need: int) -> None:
        cap = self.key.size
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        for name, (dtype, fill) in _COLUMNS.items():
            old = getattr(self, name)
            arr: npt.NDArray[Any] = np.full(new_cap, fill, dtype=dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def active(self) -> npt.NDArray[np.int64]:
        """Rows that are pending or firing (the only ones a timer can change)."""
        return np.flatnonzero(self.phase[: self.n] != IDLE).astype(np.int64)

    def reset(self, rows: npt.NDArray[Any]) -> None:
        """Back to idle: the next detection starts a new for-duration and a new alert."""
        self.phase[rows] = IDLE
        self.pend_sev[rows] = -1
        self.pend_count[rows] = 0
        self.sev[rows] = -1
        self.alert_id[rows] = UNBOUND
        self.count_delta[rows] = 0
        self.dirty[rows] = False
        self.value[rows] = np.nan
