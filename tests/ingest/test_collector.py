from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gridwatch.batch import ReadingBatch
from gridwatch.clock import ManualClock
from gridwatch.contract import (
    batch_topic,
    encode_binary,
    encode_json_batch,
    telemetry_topic,
)
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.config import IngestConfig
from ingest.metrics import IngestMetrics
from ingest.sinks import MemoryDeadLetters, MemorySink

NOW = 1_780_000_000_000


def _make(reg: Registry, **cfg: Any) -> tuple[Collector, MemorySink, MemoryDeadLetters, Any]:
    clock = ManualClock(NOW)
    sink, dead = MemorySink(), MemoryDeadLetters()
    c = Collector(
        reg,
        sinks=[sink],
        dead_letters=dead,
        config=IngestConfig(**cfg),
        clock=clock,
        metrics=IngestMetrics(CollectorRegistry()),
        threaded=False,
    )
    return c, sink, dead, clock


def _dev(reg: Registry, kind: DeviceKind, i: int = 0) -> tuple[int, str, str]:
    d = int(reg.devices_of_kind(kind)[i])
    return d, str(reg.device_ids[d]), reg.grid_of(d)


def _sewage(ts: int, level: float = 1.0) -> bytes:
    return orjson.dumps({"ts": ts, "values": {"level_m": level, "tilt_deg": 0.5}})


def test_flush_by_time_uses_the_injected_clock(small_registry: Registry) -> None:
    c, sink, _, clock = _make(small_registry, flush_interval_s=0.05)
    _, dev, grid = _dev(small_registry, DeviceKind.SEWAGE)
    c.on_message(telemetry_topic(grid, "sewage", dev), _sewage(NOW))
    c.poll()
    assert sink.rows() == 0
    assert c.next_flush_in() == pytest.approx(0.05)
    clock.advance(0.049)
    c.poll()
    assert sink.rows() == 0
    clock.advance(0.001)
    c.poll()
    assert sink.rows() == 1
    assert c.next_flush_in() is None


def test_flush_by_rows_and_by_messages(small_registry: Registry) -> None:
    reg = small_registry
    c, sink, _, _ = _make(reg, flush_rows=10, flush_messages=1000)
    grid = str(reg.grid_ids[0])
    mine = reg.devices_in_grids([grid])
    same_grid = reg.device_ids[mine[reg.kind[mine] == DeviceKind.SEWAGE.code][:12]].tolist()
    payload = encode_binary(
        DeviceKind.SEWAGE,
        same_grid,
        np.full(len(same_grid), NOW),
        {"level_m": np.ones(len(same_grid)), "tilt_deg": np.ones(len(same_grid))},
    )
    c.on_message(batch_topic(grid, "sewage"), payload)
    assert sink.rows() == len(same_grid) == 12  # >= flush_rows: flushed at once

    c2, sink2, _, _ = _make(reg, flush_rows=10_000, flush_messages=3)
    _, dev, grid = _dev(reg, DeviceKind.SEWAGE)
    for k in range(3):
        assert sink2.rows() == 0
        c2.on_message(telemetry_topic(grid, "sewage", dev), _sewage(NOW + k))
    assert sink2.rows() == 3


