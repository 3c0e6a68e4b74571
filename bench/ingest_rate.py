"""How fast one collector process takes in MQTT telemetry, against a bare paho subscriber.

Drain mode (``../shared/LIMITS.md``): the messages are first queued in the broker for
persistent sessions that are offline, then each subscriber connects and drains its queue
alone, so the figure is the subscriber's ceiling, not the publisher's. Every subscriber
drains the same messages from the same broker in the same run: a Mosquitto 2 started
by this script with ``deploy/mosquitto.conf`` (the shared broker's default queue limit of
1,000 messages would drop most of them). Rounds alternate bare / gridwatch; medians.

Figures (the last stdout line is one JSON object):

- ``bare_paho_msgs_per_s``: a paho 2 QoS 1 subscriber (MQTT 5, automatic PUBACK) that
  only counts per-device messages; the ceiling of paho on this machine.
- ``per_device_msgs_per_s``: ``gridwatch``'s ``MqttCollector`` on the same messages:
  parse, validate against the 480,000-device registry, micro-batch, hand to a sink,
  acknowledge after hand-off. ``per_device_ratio`` = the two divided (goal >= 0.8).
- ``batched_readings_per_s``: the collector draining 500-reading binary ``GWB1``
  gateway batches (goal >= 1 M readings/s); ``json_batch_readings_per_s`` the same
  with JSON batches; ``bare_paho_batch_msgs_per_s`` the bare subscriber on the binary
  batches.
- ``inprocess_*``: the collector core fed directly (no broker, no paho): what decoding,
  validation and batching cost by themselves.

    python bench/ingest_rate.py            # full run (a few minutes)
    python bench/ingest_rate.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import getpass
import multiprocessing as mp
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridwatch import contract
from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.config import IngestConfig
from ingest.mqtt import MqttCollector, MqttSettings
from sim.fleet import FleetSpec, build_fleet

SEED = 20261126
ROOT = "gw"
RECEIVE_MAXIMUM = 20_000
DEPLOY_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto.conf"


# -- broker ---------------------------------------------------------------------------


class Broker:
    """Mosquitto with the shipped configuration on a free loopback port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.dir = Path(tempfile.mkdtemp(prefix="gw-bench-mosquitto-"))
        lines = []
        for line in DEPLOY_CONF.read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key == "listener":
                line = f"listener {self.port} 127.0.0.1"
            elif key == "persistence":
                line = "persistence false"  # the drain is in memory either way
            elif key == "log_dest":
                line = f"log_dest file {self.dir / 'mosquitto.log'}"
            lines.append(line)
        lines.append(f"user {getpass.getuser()}")
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.dir / "mosquitto.conf")], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _client(client_id: str, protocol: str = "5") -> mqtt.Client:
    if protocol == "5":
        return mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv311,
        clean_session=False,
    )


def _connect(c: mqtt.Client, port: int, protocol: str) -> None:
    if protocol == "5":
        c.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
    else:
        c.connect("127.0.0.1", port)


def _connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def make_session(port: int, client_id: str, protocol: str = "5") -> None:
    """Create an offline persistent session subscribed to all telemetry at QoS 1."""
    c = _client(client_id, protocol)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    _connect(c, port, protocol)
    c.loop_start()
    c.subscribe([(f, 1) for f in contract.subscription_filters(None, ROOT)])
    if not done.wait(10):
        raise RuntimeError("subscribe timed out")
    c.disconnect()
    c.loop_stop()


def _publish_slice(port: int, messages: list[tuple[str, bytes]], worker: int) -> None:
    c = _client(f"bench-pub-{worker}-{time.time_ns()}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    acked = [0]
    cond = threading.Condition()

    def on_publish(*_: Any) -> None:
        with cond:
            acked[0] += 1
            cond.notify()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    for k, (topic, payload) in enumerate(messages):
        if k - acked[0] > 20_000:  # paho's packet ids wrap at 65,535: keep a bounded window
            with cond:
                cond.wait_for(lambda k=k: k - acked[0] <= 10_000, 30)
        c.publish(topic, payload, qos=1)
    with cond:
        cond.wait_for(lambda: acked[0] >= len(messages), 120)
    c.disconnect()
    c.loop_stop()


def publish(port: int, messages: list[tuple[str, bytes]], workers: int = 2) -> float:
    """Publish with ``workers`` processes (QoS 1, all acknowledged); returns seconds."""
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_publish_slice, args=(port, messages[w::workers], w))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("a publisher failed")
    return time.perf_counter() - t0


# -- the two subscribers ----------------------------------------------------------------


