"""The MQTT wire contract: topics and payload codecs, implemented once for sim and ingest.

``docs/protocol.md`` is the integrator-facing description of this module; keep them in step.

Topics put the grid first after the version so that a worker can take a subset of grids
with plain topic filters (``gw/v1/{grid}/+/+/telemetry``), which is how the district is
split across collector processes and, with an MQTT cluster, across machines::

    {root}/v1/{grid}/{kind}/{device}/telemetry   one device's readings (JSON, ThingsBoard shapes)
    {root}/v1/{grid}/{kind}/batch                a gateway's columnar batch (JSON or binary GWB1)
    {root}/v1/{grid}/alerts/{grade}              alerts published by gridwatch (QoS 1)

Decoding never validates against the registry or the clock (ingest does that); it only
turns bytes into columns, and raises ``PayloadError`` with a reason code for bytes that
cannot be columns at all. Row-level problems found while decoding (a missing required
field, a string where a number belongs, a bad timestamp) come back per row in
``WireBatch.row_error`` so that the good rows of a partly bad batch are kept.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from gridwatch.domain import FIELDS, DeviceKind, Grade, field_names
from gridwatch.errors import PayloadError

DEFAULT_ROOT: Final = "gw"
VERSION: Final = "v1"
BINARY_MAGIC: Final = b"GWB1"
MAX_DEVICE_ID_BYTES: Final = 32
MAX_TS_MS: Final = 10**15
"""Timestamps are epoch milliseconds; anything this large is a unit mistake, not a time."""
_HEADER_LEN = struct.Struct("<I")
_FIELD_DTYPES: Final = frozenset({"<f4", "<f8", "<i8", "<i4", "<i2", "|u1", "|i1"})


class RowError(IntEnum):
    """Row-level decode problems; 0 means the row decoded cleanly."""

    OK = 0
    MISSING_FIELD = 1
    NON_NUMERIC = 2
    BAD_TS = 3
    BAD_DEVICE_ID = 4

    @property
    def reason(self) -> str:
        return self.name.lower()


# -- topics -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What a telemetry topic says: grid, kind, and the device for per-device topics."""

    grid: str
    kind: DeviceKind
    device: str | None  # None for a gateway batch topic

    @property
    def is_batch(self) -> bool:
        return self.device is None


def telemetry_topic(
    grid: str, kind: DeviceKind | str, device: str, root: str = DEFAULT_ROOT
) -> str:
    return f"{root}/{VERSION}/{grid}/{DeviceKind(kind).value}/{device}/telemetry"


