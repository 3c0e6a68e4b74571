from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridwatch import contract as c
from gridwatch.domain import FIELDS, DeviceKind, Grade
from gridwatch.errors import PayloadError

NOW = 1_780_000_000_000


def _random_batch(kind: DeviceKind, n: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    ids = np.array([f"d{i:05d}" for i in rng.integers(0, 99_999, n)], dtype="S")
    ts = NOW + np.sort(rng.integers(0, 10**7, n)).astype(np.int64)
    fields = {}
    for spec in FIELDS[kind]:
        if spec.dtype == "int64":
            fields[spec.name] = rng.integers(0, 2**31, n)
        else:
            v = rng.uniform(spec.lo, spec.hi, n).astype(np.float32)
            if not spec.required:
                v[rng.random(n) < 0.3] = np.nan
            fields[spec.name] = v
    return ids, ts, fields


def _assert_same(wire: c.WireBatch, ids, ts, fields) -> None:
    assert np.array_equal(wire.device_ids.astype("S"), ids)
    assert np.array_equal(wire.ts_ms, ts)
    for name, col in fields.items():
        got = wire.fields[name].astype(col.dtype)
        assert np.array_equal(got, col, equal_nan=col.dtype.kind == "f"), name
    assert not wire.row_error.any()


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(list(DeviceKind)), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1)
)
def test_binary_round_trip(kind: DeviceKind, n: int, seed: int) -> None:
    ids, ts, fields = _random_batch(kind, n, seed)
    payload = c.encode_binary(kind, ids, ts, fields)
    _assert_same(c.decode(c.TopicInfo("g1", kind, None), payload, NOW), ids, ts, fields)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(list(DeviceKind)), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1)
)
def test_json_batch_round_trip(kind: DeviceKind, n: int, seed: int) -> None:
    ids, ts, fields = _random_batch(kind, n, seed)
    payload = c.encode_json_batch(kind, ids, ts, fields)
    _assert_same(c.decode(c.TopicInfo("g1", kind, None), payload, NOW), ids, ts, fields)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(list(DeviceKind)), n=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_device_json_round_trip(kind: DeviceKind, n: int, seed: int) -> None:
    _, ts, fields = _random_batch(kind, n, seed)
    payload = c.encode_device_json(ts, fields)
    wire = c.decode(c.TopicInfo("g1", kind, "dev1"), payload, NOW)
    _assert_same(wire, np.full(n, b"dev1"), ts, fields)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300), batch=st.booleans(), kind=st.sampled_from(list(DeviceKind)))
def test_decoder_raises_only_payload_error(payload: bytes, batch: bool, kind: DeviceKind) -> None:
    info = c.TopicInfo("g1", kind, None if batch else "d1")
    for data in (payload, c.BINARY_MAGIC + payload):
        try:
            wire = c.decode(info, data, NOW)
        except PayloadError as exc:
            assert exc.reason
        else:
            assert wire.ts_ms.shape == wire.row_error.shape


def test_thingsboard_shapes() -> None:
    info = c.TopicInfo("g1", DeviceKind.SEWAGE, "sw1")
    one = c.decode(info, b'{"ts": 1780000000000, "values": {"level_m": 1.5, "tilt_deg": 2}}', NOW)
    assert one.ts_ms.tolist() == [1780000000000]
    assert one.fields["level_m"].tolist() == [1.5]
    assert np.isnan(one.fields["rain_mmph"][0])
    many = c.decode(
        info,
        orjson.dumps(
            [
                {"ts": 1, "values": {"level_m": 1.0, "tilt_deg": 0}},
                {"ts": 2, "values": {"level_m": 2.0, "tilt_deg": 0, "rain_mmph": 12}},
            ]
        ),
        NOW,
    )
    assert many.ts_ms.tolist() == [1, 2]
    assert many.fields["rain_mmph"][1] == 12
    flat = c.decode(info, b'{"level_m": 0.7, "tilt_deg": 1.5}', NOW)
    assert flat.ts_ms.tolist() == [NOW]


def test_row_errors_keep_good_rows() -> None:
    info = c.TopicInfo("g1", DeviceKind.SEWAGE, None)
    payload = orjson.dumps(
        {
            "ts": [1, 2, "x", 4, 5],
            "device": ["a", "b", "c", 7, "e"],
            "values": {"level_m": [1.0, "high", 1.0, 1.0, None], "tilt_deg": [0, 0, 0, 0, 0]},
        }
    )
    wire = c.decode(info, payload, NOW)
    assert [c.RowError(e) for e in wire.row_error] == [
        c.RowError.OK,
        c.RowError.NON_NUMERIC,
        c.RowError.NON_NUMERIC,
        c.RowError.BAD_DEVICE_ID,
        c.RowError.MISSING_FIELD,
    ]
    assert wire.fields["level_m"][0] == 1.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe\x00", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[]", "bad_shape"),
        (b"42", "bad_shape"),
    ],
)
def test_unreadable_payloads_have_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as err:
        c.decode(c.TopicInfo("g1", DeviceKind.SEWAGE, "sw1"), payload, NOW)
    assert err.value.reason == reason


def test_binary_batch_of_wrong_kind_or_truncated() -> None:
    ids, ts, fields = _random_batch(DeviceKind.SEWAGE, 10, 1)
    payload = c.encode_binary(DeviceKind.SEWAGE, ids, ts, fields)
    with pytest.raises(PayloadError, match="wrong_kind"):
        c.decode(c.TopicInfo("g1", DeviceKind.ELEVATOR, None), payload, NOW)
    with pytest.raises(PayloadError, match="truncated"):
        c.decode(c.TopicInfo("g1", DeviceKind.SEWAGE, None), payload[:-20], NOW)


def test_topics() -> None:
    assert c.telemetry_topic("g1", "sewage", "sw1") == "gw/v1/g1/sewage/sw1/telemetry"
    assert c.parse_topic("gw/v1/g1/sewage/sw1/telemetry") == c.TopicInfo(
        "g1", DeviceKind.SEWAGE, "sw1"
    )
    assert c.parse_topic("x/v1/g1/elevator/batch", root="x").is_batch
    assert c.alert_topic("g1", Grade.RED) == "gw/v1/g1/alerts/red"
    for bad in (
        "gw/v1/g1/alerts/red",
        "gw/v1/g1/lift/d/telemetry",
        "gw/v2/g1/sewage/batch",
        "gw/v1/g1/sewage/d/status",
    ):
        with pytest.raises(PayloadError, match="bad_topic"):
            c.parse_topic(bad)
    assert c.subscription_filters(["g1"]) == ["gw/v1/g1/+/+/telemetry", "gw/v1/g1/+/batch"]