def test_arrival_order_is_kept_across_paths_and_flushes(small_registry: Registry) -> None:
    reg = small_registry
    c, sink, dead, clock = _make(reg)
    d, dev, grid = _dev(reg, DeviceKind.SEWAGE)
    topic = telemetry_topic(grid, "sewage", dev)
    c.on_message(topic, _sewage(NOW + 1))
    c.on_message(
        batch_topic(grid, "sewage"),
        encode_json_batch(
            DeviceKind.SEWAGE,
            [dev, dev],
            [NOW + 2, NOW + 3],
            {"level_m": [2, 3], "tilt_deg": [0, 0]},
        ),
    )
    c.on_message(topic, _sewage(NOW + 4, 4.0))
    c.flush()
    c.on_message(topic, _sewage(NOW + 5, 5.0))
    clock.advance(1)
    c.poll()
    batch = sink.of_kind(DeviceKind.SEWAGE)
    assert batch.device.tolist() == [d] * 5
    assert batch.ts_ms.tolist() == [NOW + i for i in range(1, 6)]
    assert batch.fields["level_m"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert dead.letters == []


def test_good_rows_of_a_partly_bad_batch_are_kept(small_registry: Registry) -> None:
    reg = small_registry
    c, sink, dead, _ = _make(reg)
    grid = reg.grid_ids[0]
    mine = [int(i) for i in reg.devices_in_grids([grid]) if reg.kind[i] == DeviceKind.SEWAGE.code]
    ids = [str(reg.device_ids[i]) for i in mine[:6]]
    level = np.array([1.0, 99.0, 2.0, 98.0, 3.0, 4.0])
    tilt = np.array([0.0, 0.0, np.inf, 0.0, 0.0, 0.0])
    c.on_message(
        batch_topic(grid, "sewage"),
        encode_binary(
            DeviceKind.SEWAGE, ids, np.full(6, NOW), {"level_m": level, "tilt_deg": tilt}
        ),
    )
    c.flush()
    batch = sink.of_kind(DeviceKind.SEWAGE)
    assert batch.device.tolist() == [mine[0], mine[4], mine[5]]
    assert batch.fields["level_m"].tolist() == [1.0, 3.0, 4.0]
    by_reason = {d.reason: d for d in dead.letters}
    assert set(by_reason) == {"out_of_range", "not_finite"}
    assert by_reason["out_of_range"].rows == 2
    assert by_reason["out_of_range"].detail.startswith(
        f"2 of 6 rows; first: row 1, device {ids[1]!r}: level_m=99 outside [-0.5, 30]"
    )
    assert by_reason["not_finite"].rows == 1
    assert c.rejected == {"out_of_range": 2, "not_finite": 1}


def test_message_level_rejects_are_dead_lettered_with_excerpt(small_registry: Registry) -> None:
    reg = small_registry
    c, _, dead, _ = _make(reg, max_payload_bytes=100)
    _, dev, grid = _dev(reg, DeviceKind.SEWAGE)
    topic = telemetry_topic(grid, "sewage", dev)
    big = b"[" + b" " * 2000 + b"]"
    c.on_message(topic, big)
    c.on_message(topic, b"\xff\xfe\x00")
    c.on_message(topic, b'{"ts": 1,')
    c.on_message(topic, b"[]")
    c.on_message(f"gw/v1/{grid}/sewage/{dev}/status", b"{}")
    c.on_message(batch_topic(grid, "sewage"), b"GWB1\x00")
    c.flush()
    assert [d.reason for d in dead.letters] == [
        "oversize",
        "not_utf8",
        "not_json",
        "bad_shape",
        "bad_topic",
        "bad_binary",
    ]
    assert len(dead.letters[0].excerpt) == 512  # bounded excerpt of a 2 kB payload
    assert dead.letters[0].received_ms == NOW
    assert all(d.topic for d in dead.letters)


def test_metrics_count_on_the_registry_passed_in(small_registry: Registry) -> None:
    reg = small_registry
    prom = CollectorRegistry()
    c = Collector(
        reg,
        config=IngestConfig(),
        clock=ManualClock(NOW),
        metrics=IngestMetrics(prom),
        threaded=False,
    )
    _, dev, grid = _dev(reg, DeviceKind.SEWAGE)
    topic = telemetry_topic(grid, "sewage", dev)
    c.on_message(topic, _sewage(NOW))
    c.on_message(topic, _sewage(NOW))  # duplicate
    c.on_message(topic, b"nope")
    c.flush()

    def value(name: str, **labels: str) -> float:
        v = prom.get_sample_value(name, labels)
        assert v is not None, name
        return v

    assert value("gridwatch_ingest_messages_total", path="device") == 3
    assert value("gridwatch_ingest_readings_total", kind="sewage") == 1
    assert value("gridwatch_ingest_rejected_readings_total", reason="duplicate") == 1
    assert value("gridwatch_ingest_rejected_readings_total", reason="not_json") == 1
    assert value("gridwatch_ingest_dead_letters_total", reason="duplicate") == 1
    assert value("gridwatch_ingest_flushes_total") == 1
    assert value("gridwatch_ingest_batch_latency_seconds_count") == 1
    assert value("gridwatch_ingest_queue_depth") == 0


def test_duplicates_can_be_counted_without_dead_letter_records(small_registry: Registry) -> None:
    c, sink, dead, _ = _make(small_registry, dead_letter_duplicates=False)
    _, dev, grid = _dev(small_registry, DeviceKind.SEWAGE)
    for _ in range(3):
        c.on_message(telemetry_topic(grid, "sewage", dev), _sewage(NOW))
    c.flush()
    assert sink.rows() == 1
    assert dead.letters == []
    assert c.rejected == {"duplicate": 2}


def test_tokens_follow_their_flush_and_forgetting_starts_a_new_epoch(
    small_registry: Registry,
) -> None:
    c, _, _, _ = _make(small_registry)
    done: list[Any] = []
    c.set_ack_handler(done.append)
    _, dev, grid = _dev(small_registry, DeviceKind.SEWAGE)
    topic = telemetry_topic(grid, "sewage", dev)
    c.on_message(topic, _sewage(NOW), token=1)
    c.on_message(topic, b"bad", token=2)  # a dead-lettered message is acknowledged too
    c.on_message(topic, _sewage(NOW + 1))  # QoS 0: no token
    c.flush()
    c.on_message(topic, _sewage(NOW + 2), token=3)
    assert c.forget_tokens() == 1
    c.on_message(topic, _sewage(NOW + 3), token=4)
    c.flush()
    assert [(f.tokens, f.epoch) for f in done] == [([1, 2], 0), ([4], 1)]


def test_last_ts_seed_refuses_what_a_previous_run_stored(small_registry: Registry) -> None:
    reg = small_registry
    d, dev, grid = _dev(reg, DeviceKind.SEWAGE)
    seed = np.full(len(reg), np.iinfo(np.int64).min, dtype=np.int64)
    seed[d] = NOW + 5
    sink = MemorySink()
    c = Collector(reg, sinks=[sink], clock=ManualClock(NOW), threaded=False, last_ts_ms=seed)
    for k in (4, 5, 6):
        c.on_message(telemetry_topic(grid, "sewage", dev), _sewage(NOW + k))
    c.flush()
    assert sink.of_kind(DeviceKind.SEWAGE).ts_ms.tolist() == [NOW + 6]
    with pytest.raises(ValueError, match="last_ts_ms has shape"):
        Collector(reg, last_ts_ms=seed[:10])


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="one topic level"):
        IngestConfig(root="a/b")
    with pytest.raises(ValueError, match="flush_interval_s"):
        IngestConfig(flush_interval_s=0)
    with pytest.raises(ValueError, match="extra"):
        IngestConfig(flush_ms=5)  # type: ignore[call-arg]