def batch_topic(grid: str, kind: DeviceKind | str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/{VERSION}/{grid}/{DeviceKind(kind).value}/batch"


def alert_topic(grid: str, grade: Grade | str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/{VERSION}/{grid}/alerts/{Grade(grade).value}"


def subscription_filters(grids: Sequence[str] | None = None, root: str = DEFAULT_ROOT) -> list[str]:
    """Topic filters that receive the telemetry of ``grids`` (all grids when None).

    Two filters per grid; neither matches the alerts topics gridwatch itself publishes.
    """
    if grids is None:
        return [f"{root}/{VERSION}/+/+/+/telemetry", f"{root}/{VERSION}/+/+/batch"]
    out: list[str] = []
    for g in grids:
        out += [f"{root}/{VERSION}/{g}/+/+/telemetry", f"{root}/{VERSION}/{g}/+/batch"]
    return out


def parse_topic(topic: str, root: str = DEFAULT_ROOT) -> TopicInfo:
    """Split a telemetry topic; raises ``PayloadError('bad_topic')`` for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != root or parts[1] != VERSION:
        raise PayloadError("bad_topic", f"{topic!r} is not under {root}/{VERSION}/")
    try:
        kind = DeviceKind(parts[3])
    except ValueError:
        raise PayloadError("bad_topic", f"{topic!r}: unknown device kind {parts[3]!r}") from None
    if len(parts) == 5 and parts[4] == "batch":
        return TopicInfo(parts[2], kind, None)
    if len(parts) == 6 and parts[5] == "telemetry" and parts[4]:
        return TopicInfo(parts[2], kind, parts[4])
    raise PayloadError("bad_topic", f"{topic!r} is neither a telemetry nor a batch topic")


# -- decoded columns ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireBatch:
    """Columns decoded from one payload, before registry lookup and validation.

    ``device_ids`` is an ``S`` (bytes) or ``U`` array; ``fields`` holds every field of the
    kind (float64 from JSON, the sender's dtype from binary), NaN where absent.
    ``row_error`` holds ``RowError`` codes.
    """

    kind: DeviceKind
    device_ids: npt.NDArray[Any]
    ts_ms: npt.NDArray[np.int64]
    fields: Mapping[str, npt.NDArray[Any]]
    row_error: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])


# -- encoders ---------------------------------------------------------------------


def _as_columns(
    kind: DeviceKind, n: int, fields: Mapping[str, npt.ArrayLike]
) -> dict[str, npt.NDArray[Any]]:
    unknown = set(fields) - set(field_names(kind))
    if unknown:
        raise ValueError(f"{kind} has no fields {sorted(unknown)}")
    cols: dict[str, npt.NDArray[Any]] = {}
    for spec in FIELDS[kind]:
        if spec.name in fields:
            arr = np.asarray(fields[spec.name], dtype=spec.dtype)
            if arr.shape != (n,):
                raise ValueError(f"field {spec.name!r} has shape {arr.shape}, expected ({n},)")
            cols[spec.name] = arr
    return cols


def encode_binary(
    kind: DeviceKind,
    device_ids: npt.ArrayLike,
    ts_ms: npt.ArrayLike,
    fields: Mapping[str, npt.ArrayLike],
) -> bytes:
    """The compact gateway format (``GWB1``): a JSON header, then raw little-endian columns.

    Each column is padded to a multiple of 8 bytes so that the decoder's
    ``np.frombuffer`` views are aligned. Decoding is a handful of numpy views: no
    per-reading work at all, which is what lets one collector take millions of readings/s.
    """
    ids = np.asarray(device_ids)
    if ids.dtype.kind != "S":
        ids = np.char.encode(ids.astype(np.str_), "ascii")
    ts = np.ascontiguousarray(ts_ms, dtype="<i8")
    n = ts.shape[0]
    if ids.shape != (n,):
        raise ValueError(f"device_ids has shape {ids.shape}, expected ({n},)")
    cols: list[tuple[str, npt.NDArray[Any]]] = [("ts_ms", ts), ("device", ids)]
    cols += [
        (k, v.astype(v.dtype.newbyteorder("<"), copy=False))
        for k, v in _as_columns(kind, n, fields).items()
    ]
    header = orjson.dumps(
        {
            "kind": kind.value,
            "n": n,
            "cols": [[name, arr.dtype.str] for name, arr in cols],
        }
    )
    header += b" " * (-(len(BINARY_MAGIC) + _HEADER_LEN.size + len(header)) % 8)
    parts = [BINARY_MAGIC, _HEADER_LEN.pack(len(header)), header]
    for _, arr in cols:
        raw = np.ascontiguousarray(arr).tobytes()
        parts += [raw, b"\0" * (-len(raw) % 8)]
    return b"".join(parts)


def encode_json_batch(
    kind: DeviceKind,
    device_ids: npt.ArrayLike,
    ts_ms: npt.ArrayLike,
    fields: Mapping[str, npt.ArrayLike],
) -> bytes:
    """The JSON gateway format: ``{"ts": [...], "device": [...], "values": {field: [...]}}``.

    NaN becomes ``null`` (JSON has no NaN), which decodes back to NaN.
    """
    ids = np.asarray(device_ids)
    if ids.dtype.kind == "S":
        ids = np.char.decode(ids, "ascii")
    ts = np.asarray(ts_ms, dtype=np.int64)
    cols = _as_columns(kind, ts.shape[0], fields)
    return orjson.dumps(
        {"ts": ts, "device": ids.tolist(), "values": cols},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def encode_device_json(
    ts_ms: Sequence[int] | npt.NDArray[np.int64],
    values: Mapping[str, npt.ArrayLike],
) -> bytes:
    """Per-device readings in ThingsBoard's shape: one ``{"ts", "values"}`` or a list of them."""
    ts = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    cols = {k: np.asarray(v).reshape(-1) for k, v in values.items()}
    rows = []
    for i, t in enumerate(ts.tolist()):
        vals = {}
        for k, col in cols.items():
            v = col[i].item()
            if isinstance(v, float) and math.isnan(v):
                continue  # absent optional field
            vals[k] = v
        rows.append({"ts": t, "values": vals})
    return orjson.dumps(rows[0] if len(rows) == 1 else rows)


# -- decoders -------------------------------------------------------------------


def decode(info: TopicInfo, payload: bytes, now_ms: int) -> WireBatch:
    """Decode one message of either format. ``now_ms`` stamps flat per-device objects."""
    if info.is_batch:
        if payload[:4] == BINARY_MAGIC:
            return decode_binary(info.kind, payload)
        return decode_json_batch(info.kind, payload)
    if info.device is None:  # pragma: no cover - is_batch covers it
        raise PayloadError("bad_topic", "per-device topic without device")
    return decode_device_json(info.kind, info.device, payload, now_ms)


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("not_utf8", "payload is not UTF-8 text") from None
        raise PayloadError("not_json", f"payload is not JSON: {exc}") from None


def decode_binary(kind: DeviceKind, payload: bytes) -> WireBatch:
    if len(payload) < 8 or payload[:4] != BINARY_MAGIC:
        raise PayloadError("bad_binary", "binary batch must start with GWB1 and a header length")
    (hlen,) = _HEADER_LEN.unpack_from(payload, 4)
    if 8 + hlen > len(payload):
        raise PayloadError("bad_binary", f"header length {hlen} exceeds payload {len(payload)}")
    try:
        header = orjson.loads(payload[8 : 8 + hlen])
        hkind, n, cols = header["kind"], header["n"], header["cols"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise PayloadError("bad_binary", f"unreadable header: {exc!r}") from None
    if hkind != kind.value:
        raise PayloadError("wrong_kind", f"batch says kind {hkind!r}, topic says {kind.value!r}")
    if not isinstance(n, int) or n < 0 or not isinstance(cols, list):
        raise PayloadError("bad_binary", "header n must be a count and cols a list")
    offset = end = 8 + hlen
    arrays: dict[str, npt.NDArray[Any]] = {}
    for col in cols:
        if not (isinstance(col, list) and len(col) == 2 and all(isinstance(c, str) for c in col)):
            raise PayloadError("bad_binary", f"column entry {col!r} is not [name, dtype]")
        name, dt = col
        if name in arrays:
            raise PayloadError("bad_binary", f"column {name!r} appears twice")
        allowed = (
            (name == "ts_ms" and dt == "<i8")
            or (
                name == "device"
                and dt.startswith("|S")
                and dt[2:].isdigit()
                and 0 < int(dt[2:]) <= MAX_DEVICE_ID_BYTES
            )
            or (name in field_names(kind) and dt in _FIELD_DTYPES)
        )
        if not allowed:
            raise PayloadError("bad_binary", f"column {name!r} with dtype {dt!r} is not allowed")
        dtype = np.dtype(dt)
        size = n * dtype.itemsize
        if offset + size > len(payload):
            raise PayloadError("bad_binary", f"column {name!r} is truncated")
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=n, offset=offset)
        end = offset + size
        offset = end + (-size % 8)
    if not end <= len(payload) <= offset:
        raise PayloadError("bad_binary", f"{len(payload) - end} unexpected trailing bytes")
    if "ts_ms" not in arrays or "device" not in arrays:
        raise PayloadError("bad_binary", "batch needs ts_ms and device columns")
    row_error = np.zeros(n, dtype=np.uint8)
    fields: dict[str, npt.NDArray[Any]] = {}
    for spec in FIELDS[kind]:
        if spec.name in arrays:
            fields[spec.name] = arrays[spec.name]
        else:
            fields[spec.name] = np.full(n, np.nan)
            if spec.required:
                row_error[:] = RowError.MISSING_FIELD
    return WireBatch(kind, arrays["device"], arrays["ts_ms"], fields, row_error)


def _numeric_column(
    values: Any, n: int, row_error: npt.NDArray[np.uint8]
) -> npt.NDArray[np.float64]:
    """A JSON list as float64; bad entries flagged NON_NUMERIC without failing the batch."""
    if not isinstance(values, list) or len(values) != n:
        row_error[row_error == 0] = RowError.NON_NUMERIC
        return np.full(n, np.nan)
    try:
        arr = np.array(values, dtype=np.float64)
        if arr.shape == (n,):
            return arr
    except (TypeError, ValueError):
        pass
    # Slow path, only for a bad batch: find the offending entries.
    out = np.full(n, np.nan)
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, bool | int | float):
            out[i] = float(v)
        elif row_error[i] == 0:
            row_error[i] = RowError.NON_NUMERIC
    return out


def decode_json_batch(kind: DeviceKind, payload: bytes) -> WireBatch:
    obj = _loads(payload)
    if not isinstance(obj, dict) or "device" not in obj or "values" not in obj or "ts" not in obj:
        raise PayloadError(
            "bad_shape", 'batch must be {"ts": [...], "device": [...], "values": {...}}'
        )
    devices, values, ts = obj["device"], obj["values"], obj["ts"]
    if not isinstance(devices, list) or not isinstance(values, dict):
        raise PayloadError("bad_shape", '"device" must be a list and "values" an object')
    n = len(devices)
    row_error = np.zeros(n, dtype=np.uint8)
    ids = (
        np.array([d if isinstance(d, str) else "" for d in devices], dtype=np.str_)
        if n
        else np.zeros(0, dtype="U1")
    )
    bad_id = ids == ""
    row_error[bad_id] = RowError.BAD_DEVICE_ID
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        if not abs(ts) < MAX_TS_MS:
            raise PayloadError("bad_ts", f"batch timestamp {ts!r} is not epoch milliseconds")
        ts_arr = np.full(n, int(ts), dtype=np.int64)
    else:
        ts_f = _numeric_column(ts, n, row_error)
        bad_ts = ~(np.abs(ts_f) < MAX_TS_MS)
        row_error[bad_ts & (row_error == 0)] = RowError.BAD_TS
        ts_arr = np.where(bad_ts, 0, ts_f).astype(np.int64)
    fields: dict[str, npt.NDArray[Any]] = {}
    for spec in FIELDS[kind]:
        if spec.name in values:
            col = _numeric_column(values[spec.name], n, row_error)
        else:
            col = np.full(n, np.nan)
        if spec.required:
            row_error[np.isnan(col) & (row_error == 0)] = RowError.MISSING_FIELD
        fields[spec.name] = col
    return WireBatch(kind, ids, ts_arr, fields, row_error)


def decode_device_json(kind: DeviceKind, device: str, payload: bytes, now_ms: int) -> WireBatch:
    """ThingsBoard device-API shapes: ``{"ts", "values"}``, a list of those, or flat values."""
    obj = _loads(payload)
    if isinstance(obj, dict):
        items = [obj] if "values" in obj else [{"ts": obj.get("ts", now_ms), "values": obj}]
    elif isinstance(obj, list) and obj:
        items = obj
    else:
        raise PayloadError("bad_shape", "expected an object or a non-empty list of objects")
    specs = FIELDS[kind]
    n = len(items)
    ts = np.zeros(n, dtype=np.int64)
    row_error = np.zeros(n, dtype=np.uint8)
    cols = {s.name: np.full(n, np.nan) for s in specs}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("values"), dict):
            row_error[i] = RowError.MISSING_FIELD
            continue
        t = item.get("ts", now_ms)
        if isinstance(t, bool) or not isinstance(t, int | float) or not abs(t) < MAX_TS_MS:
            row_error[i] = RowError.BAD_TS
        else:
            ts[i] = int(t)
        vals = item["values"]
        for s in specs:
            v = vals.get(s.name)
            if v is None:
                if s.required and not row_error[i]:
                    row_error[i] = RowError.MISSING_FIELD
            elif isinstance(v, bool | int | float):
                cols[s.name][i] = float(v)
            elif not row_error[i]:
                row_error[i] = RowError.NON_NUMERIC
    ids = np.repeat(np.array([device]), n)
    return WireBatch(kind, ids, ts, cols, row_error)
