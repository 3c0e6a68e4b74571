"""Pending rows of one device kind, between receipt and flush.

Two ways in, because the two payload families cost differently:

- per-device JSON (the integrator path, one reading per message) costs a Python call per
  message no matter what, so ``add_device_message`` does the least possible work: one
  ``orjson.loads`` and a few list appends. Type checks and numeric conversion happen at
  flush time, once per column over thousands of rows (``DeviceRows.columns``);
- gateway batches are decoded at once by ``gridwatch.contract`` into numpy columns.

Both end up as ``RawRows``: columns in arrival order, with a row code (0 = fine so far)
and the message each row came from, which is what ``ingest.validate`` judges.
The conversion reproduces ``gridwatch.contract.decode_device_json`` row for row;
``tests/ingest/test_rows.py`` checks that against the contract with hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from gridwatch.contract import MAX_TS_MS, RowError, decode_binary
from gridwatch.domain import FIELDS, DeviceKind

ABSENT: Final = object()
"""Marks a key missing from a JSON object (distinct from an explicit ``null``)."""

_NUMERIC_TYPES: Final = frozenset({float, int, bool, type(None)})
_INT_ONLY: Final = frozenset({int})


@dataclass(slots=True)
class RawRows:
    """Rows of one kind awaiting judgement, in arrival order.

    ``msg`` is the message sequence number of each row (rows of one message are
    contiguous); ``device`` the dense registry index (-1 unknown); ``topic_grid`` the
    grid index named by the topic (-1 when that grid is not in the registry);
    ``fields`` float64 (or the binary sender's dtype); ``code`` ``RowReason`` codes;
    ``bad_field`` 1 + the index of the field that failed, 0 when none is known.
    """

    kind: DeviceKind
    msg: npt.NDArray[np.int64]
    device: npt.NDArray[np.int32]
    topic_grid: npt.NDArray[np.int32]
    ts_ms: npt.NDArray[np.int64]
    fields: dict[str, npt.NDArray[Any]]
    code: npt.NDArray[np.uint8]
    bad_field: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.msg.shape[0])

    @classmethod
    def concat(cls, kind: DeviceKind, parts: list[RawRows]) -> RawRows:
        if len(parts) == 1:
            return parts[0]
        names = [s.name for s in FIELDS[kind]]
        return cls(
            kind,
            np.concatenate([p.msg for p in parts]),
            np.concatenate([p.device for p in parts]),
            np.concatenate([p.topic_grid for p in parts]),
            np.concatenate([p.ts_ms for p in parts]),
            {n: np.concatenate([p.fields[n] for p in parts]) for n in names},
            np.concatenate([p.code for p in parts]),
            np.concatenate([p.bad_field for p in parts]),
        )

    def take(self, rows: npt.NDArray[Any]) -> RawRows:
        return RawRows(
            self.kind,
            self.msg[rows],
            self.device[rows],
            self.topic_grid[rows],
            self.ts_ms[rows],
            {k: v[rows] for k, v in self.fields.items()},
            self.code[rows],
            self.bad_field[rows],
        )


class DeviceRows:
    """Per-device JSON readings of one kind, kept as Python lists until the flush.

    ``vals`` holds each reading's ``values`` object as orjson parsed it (or a non-dict,
    which becomes a ``missing_field`` row); nothing is converted per message.
    """

    __slots__ = ("device", "grid", "kind", "msg", "ts", "vals")

    def __init__(self, kind: DeviceKind) -> None:
        self.kind = kind
        self.msg: list[int] = []
        self.device: list[str] = []
        self.grid: list[int] = []
        self.ts: list[Any] = []
        self.vals: list[Any] = []

    def __len__(self) -> int:
        return len(self.msg)

    def clear(self) -> None:
        self.msg = []
        self.device = []
        self.grid = []
        self.ts = []
        self.vals = []

    def columns(self, index_of: Any) -> tuple[RawRows, int]:
        """The pending readings as columns, plus how many rows carried ignored keys.

        ``index_of`` maps an array of device ids to dense indexes (``Registry.index_of``).
        """
        n = len(self.msg)
        specs = FIELDS[self.kind]
        code = np.zeros(n, dtype=np.uint8)
        bad_field = np.zeros(n, dtype=np.uint8)
        vals = self.vals
        if set(map(type, vals)) != {dict}:
            vals = list(vals)
            for i, v in enumerate(vals):
                if type(v) is not dict:
                    vals[i] = {}
                    code[i] = RowError.MISSING_FIELD
        ts = _ts_column(self.ts, code)
        fields: dict[str, npt.NDArray[Any]] = {}
        present = np.zeros(n, dtype=np.int64)
        for pos, spec in enumerate(specs, start=1):
            col, none, nonnum = _value_column([v.get(spec.name) for v in vals])
            if spec.required:
                miss = none & (code == 0)
                code[miss] = RowError.MISSING_FIELD
                bad_field[miss] = pos
            bad = nonnum & (code == 0)
            code[bad] = RowError.NON_NUMERIC
            bad_field[bad] = pos
            present += ~none
            fields[spec.name] = col
        lens = np.fromiter(map(len, vals), dtype=np.int64, count=n)
        ignored = int(np.count_nonzero(lens > present))
        rows = RawRows(
            self.kind,
            np.array(self.msg, dtype=np.int64),
            index_of(np.array(self.device, dtype=np.str_)) if n else np.zeros(0, np.int32),
            np.array(self.grid, dtype=np.int32),
            ts,
            fields,
            code,
            bad_field,
        )
        return rows, ignored


def _ts_column(values: list[Any], code: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """Epoch-ms timestamps; anything but an in-range int/float marks the row ``bad_ts``.

    Rows already refused keep their code (the contract checks values first).
    """
    n = len(values)
    types = set(map(type, values))
    if types <= _INT_ONLY:
        try:
            ts = np.array(values, dtype=np.int64)
        except OverflowError:
            pass
        else:
            bad = ((ts <= -MAX_TS_MS) | (ts >= MAX_TS_MS)) & (code == 0)
            code[bad] = RowError.BAD_TS
            ts[bad] = 0
            return ts
    out = np.zeros(n, dtype=np.int64)
    for i, t in enumerate(values):
        if type(t) in (int, float) and abs(t) < MAX_TS_MS:
            out[i] = int(t)
        elif code[i] == 0:
            code[i] = RowError.BAD_TS
    return out


def _value_column(
    col: list[Any],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(values, is-None mask, non-numeric mask) of one field over all pending rows."""
    n = len(col)
    if set(map(type, col)) <= _NUMERIC_TYPES:
        try:
            arr = np.array(col, dtype=np.float64)
        except (OverflowError, TypeError, ValueError):
            pass
        else:
            if arr.shape == (n,):
                none = np.isnan(arr)  # JSON has no NaN: NaN here is a null or absent key
                return arr, none, np.zeros(n, dtype=np.bool_)
    arr = np.full(n, np.nan)
    none = np.zeros(n, dtype=np.bool_)
    nonnum = np.zeros(n, dtype=np.bool_)
    for i, v in enumerate(col):
        if v is None:
            none[i] = True
        elif type(v) in (int, float, bool):
            try:
                arr[i] = float(v)
            except OverflowError:
                nonnum[i] = True
        else:
            nonnum[i] = True
    return arr, none, nonnum