# -- fuzz: the collector never raises, and everything it accepts is valid ---------------


def _json_values() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    )
    return st.recursive(
        leaf,
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
        ),
        max_leaves=12,
    )


@st.composite
def _messages(draw: Any, reg: Registry) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(list(DeviceKind)))
    d = draw(st.integers(0, len(reg) - 1))
    dev, grid = str(reg.device_ids[d]), reg.grid_of(d)
    topic = draw(
        st.sampled_from(
            [
                telemetry_topic(grid, kind, dev),
                batch_topic(grid, kind),
                f"gw/v1/{grid}/{kind.value}/{dev}",
                f"gw/v1/{grid}/toaster/batch",
                "gw/v2/x/sewage/batch",
            ]
        )
    )
    names = [s.name for s in FIELDS[kind]]
    n = draw(st.integers(0, 4))
    ids = [str(reg.device_ids[draw(st.integers(0, len(reg) - 1))]) for _ in range(n)]
    ts = [NOW + draw(st.integers(-(10**10), 10**10)) for _ in range(n)]
    cols = {}
    for spec in FIELDS[kind]:
        values = (
            st.integers(-5, 2**33)
            if spec.dtype == "int64"
            else st.floats(-1e3, 1e10) | st.just(np.nan)
        )
        cols[spec.name] = draw(st.lists(values, min_size=n, max_size=n))
    payload = draw(
        st.one_of(
            st.binary(max_size=64),
            _json_values().map(orjson.dumps),
            st.builds(
                lambda v, t: orjson.dumps({"ts": t, "values": v}),
                st.dictionaries(st.sampled_from(names), _json_values(), max_size=5),
                st.one_of(st.just(NOW), _json_values()),
            ),
            st.just(encode_json_batch(kind, ids, ts, cols)) if n else st.just(b"{}"),
            st.builds(
                lambda cut, flip: _mutate(
                    encode_binary(kind, np.array(ids, dtype="S"), ts, cols), cut, flip
                ),
                st.integers(0, 400),
                st.integers(0, 400),
            ),
        )
    )
    return topic, payload


