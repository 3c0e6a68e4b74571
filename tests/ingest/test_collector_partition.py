from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from ingest_testkit import Publisher, child_env, gridwatch_cmd, wait_until

from gridwatch import contract
from gridwatch.domain import FIELDS, DeviceKind
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry
from ingest.partition import collector_filters, parse_partition, partition_grids, partition_of
from ingest.sinks import read_reading_log
from sim.fleet import FleetSpec, build_fleet


def test_parse_partition() -> None:
    assert parse_partition("2/3") == (2, 3)
    assert parse_partition(" 0 / 1 ") == (0, 1)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError, match="--partition"):
            parse_partition(bad)


def test_partitions_are_disjoint_cover_everything_and_are_stable() -> None:
    reg = build_fleet(FleetSpec(n_devices=20_000, devices_per_grid=100, seed=3))
    grids = reg.grid_ids.tolist()
    parts = [set(partition_grids(grids, k, 4)) for k in range(4)]
    assert set().union(*parts) == set(grids)
    assert sum(len(p) for p in parts) == len(grids)
    assert all(len(p) > 20 for p in parts)  # crc32 spreads 200 grids roughly evenly
    assert partition_of("s01c01g01", 3) == 0  # stable across processes and versions
    filters = collector_filters(reg, root="gw", partition=(1, 4))
    assert len(filters) == 2 * len(parts[1])
    assert f"gw/v1/{sorted(parts[1])[0]}/+/+/telemetry" in filters
    assert collector_filters(reg, root="gw") == ["gw/v1/+/+/+/telemetry", "gw/v1/+/+/batch"]
    with pytest.raises(ConfigError, match="not in the registry"):
        collector_filters(reg, root="gw", grids=["nope"])
    with pytest.raises(ConfigError, match="not both"):
        collector_filters(reg, root="gw", grids=grids[:1], partition=(0, 2))


def _children(args_of: list[list[str]]) -> list[tuple[subprocess.Popen[bytes], list[str]]]:
    out = []
    for args in args_of:
        proc = subprocess.Popen(
            gridwatch_cmd("ingest", *args),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=child_env(),
        )
        events: list[str] = []

        def read(p: subprocess.Popen[bytes] = proc, ev: list[str] = events) -> None:
            assert p.stderr is not None
            for raw in p.stderr:
                try:
                    ev.append(str(orjson.loads(raw).get("event")))
                except orjson.JSONDecodeError:
                    ev.append(raw.decode(errors="replace"))

        threading.Thread(target=read, daemon=True).start()
        out.append((proc, events))
    return out


@pytest.mark.mqtt
@pytest.mark.slow
def test_three_partitioned_collectors_split_the_fleet(
    mqtt_broker: tuple[str, int], mqtt_root: str, tmp_path: Path
) -> None:
    host, port = mqtt_broker
    reg = build_fleet(FleetSpec(n_devices=2000, devices_per_grid=100, seed=7))
    reg_path = tmp_path / "registry.csv"
    reg.to_csv(reg_path)
    outs = [tmp_path / f"part{k}.log" for k in range(3)]
    common = [
        "--mqtt",
        f"mqtt://{host}:{port}",
        "--registry",
        str(reg_path),
        "--root",
        mqtt_root,
        "--session-expiry-s",
        "0",
    ]
    children = _children(
        [
            [
                *common,
                "--partition",
                f"{k}/3",
                "--client-id",
                f"{mqtt_root}-p{k}",
                "--out",
                str(outs[k]),
            ]
            for k in range(3)
        ]
    )
    try:
        for proc, events in children:
            wait_until(
                lambda e=events, p=proc: "subscribed" in e or p.poll() is not None,
                60,
                "subscription",
            )
            assert proc.poll() is None, events
        now = time.time_ns() // 1_000_000
        messages = _one_reading_each(reg, mqtt_root, now)
        pub = Publisher(port)
        try:
            pub.publish_all(messages, timeout=60)
        finally:
            pub.close()

        def devices() -> list[set[str]]:
            sets = []
            for out in outs:
                ids: set[str] = set()
                for _kind, dev, _ts, _f in read_reading_log(out):
                    ids |= set(np.char.decode(dev, "ascii").tolist())
                sets.append(ids)
            return sets

        wait_until(lambda: sum(len(s) for s in devices()) >= len(reg), 60, "every device stored")
        for proc, _ in children:
            proc.send_signal(signal.SIGTERM)
        for proc, events in children:
            assert proc.wait(30) == 0, events
    finally:
        for proc, _ in children:
            if proc.poll() is None:
                proc.kill()
    parts = devices()
    assert all(parts)
    assert (
        parts[0].isdisjoint(parts[1])
        and parts[0].isdisjoint(parts[2])
        and parts[1].isdisjoint(parts[2])
    )
    assert set().union(*parts) == set(reg.device_ids.tolist())
    for k, part in enumerate(parts):  # each took exactly its grids
        grids = {reg.grid_of(reg.index(d)) for d in part}
        assert grids == set(partition_grids(reg.grid_ids.tolist(), k, 3))
    assert not any(Path(str(o) + ".deadletters.jsonl").read_bytes() for o in outs)


def _one_reading_each(reg: Registry, root: str, now: int) -> list[tuple[str, bytes]]:
    """A binary batch per grid and kind, plus a per-device message for every 7th device."""
    messages: list[tuple[str, bytes]] = []
    for kind in DeviceKind:
        devs = reg.devices_of_kind(kind)
        per_device = set(devs[::7].tolist())
        batch_devs = np.array([d for d in devs.tolist() if d not in per_device], dtype=np.int64)
        fields: dict[str, Any] = {s.name: np.full(devs.size, s.lo) for s in FIELDS[kind]}
        for g in np.unique(reg.device_grid[batch_devs]).tolist():
            sel = batch_devs[reg.device_grid[batch_devs] == g]
            payload = contract.encode_binary(
                kind,
                reg.device_ids[sel],
                np.full(sel.size, now),
                {k: v[: sel.size] for k, v in fields.items()},
            )
            messages.append((contract.batch_topic(str(reg.grid_ids[g]), kind, root=root), payload))
        for d in sorted(per_device):
            values = {s.name: s.lo for s in FIELDS[kind] if s.required}
            topic = contract.telemetry_topic(
                reg.grid_of(d), kind, str(reg.device_ids[d]), root=root
            )
            messages.append((topic, orjson.dumps({"ts": now, "values": values})))
    return messages