def batch_rows(
    kind: DeviceKind,
    msg: int,
    *,
    device: npt.NDArray[np.int32],
    topic_grid: int,
    ts_ms: npt.NDArray[np.int64],
    fields: dict[str, npt.NDArray[Any]],
    row_error: npt.NDArray[np.uint8],
) -> RawRows:
    """One decoded gateway batch as ``RawRows`` (no copies beyond the small index arrays)."""
    n = ts_ms.shape[0]
    return RawRows(
        kind,
        np.full(n, msg, dtype=np.int64),
        device,
        np.full(n, topic_grid, dtype=np.int32),
        ts_ms,
        fields,
        row_error.copy(),
        np.zeros(n, dtype=np.uint8),
    )


_Layout = tuple[list[tuple[str, "np.dtype[Any]", int]], int, int, int]
"""A validated ``GWB1`` header: (column name, dtype, offset)s, data end, padded end, n."""


class BinaryRows:
    """Binary gateway batches (``GWB1``) of one kind, kept as per-message column views.

    A district gateway message carries a handful of readings (~7 at real time), so the
    per-message numpy calls of ``decode_binary`` + ``batch_rows`` + an id lookup cost more
    than the rows do. Here a message costs a header-cache hit and one ``np.frombuffer``
    per column; the id lookup, the index columns and the concatenation run once per flush
    (``columns``). A header not seen before, or a payload that does not fit its header,
    goes through ``gridwatch.contract.decode_binary``, which raises the precise
    ``PayloadError``; the rows are the same, row for row (``tests/ingest/test_device_rows.py``).
    """

    __slots__ = ("_layouts", "device", "fields", "grid", "kind", "missing", "msg", "n", "ts")

    MAX_LAYOUTS: Final = 4096
    """Headers differ by row count and id width only: a few hundred per kind in practice."""

    def __init__(self, kind: DeviceKind) -> None:
        self.kind = kind
        self._layouts: dict[bytes, _Layout] = {}
        self.clear()

    def clear(self) -> None:
        self.msg: list[int] = []
        self.n: list[int] = []
        self.grid: list[int] = []
        self.device: list[npt.NDArray[Any]] = []
        self.ts: list[npt.NDArray[np.int64]] = []
        self.fields: dict[str, list[Any]] = {s.name: [] for s in FIELDS[self.kind]}
        self.missing: list[int] = []  # per message: MISSING_FIELD when a required one is

    def __len__(self) -> int:
        return len(self.msg)

    def add(self, msg: int, grid: int, payload: bytes) -> npt.NDArray[Any]:
        """Take one ``GWB1`` payload (raising ``PayloadError`` as ``decode_binary`` would);
        returns its device-id column (dead-letter details name the device)."""
        hlen = int.from_bytes(payload[4:8], "little")
        key = payload[4 : 8 + hlen]  # the length too: a truncated header never matches
        layout = self._layouts.get(key)
        if layout is None or not layout[1] <= len(payload) <= layout[2]:
            layout = self._learn(payload, key)
        cols, _, _, n = layout
        out = {
            name: np.frombuffer(payload, dtype=dtype, count=n, offset=offset)
            for name, dtype, offset in cols
        }
        ids = out["device"]
        if n == 0:
            return ids
        self.msg.append(msg)
        self.n.append(n)
        self.grid.append(grid)
        self.device.append(ids)
        self.ts.append(out["ts_ms"])
        missing = 0
        for spec in FIELDS[self.kind]:
            arr = out.get(spec.name)
            if arr is None:
                self.fields[spec.name].append(n)  # n NaNs, made at flush
                if spec.required:
                    missing = RowError.MISSING_FIELD
            else:
                self.fields[spec.name].append(arr)
        self.missing.append(missing)
        return ids

    def _learn(self, payload: bytes, key: bytes) -> _Layout:
        decode_binary(self.kind, payload)  # validates everything; raises precisely
        header = orjson.loads(key[4:])
        n = int(header["n"])
        cols: list[tuple[str, np.dtype[Any], int]] = []
        offset = end = 4 + len(key)
        for name, dt in header["cols"]:
            dtype = np.dtype(dt)
            cols.append((name, dtype, offset))
            end = offset + n * dtype.itemsize
            offset = end + (-(n * dtype.itemsize) % 8)
        layout: _Layout = (cols, end, offset, n)
        if len(self._layouts) >= self.MAX_LAYOUTS:
            self._layouts.clear()
        self._layouts[key] = layout
        return layout

    def columns(self, index_of: Any) -> RawRows:
        """The pending rows as one ``RawRows`` in arrival order (one id lookup)."""
        counts = np.array(self.n, dtype=np.int64)
        fields = {
            name: _concat([np.full(p, np.nan) if type(p) is int else p for p in parts])
            for name, parts in self.fields.items()
        }
        return RawRows(
            self.kind,
            np.repeat(np.array(self.msg, dtype=np.int64), counts),
            np.asarray(index_of(_concat(self.device)), dtype=np.int32),
            np.repeat(np.array(self.grid, dtype=np.int32), counts),
            _concat(self.ts),
            fields,
            np.repeat(np.array(self.missing, dtype=np.uint8), counts),
            np.zeros(int(counts.sum()), dtype=np.uint8),
        )


def _concat(parts: list[Any]) -> npt.NDArray[Any]:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