def drain_bare(port: int, client_id: str, n: int, protocol: str = "5") -> float:
    """Seconds for a bare paho subscriber to receive ``n`` queued messages."""
    c = _client(client_id, protocol)
    count = [0]
    t_first: list[float] = []

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if not count[0]:
            t_first.append(time.perf_counter())
        count[0] += 1

    c.on_message = on_message
    t0 = time.perf_counter()
    _connect(c, port, protocol)
    deadline = t0 + 600
    while count[0] < n:
        if c.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS or time.perf_counter() > deadline:
            raise RuntimeError(f"bare drain stopped at {count[0]} of {n}")
    dt = time.perf_counter() - t0
    c.loop(0.05)
    c.disconnect()
    c.loop(0.05)
    return dt


class CountingSink:
    def __init__(self) -> None:
        self.rows = 0
        self.done = threading.Event()
        self.target = 0

    def write(self, batch: ReadingBatch) -> None:
        self.rows += len(batch)
        if self.rows >= self.target:
            self.done.set()


def drain_gridwatch(
    port: int,
    client_id: str,
    registry: Registry,
    rows: int,
    cfg: IngestConfig,
    *,
    protocol: str = "5",
) -> tuple[float, Collector]:
    """Seconds for ``MqttCollector`` to hand ``rows`` readings to its sink."""
    sink = CountingSink()
    sink.target = rows
    collector = Collector(registry, sinks=[sink], config=cfg)
    settings = MqttSettings(
        port=port,
        client_id=client_id,
        session_expiry_s=3600,
        receive_maximum=RECEIVE_MAXIMUM,
        protocol=protocol,  # type: ignore[arg-type]
    )
    front = MqttCollector(collector, settings, contract.subscription_filters(None, ROOT))
    t0 = time.perf_counter()
    front.start()
    if not sink.done.wait(600):
        raise RuntimeError(f"gridwatch drain stopped at {sink.rows} of {rows} rows")
    dt = time.perf_counter() - t0
    front.stop()
    collector.close()
    if collector.rejected:
        raise RuntimeError(f"unexpected rejects: {dict(collector.rejected)}")
    return dt, collector


# -- workloads ------------------------------------------------------------------------


