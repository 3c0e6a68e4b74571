"""MessageEncoder: how readings are cut into contract messages; BrokerUrl parsing."""

from __future__ import annotations

import numpy as np
import pytest

from gridwatch import contract
from gridwatch.batch import ReadingBatch
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry
from sim.engine import FleetSim, SimSpec
from sim.publish import BrokerUrl, MessageEncoder, PayloadFormat


@pytest.fixture(scope="module")
def batches(small_registry: Registry) -> list[ReadingBatch]:
    sim = FleetSim(small_registry, SimSpec(seed=3, fault_scale=30, warmup_s=0))
    sim.advance(sim.now_ms + 600_000)
    return sim.advance(sim.now_ms + 120_000)


@pytest.mark.parametrize("fmt", list(PayloadFormat))
def test_messages_cover_every_reading_once_and_count_matches(
    small_registry: Registry, batches: list[ReadingBatch], fmt: PayloadFormat
) -> None:
    enc = MessageEncoder(small_registry, fmt, root="r", max_batch=100)
    for batch in batches:
        msgs = list(enc.messages(batch))
        assert len(msgs) == enc.count(batch) > 0
        assert sum(m.readings for m in msgs) == len(batch)
        seen = []
        for m in msgs:
            info = contract.parse_topic(m.topic, root="r")
            assert info.kind is batch.kind
            wire = contract.decode(info, m.payload, 0)
            assert len(wire) == m.readings
            if fmt is PayloadFormat.DEVICE:
                assert not info.is_batch and set(wire.device_ids.tolist()) == {info.device}
            else:
                assert info.is_batch and m.readings <= 100
                dev = small_registry.index_of(wire.device_ids)
                assert set(small_registry.grid_ids[small_registry.device_grid[dev]]) == {info.grid}
            seen.append(
                small_registry.index_of(wire.device_ids).astype(np.int64) * 10**13 + wire.ts_ms
            )
        got = np.sort(np.concatenate(seen))
        assert np.array_equal(got, np.sort(batch.device.astype(np.int64) * 10**13 + batch.ts_ms))


def test_a_device_keeps_time_order_across_messages(
    small_registry: Registry, batches: list[ReadingBatch]
) -> None:
    enc = MessageEncoder(small_registry, PayloadFormat.BINARY, max_batch=7)
    for batch in batches:
        last: dict[bytes, int] = {}
        for m in enc.messages(batch):
            wire = contract.decode(contract.parse_topic(m.topic), m.payload, 0)
            for d, t in zip(wire.device_ids.tolist(), wire.ts_ms.tolist(), strict=True):
                assert t > last.get(d, 0)
                last[d] = t


def test_empty_batches_give_no_messages(
    small_registry: Registry, batches: list[ReadingBatch]
) -> None:
    enc = MessageEncoder(small_registry)
    empty = batches[0].take(np.zeros(0, np.int64))
    assert list(enc.messages(empty)) == [] and enc.count(empty) == 0
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        MessageEncoder(small_registry, max_batch=0)


def test_broker_url() -> None:
    url = BrokerUrl.parse("mqtt://user:s3cret@broker.local:8883")
    assert (url.host, url.port, url.username, url.password) == (
        "broker.local",
        8883,
        "user",
        "s3cret",
    )
    assert "s3cret" not in repr(url) and "***" in repr(url)
    assert BrokerUrl.parse("127.0.0.1").port == 1883
    with pytest.raises(ConfigError, match="has no host"):
        BrokerUrl.parse("mqtt://:1883")
    with pytest.raises(ConfigError, match="bad port"):
        BrokerUrl.parse("mqtt://host:99999")