def _mutate(payload: bytes, cut: int, flip: int) -> bytes:
    b = bytearray(payload[: max(cut, 8)] if cut < len(payload) else payload)
    if flip < len(b):
        b[flip] ^= 0x5A
    return bytes(b)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_never_raises_and_accepts_only_valid_rows(small_registry: Registry, data: Any) -> None:
    reg = small_registry
    c, sink, dead, clock = _make(reg, flush_messages=7)
    msgs = data.draw(st.lists(_messages(reg), min_size=1, max_size=15))
    for topic, payload in msgs:
        c.on_message(topic, payload, token=object())
        clock.advance(0.01)
    c.flush()
    assert c.messages == len(msgs)
    assert sum(d.rows for d in dead.letters) == sum(c.rejected.values())
    assert sink.rows() == c.accepted
    for batch in sink.batches:
        _assert_valid(reg, batch)


def _assert_valid(reg: Registry, batch: ReadingBatch) -> None:
    assert (batch.device >= 0).all()
    assert (reg.kind[batch.device] == batch.kind.code).all()
    assert (np.abs(batch.ts_ms - NOW) <= 7 * 86_400_000).all()
    for spec in FIELDS[batch.kind]:
        col = batch.fields[spec.name].astype(np.float64)
        assert col.dtype == np.float64
        present = ~np.isnan(col)
        if spec.required:
            assert present.all(), spec.name
        assert ((col[present] >= spec.lo) & (col[present] <= spec.hi)).all(), spec.name
    order = np.lexsort((batch.ts_ms, batch.device))
    same = batch.device[order][1:] == batch.device[order][:-1]
    assert (np.diff(batch.ts_ms[order])[same] > 0).all()  # strictly increasing per device


def test_a_bug_in_judging_dead_letters_the_flush_instead_of_crashing(
    small_registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import ingest.collector as collector_module

    c, sink, dead, _ = _make(small_registry)
    done: list[Any] = []
    c.set_ack_handler(done.append)
    _, dev, grid = _dev(small_registry, DeviceKind.SEWAGE)
    _, el, el_grid = _dev(small_registry, DeviceKind.ELEVATOR)
    real_judge = collector_module.judge

    def broken(raw: Any, *args: Any, **kwargs: Any) -> Any:
        if raw.kind is DeviceKind.SEWAGE:
            raise RuntimeError("boom")
        return real_judge(raw, *args, **kwargs)

    monkeypatch.setattr(collector_module, "judge", broken)
    c.on_message(telemetry_topic(grid, "sewage", dev), _sewage(NOW), token=1)
    elevator = {
        "position_m": 0,
        "speed_mps": 0,
        "vibration_mps2": 0,
        "door_open": 0,
        "occupancy": 0,
    }
    c.on_message(
        telemetry_topic(el_grid, "elevator", el),
        orjson.dumps({"ts": NOW, "values": elevator}),
        token=2,
    )
    c.flush()
    assert [(d.reason, d.detail) for d in dead.letters] == [
        ("internal_error", "RuntimeError('boom')")
    ]
    assert sink.of_kind(DeviceKind.ELEVATOR).ts_ms.tolist() == [NOW]  # other kinds unaffected
    assert done[0].tokens == [1, 2]
    assert "judging a flush failed" in caplog.text


def test_late_refusal_explains_the_horizon(small_registry: Registry) -> None:
    reg = small_registry
    d, dev, grid = _dev(reg, DeviceKind.SEWAGE)
    seed = np.full(len(reg), np.iinfo(np.int64).min, dtype=np.int64)
    seed[d] = NOW
    dead = MemoryDeadLetters()
    c = Collector(reg, dead_letters=dead, clock=ManualClock(NOW), threaded=False, last_ts_ms=seed)
    c.on_message(telemetry_topic(grid, "sewage", dev), _sewage(NOW - 1000))
    c.flush()
    (letter,) = dead.letters
    assert letter.reason == "late"
    assert f"is at or before {NOW}" in letter.detail
