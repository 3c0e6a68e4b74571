"""The device registry in the database, and the stable integer key of every device.

Readings store ``device_key`` (int4), never the text id: it keeps the wide tables narrow
and their (device, ts) index small. A registry's dense index (``0..n-1``, the order of
the registry file) can change when the file is edited; the key never does. Callers map
with the array ``save_registry`` returns: ``keys[batch.device]``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gridwatch.errors import StorageError
from gridwatch.registry import COLUMNS, Registry

if TYPE_CHECKING:
    from storage.engine import Storage

_TEXT = ("device_id", "kind", "street", "community", "grid", "building")
_NUM = ("floors", "floor_height_m", "rated_speed_mps", "depth_m", "overflow_level_m", "interval_s")
_COLS = _TEXT + _NUM
_UPDATE = ", ".join(f"{c} = i.{c}" for c in _COLS[1:])


def _text_columns(registry: Registry) -> list[npt.NDArray[np.str_]]:
    """Registry columns as COPY text cells (``\\N`` for NULL), in ``_COLS`` order."""
    cols = registry.columns()
    out = [cols[c].astype(np.str_) for c in _TEXT]
    out[5] = np.where(out[5] == "", "\\N", out[5])  # no building: NULL, not ''
    floors = cols["floors"]
    out.append(np.where(floors < 0, "\\N", _as_text(floors)))
    for c in _NUM[1:]:
        col = cols[c]
        out.append(np.where(np.isnan(col), "\\N", _as_text(col)))
    return out


def _as_text(col: npt.NDArray[Any]) -> npt.NDArray[np.str_]:
    """``col`` as strings; formats each distinct value once (a fleet has few of them)."""
    uniq, inverse = np.unique(col, return_inverse=True)
    return uniq.astype(np.str_)[inverse]


def _param_rows(registry: Registry) -> list[tuple[Any, ...]]:
    cols = registry.columns()
    values: list[list[Any]] = [cols[c].tolist() for c in _TEXT]
    building = cols["building"].astype(object)
    building[building == ""] = None
    values[5] = building.tolist()
    floors = cols["floors"].astype(object)
    floors[cols["floors"] < 0] = None
    values.append(floors.tolist())
    for c in _NUM[1:]:
        col = cols[c].astype(np.float64).astype(object)
        col[np.isnan(cols[c])] = None
        values.append(col.tolist())
    return list(zip(range(len(registry)), *values, strict=True))


def save_registry(storage: Storage, registry: Registry) -> npt.NDArray[np.int32]:
    """Upsert every device and retire those no longer listed; returns keys by dense index.

    Keys of known devices are kept, new devices get new keys (in registry order), a
    retired device that comes back gets its old key (and its history) back. Rows that
    did not change are not rewritten, so saving the same 480k-device registry at every
    start-up is cheap.
    """
    now_ms = time.time_ns() // 1_000_000
    cols = ", ".join(_COLS)
    differs = " OR ".join(
        f"d.{c} IS DISTINCT FROM i.{c}" if storage.dialect == "postgres" else f"d.{c} IS NOT i.{c}"
        for c in _COLS[1:]
    )
    with storage.connection() as conn:
        conn.execute(
            "CREATE TEMP TABLE _devices_in (idx INTEGER, device_id TEXT, kind TEXT, "
            "street TEXT, community TEXT, grid TEXT, building TEXT, floors INTEGER, "
            "floor_height_m REAL, rated_speed_mps REAL, depth_m REAL, "
            "overflow_level_m REAL, interval_s REAL)"
        )
        if storage.dialect == "postgres":
            text = [np.arange(len(registry)).astype(np.str_), *_text_columns(registry)]
            block = "\n".join(map("\t".join, zip(*(c.tolist() for c in text), strict=True)))
            with conn.cursor() as cur, cur.copy(f"COPY _devices_in (idx, {cols}) FROM STDIN") as cp:
                if block:
                    cp.write(block + "\n")
        else:
            conn.executemany(
                f"INSERT INTO _devices_in (idx, {cols}) VALUES ({', '.join('?' * 13)})",
                _param_rows(registry),
            )
        conn.execute("CREATE UNIQUE INDEX _devices_in_id ON _devices_in (device_id)")
        conn.execute("ANALYZE _devices_in")
        conn.execute(
            storage.sql(
                f"UPDATE devices AS d SET {_UPDATE}, active = TRUE, updated_ms = %s "
                f"FROM _devices_in AS i WHERE d.device_id = i.device_id "
                f"AND (NOT d.active OR {differs})"
            ),
            (now_ms,),
        )
        conn.execute(
            storage.sql(
                f"INSERT INTO devices ({cols}, active, updated_ms) "
                f"SELECT {cols}, TRUE, %s FROM _devices_in i WHERE NOT EXISTS "
                "(SELECT 1 FROM devices d WHERE d.device_id = i.device_id) ORDER BY idx"
            ),
            (now_ms,),
        )
        conn.execute(
            storage.sql(
                "UPDATE devices SET active = FALSE, updated_ms = %s WHERE active AND NOT EXISTS "
                "(SELECT 1 FROM _devices_in i WHERE i.device_id = devices.device_id)"
            ),
            (now_ms,),
        )
        pairs = conn.execute(
            "SELECT i.idx, d.device_key FROM _devices_in i JOIN devices d USING (device_id)"
        ).fetchall()
        conn.execute("DROP TABLE _devices_in")
    keys = np.full(len(registry), -1, dtype=np.int32)
    if pairs:
        arr = np.asarray(pairs, dtype=np.int64)
        keys[arr[:, 0]] = arr[:, 1]
    return keys


def device_keys(storage: Storage, registry: Registry) -> npt.NDArray[np.int32]:
    """Keys of a registry's devices by dense index; raises if any device was never saved."""
    with storage.connection(readonly=True) as conn:
        rows = conn.execute("SELECT device_id, device_key FROM devices").fetchall()
    keys = np.full(len(registry), -1, dtype=np.int32)
    if rows:
        ids = np.array([r[0] for r in rows])
        idx = registry.index_of(ids)
        found = idx >= 0
        keys[idx[found]] = np.array([r[1] for r in rows], dtype=np.int32)[found]
    if (missing := np.flatnonzero(keys < 0)).size:
        first = str(registry.device_ids[missing[0]])
        raise StorageError(
            f"{missing.size} devices of the registry are not in the database (first: "
            f"{first!r}); call save_registry first"
        )
    return keys


def load_registry(storage: Storage, *, include_retired: bool = False) -> Registry:
    """The saved registry, in device-key order (so new devices come last)."""
    where = "" if include_retired else " WHERE active"
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(_COLS)} FROM devices{where} ORDER BY device_key"
        ).fetchall()
    cols: dict[str, Any] = {}
    for i, name in enumerate(_COLS):
        values = [r[i] for r in rows]
        if name == "building":
            cols[name] = np.array([v or "" for v in values], dtype=np.str_)
        elif name in _TEXT:
            cols[name] = np.array(values, dtype=np.str_)
        elif name == "floors":
            cols[name] = np.array([-1 if v is None else v for v in values], dtype=np.int16)
        else:
            cols[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
    if not rows:
        cols = {c: np.zeros(0, dtype=np.str_ if c in _TEXT else np.float32) for c in COLUMNS}
    return Registry(cols)