def device_messages(registry: Registry, n: int, now_ms: int) -> list[tuple[str, bytes]]:
    """``n`` per-device sewage readings (ThingsBoard shape), devices cycling, ts rising."""
    rng = np.random.default_rng(SEED)
    devs = registry.devices_of_kind(DeviceKind.SEWAGE)
    topics = [
        contract.telemetry_topic(
            registry.grid_of(d), "sewage", str(registry.device_ids[d]), root=ROOT
        )
        for d in devs.tolist()
    ]
    level = np.round(rng.uniform(0.2, 3.0, n), 3).tolist()
    tilt = np.round(rng.uniform(0, 2, n), 2).tolist()
    out = []
    for k in range(n):
        payload = orjson.dumps(
            {"ts": now_ms + k // len(topics), "values": {"level_m": level[k], "tilt_deg": tilt[k]}}
        )
        out.append((topics[k % len(topics)], payload))
    return out


def batch_messages(
    registry: Registry, n_msgs: int, rows: int, now_ms: int, fmt: str
) -> list[tuple[str, bytes]]:
    """``n_msgs`` gateway batches of ``rows`` sewage readings of one grid each."""
    rng = np.random.default_rng(SEED + 1)
    devs = registry.devices_of_kind(DeviceKind.SEWAGE)
    by_grid = [devs[registry.device_grid[devs] == g] for g in range(registry.grid_ids.size)]
    by_grid = [g for g in by_grid if g.size]
    encode = contract.encode_binary if fmt == "binary" else contract.encode_json_batch
    out = []
    for k in range(n_msgs):
        grid_devs = by_grid[k % len(by_grid)]
        reps = -(-rows // grid_devs.size)  # a grid has ~250 manholes: two readings each
        sel = np.tile(grid_devs, reps)[:rows]
        step = np.repeat(np.arange(reps), grid_devs.size)[:rows]
        g = str(registry.grid_ids[registry.device_grid[sel[0]]])
        payload = encode(
            DeviceKind.SEWAGE,
            registry.device_ids[sel],
            now_ms + (k // len(by_grid)) * reps + step,
            {
                "level_m": rng.uniform(0.2, 3.0, rows).astype(np.float32),
                "tilt_deg": rng.uniform(0, 2, rows).astype(np.float32),
                "rain_mmph": rng.uniform(0, 20, rows).astype(np.float32),
            },
        )
        out.append((contract.batch_topic(g, "sewage", root=ROOT), payload))
    return out


def inprocess_rate(
    registry: Registry, messages: list[tuple[str, bytes]], cfg: IngestConfig
) -> tuple[float, int]:
    """(seconds, rows) to push ``messages`` through ``Collector`` without a transport."""
    sink = CountingSink()
    c = Collector(registry, sinks=[sink], config=cfg, threaded=False)
    t0 = time.perf_counter()
    for topic, payload in messages:
        c.on_message(topic, payload, 1)
    c.flush()
    return time.perf_counter() - t0, sink.rows


# -- main -----------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    n_dev = 40_000 if quick else 200_000
    n_batch = 1_500 if quick else 6_000
    rounds = 1 if quick else 3
    t_start = time.perf_counter()
    registry = build_fleet(FleetSpec(n_devices=480_000, seed=SEED))
    cfg = IngestConfig(root=ROOT)
    now = time.time_ns() // 1_000_000
    hour = 3_600_000
    out: dict[str, Any] = {"bench": "ingest_rate", "quick": quick, "rounds": rounds}

    dev_msgs = device_messages(registry, n_dev, now - 3 * hour)
    bin_msgs = batch_messages(registry, n_batch, 500, now - 2 * hour, "binary")
    json_msgs = batch_messages(registry, max(n_batch // 4, 50), 500, now - hour, "json")
    dt, rows = inprocess_rate(registry, dev_msgs, cfg)
    out["inprocess_device_msgs_per_s"] = n_dev / dt
    dt, rows = inprocess_rate(registry, bin_msgs, cfg)
    out["inprocess_batched_readings_per_s"] = rows / dt

    broker = Broker()
    try:
        out["broker"] = f"mosquitto (own, {DEPLOY_CONF.name}, port {broker.port})"
        sessions = [f"bare-{r}" for r in range(rounds)] + [f"gw-{r}" for r in range(rounds)]
        for s in sessions:
            make_session(broker.port, s)
        out["publish_device_s"] = publish(broker.port, dev_msgs)
        bare, ours = [], []
        for r in range(rounds):
            bare.append(n_dev / drain_bare(broker.port, f"bare-{r}", n_dev))
            dt, _ = drain_gridwatch(broker.port, f"gw-{r}", registry, n_dev, cfg)
            ours.append(n_dev / dt)
        out["bare_paho_msgs_per_s"] = statistics.median(bare)
        out["per_device_msgs_per_s"] = statistics.median(ours)
        out["per_device_ratio"] = out["per_device_msgs_per_s"] / out["bare_paho_msgs_per_s"]
        out["per_device_runs"] = {"bare": bare, "gridwatch": ours}

        for s in sessions:
            make_session(broker.port, s)
        publish(broker.port, bin_msgs)
        bare_b, ours_b = [], []
        for r in range(rounds):
            bare_b.append(n_batch / drain_bare(broker.port, f"bare-{r}", n_batch))
            dt, _ = drain_gridwatch(broker.port, f"gw-{r}", registry, n_batch * 500, cfg)
            ours_b.append(n_batch * 500 / dt)
        out["bare_paho_batch_msgs_per_s"] = statistics.median(bare_b)
        out["batched_readings_per_s"] = statistics.median(ours_b)

        make_session(broker.port, "gw-json")
        publish(broker.port, json_msgs)
        dt, _ = drain_gridwatch(broker.port, "gw-json", registry, len(json_msgs) * 500, cfg)
        out["json_batch_readings_per_s"] = len(json_msgs) * 500 / dt

        # MQTT 3.1.1: paho skips v5 properties (cheaper per message for both); the window
        # is the broker's max_inflight_messages (1,000 here), so flushes must stay smaller.
        cfg311 = IngestConfig(root=ROOT, flush_messages=400)
        for s in ("bare-311", "gw-311"):
            make_session(broker.port, s, "3.1.1")
        publish(broker.port, dev_msgs)
        out["bare_paho_v311_msgs_per_s"] = n_dev / drain_bare(
            broker.port, "bare-311", n_dev, "3.1.1"
        )
        dt, _ = drain_gridwatch(broker.port, "gw-311", registry, n_dev, cfg311, protocol="3.1.1")
        out["per_device_v311_msgs_per_s"] = n_dev / dt
        out["per_device_v311_ratio"] = (
            out["per_device_v311_msgs_per_s"] / out["bare_paho_v311_msgs_per_s"]
        )
    finally:
        broker.close()
    out["messages"] = {
        "per_device": n_dev,
        "binary_batches": n_batch,
        "json_batches": len(json_msgs),
    }
    out["wall_s"] = time.perf_counter() - t_start
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (under a minute)")
    args = ap.parse_args(argv)
    out = run(args.quick)
    for k, v in out.items():
        if isinstance(v, float):
            print(f"{k:32s} {v:,.1f}")
    print(orjson.dumps(out).decode())


_: Callable[..., Any] = main

if __name__ == "__main__":
    main()
