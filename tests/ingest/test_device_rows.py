"""The fast per-device path (``ingest.rows.DeviceRows`` + ``Collector._device_message``)
must decode exactly what ``gridwatch.contract.decode_device_json`` decodes."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gridwatch.clock import ManualClock
from gridwatch.contract import RowError, decode_device_json, telemetry_topic
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.errors import PayloadError
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.rows import DeviceRows
from ingest.sinks import MemoryDeadLetters, MemorySink

NOW = 1_780_000_000_000

_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just({"x": 1}),
    st.just([1.0]),
)
_ts = st.one_of(
    st.integers(NOW - 10**6, NOW + 10**6),
    st.floats(1e12, 2e12),
    st.integers(10**15, 10**16),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
)


def _item(kind: DeviceKind) -> st.SearchStrategy[Any]:
    names = [s.name for s in FIELDS[kind]] + ["extra", "ts"]
    values = st.dictionaries(st.sampled_from(names), _value, max_size=8)
    return st.one_of(
        st.fixed_dictionaries({"values": values}, optional={"ts": _ts}),  # ThingsBoard shape
        values,  # flat
        st.fixed_dictionaries({"values": _value, "ts": _ts}),  # values not an object
        _value,  # not an object at all
    )


def _payload(kind: DeviceKind) -> st.SearchStrategy[Any]:
    return st.one_of(_item(kind), st.lists(_item(kind), min_size=0, max_size=5))


def _judge_rows(registry: Registry, kind: DeviceKind, obj: Any) -> tuple[list[int], Any]:
    """Feed one message through DeviceRows the way the collector does; codes + columns."""
    clock = ManualClock(NOW)
    c = Collector(registry, clock=clock, threaded=False)
    dev = str(registry.device_ids[registry.devices_of_kind(kind)[0]])
    grid = registry.grid_of(registry.index(dev))
    c._device_message(0, kind, grid, dev, orjson.dumps(obj))
    rows, _ = c._dev_rows[kind].columns(registry.index_of)
    return rows.code.tolist(), rows


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(list(DeviceKind)))
def test_device_path_matches_the_contract(small_registry: Registry, data: Any, kind: Any) -> None:
    obj = data.draw(_payload(kind))
    try:
        wire = decode_device_json(kind, "d", orjson.dumps(obj), NOW)
    except PayloadError as exc:
        assert exc.reason == "bad_shape"
        try:
            _judge_rows(small_registry, kind, obj)
        except PayloadError as ours:
            assert ours.reason == "bad_shape"
        else:
            raise AssertionError("contract refused the shape, the fast path did not")
        return
    codes, rows = _judge_rows(small_registry, kind, obj)
    assert codes == wire.row_error.tolist()
    ok = wire.row_error == 0
    assert np.array_equal(rows.ts_ms[ok], wire.ts_ms[ok])
    for spec in FIELDS[kind]:
        assert np.array_equal(
            rows.fields[spec.name][ok], wire.fields[spec.name][ok], equal_nan=True
        )


def test_columns_convert_once_per_field_and_count_ignored_keys() -> None:
    rows = DeviceRows(DeviceKind.SEWAGE)
    for i, vals in enumerate(
        [
            {"level_m": 1.0, "tilt_deg": 2},
            {"level_m": 1.5, "tilt_deg": True, "firmware": "1.2"},  # extra key: ignored
            {"level_m": "high", "tilt_deg": 1.0},  # non-numeric
            {"tilt_deg": 1.0},  # missing required
            {"level_m": None, "tilt_deg": 1.0},  # null required
        ]
    ):
        rows.msg.append(i)
        rows.device.append("sw1")
        rows.grid.append(0)
        rows.ts.append(NOW + i)
        rows.vals.append(vals)
    raw, ignored = rows.columns(lambda ids: np.zeros(len(ids), np.int32))
    assert raw.code.tolist() == [
        0,
        0,
        RowError.NON_NUMERIC,
        RowError.MISSING_FIELD,
        RowError.MISSING_FIELD,
    ]
    assert raw.bad_field.tolist() == [0, 0, 1, 1, 1]
    assert raw.fields["tilt_deg"].tolist() == [2.0, 1.0, 1.0, 1.0, 1.0]
    assert np.isnan(raw.fields["rain_mmph"]).all()
    assert ignored == 2  # the extra key and the explicit null


def test_flat_object_without_ts_is_stamped_with_receipt_time(small_registry: Registry) -> None:
    clock = ManualClock(NOW)
    sink = MemorySink()
    c = Collector(small_registry, sinks=[sink], clock=clock, threaded=False)
    i = int(small_registry.devices_of_kind(DeviceKind.ELEVATOR)[0])
    topic = telemetry_topic(
        small_registry.grid_of(i), "elevator", str(small_registry.device_ids[i])
    )
    payload = (
        b'{"position_m": 0, "speed_mps": 0, "vibration_mps2": 0.08, "door_open": true, '
        b'"occupancy": 2}'
    )
    c.on_message(topic, payload)
    clock.advance(0.01)
    c.flush()
    batch = sink.of_kind(DeviceKind.ELEVATOR)
    assert batch.ts_ms.tolist() == [NOW]
    assert batch.fields["door_open"].tolist() == [1.0]
    assert np.isnan(batch.fields["load_kg"][0])


def test_every_contract_shape_is_accepted(small_registry: Registry) -> None:
    clock = ManualClock(NOW)
    sink, dead = MemorySink(), MemoryDeadLetters()
    c = Collector(small_registry, sinks=[sink], dead_letters=dead, clock=clock, threaded=False)
    i = int(small_registry.devices_of_kind(DeviceKind.HIGHFALL)[0])
    topic = telemetry_topic(
        small_registry.grid_of(i), "highfall", str(small_registry.device_ids[i])
    )
    track = [
        {"ts": NOW - 400, "values": {"track_id": 17, "height_m": 40.0, "horizontal_m": 3.1}},
        {"ts": NOW - 200, "values": {"track_id": 17, "height_m": 39.8, "horizontal_m": 3.1}},
        {"ts": NOW, "values": {"track_id": 17, "height_m": 39.2, "horizontal_m": 3.1, "end": 1}},
    ]
    c.on_message(topic, orjson.dumps(track))
    c.on_message(topic, orjson.dumps({"ts": NOW + 1, "values": {"track_id": 0}}))
    c.on_message(topic, orjson.dumps({"ts": NOW + 2, "track_id": 0}))
    c.flush()
    batch = sink.of_kind(DeviceKind.HIGHFALL)
    assert batch.ts_ms.tolist() == [NOW - 400, NOW - 200, NOW, NOW + 1, NOW + 2]
    assert batch.fields["track_id"].dtype == np.int64
    assert batch.fields["track_id"].tolist() == [17, 17, 17, 0, 0]
    assert batch.fields["end"].tolist()[2] == 1.0
    assert dead.letters == []


# -- binary gateway batches: BinaryRows must decode what decode_binary decodes ------------


def _gwb1(kind: DeviceKind, ids: list[bytes], ts: list[int], drop: str | None = None) -> bytes:
    from gridwatch.contract import encode_binary

    n = len(ids)
    fields = {s.name: np.arange(n, dtype=np.float64) + 0.5 for s in FIELDS[kind] if s.name != drop}
    return encode_binary(kind, np.array(ids, dtype="S"), np.array(ts, dtype=np.int64), fields)


def _binary_rows_or_error(kind: DeviceKind, rows: Any, payload: bytes) -> Any:
    try:
        rows.add(7, 3, payload)
    except PayloadError as exc:
        return ("error", exc.reason)
    return "ok"


def _contract_or_error(kind: DeviceKind, payload: bytes) -> Any:
    from gridwatch.contract import decode_binary

    try:
        return decode_binary(kind, payload)
    except PayloadError as exc:
        return ("error", exc.reason)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_binary_rows_match_the_contract_decoder(small_registry: Registry, data: Any) -> None:
    """Same rows as decode_binary for valid payloads, the same reason for broken ones, also
    once the header is cached (a truncated or padded payload behind a known header)."""
    from ingest.ids import DeviceIds
    from ingest.rows import BinaryRows

    kind = data.draw(st.sampled_from(list(DeviceKind)))
    ids = [str(x).encode() for x in small_registry.device_ids[:40].tolist()] + [b"nope", b"x" * 9]
    rows = BinaryRows(kind)
    index_of = DeviceIds(small_registry)
    required = [s.name for s in FIELDS[kind] if s.required]
    for _ in range(data.draw(st.integers(1, 4))):
        n = data.draw(st.integers(0, 6))
        chosen = data.draw(st.lists(st.sampled_from(ids), min_size=n, max_size=n))
        drop = data.draw(st.sampled_from([None, *[s.name for s in FIELDS[kind]]]))
        payload = _gwb1(kind, chosen, list(range(NOW, NOW + n)), drop)
        cut = data.draw(st.sampled_from([0, 0, 0, -1, -8, -9, 1, 8, 9]))
        if cut < 0:
            payload = payload[:cut]
        elif cut > 0:
            payload = payload + b"\0" * cut
        expect = _contract_or_error(kind, payload)
        before = len(rows)
        got = _binary_rows_or_error(kind, rows, payload)
        if isinstance(expect, tuple):
            assert got == expect
            assert len(rows) == before  # nothing half-added
            continue
        assert got == "ok"
        assert len(rows) == before + (1 if n else 0)
        if not n:
            continue
        raw = rows.columns(index_of)
        tail = slice(len(raw) - n, len(raw))
        assert raw.msg[tail].tolist() == [7] * n
        assert raw.topic_grid[tail].tolist() == [3] * n
        assert raw.device[tail].tolist() == index_of(expect.device_ids).tolist()
        assert raw.ts_ms[tail].tolist() == expect.ts_ms.tolist()
        assert raw.code[tail].tolist() == expect.row_error.tolist()
        if drop in required:
            assert set(raw.code[tail].tolist()) == {int(RowError.MISSING_FIELD)}
        for name, col in expect.fields.items():
            np.testing.assert_array_equal(raw.fields[name][tail], col)
