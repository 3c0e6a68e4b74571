"""How fast the simulator generates and publishes readings.

Figures (the last stdout line is one JSON object):

- ``generate_readings_per_s``: the full 480,000-device fleet, ``FleetSim.advance`` only
  (no encoding, no I/O), one core.
- ``encode_binary_readings_per_s``: generation plus cutting into GWB1 batch messages.
- ``publish_batched_readings_per_s``: generation, GWB1 batches of <= 500 readings per
  grid and kind, published at QoS 1 with back-pressure to Mosquitto on 127.0.0.1:1883,
  until every message is acknowledged.
- ``publish_batched_qos0_readings_per_s``: the same at QoS 0.
- ``bare_paho_batched_readings_per_s``: the baseline, measured in the same run: one
  pre-encoded 500-reading GWB1 payload published over and over by a plain paho client
  (QoS 1, the same in-flight window); the ceiling of the broker and the library.

Goals (issue 2): generation >= 2 M readings/s, batched publish >= 1 M readings/s.

    python bench/sim_rate.py            # full run
    python bench/sim_rate.py --quick    # under 30 s
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gridwatch import contract
from gridwatch.domain import DeviceKind
from sim.engine import FleetSim, SimSpec
from sim.fleet import FleetSpec, build_fleet
from sim.publish import MessageEncoder, MqttPublisher, PayloadFormat
from sim.replay import Replay, ReplaySpec

SEED = 20261126
URL = "mqtt://127.0.0.1:1883"


def _warm_sim(registry: object, warm_s: float) -> FleetSim:
    sim = FleetSim(registry, SimSpec(seed=SEED))  # type: ignore[arg-type]
    sim.advance(sim.now_ms + int(warm_s * 1000))
    return sim


def bench_generate(registry: object, sim_s: float) -> dict[str, float]:
    sim = _warm_sim(registry, 30)
    n = 0
    t0 = time.perf_counter()
    end = sim.now_ms + int(sim_s * 1000)
    while sim.now_ms < end:
        n += sum(len(b) for b in sim.advance(min(end, sim.now_ms + 10_000)))
    dt = time.perf_counter() - t0
    return {"generate_readings_per_s": n / dt, "generate_readings": n, "generate_wall_s": dt}


def bench_encode(registry: object, sim_s: float) -> dict[str, float]:
    sim = _warm_sim(registry, 30)
    enc = MessageEncoder(sim.registry, PayloadFormat.BINARY, "bench", 500)
    n = msgs = 0
    t0 = time.perf_counter()
    end = sim.now_ms + int(sim_s * 1000)
    while sim.now_ms < end:
        for b in sim.advance(min(end, sim.now_ms + 60_000)):
            n += len(b)
            for _ in enc.messages(b):
                msgs += 1
    dt = time.perf_counter() - t0
    return {"encode_binary_readings_per_s": n / dt, "encode_messages": msgs}


def bench_publish(registry: object, sim_s: float, qos: int) -> dict[str, float]:
    sim = _warm_sim(registry, 30)
    root = f"gwbench{uuid.uuid4().hex[:8]}"
    spec = ReplaySpec(speed=None, duration_s=sim_s, root=root, step_s=60.0)
    t0 = time.perf_counter()
    with MqttPublisher(URL, qos=qos) as pub:
        stats = Replay(sim, pub, spec).run()
        if not pub.flush(120):
            raise RuntimeError("broker did not acknowledge every message")
    dt = time.perf_counter() - t0
    key = "publish_batched" if qos == 1 else "publish_batched_qos0"
    return {
        f"{key}_readings_per_s": stats.total_readings / dt,
        f"{key}_messages_per_s": stats.messages / dt,
        f"{key}_mean_readings_per_message": stats.total_readings / max(stats.messages, 1),
    }


def bench_bare_paho(n_messages: int) -> dict[str, float]:
    """Publish one 500-reading payload n times at QoS 1, window 100 in flight, 10k pending."""
    rng = np.random.default_rng(SEED)
    ids = np.array([f"sw{i:06d}" for i in range(500)], dtype="S")
    payload = contract.encode_binary(
        DeviceKind.SEWAGE,
        ids,
        np.arange(500, dtype=np.int64),
        {"level_m": rng.random(500), "tilt_deg": rng.random(500), "rain_mmph": rng.random(500)},
    )
    acked = 0
    cond = threading.Condition()

    def on_publish(*_: object) -> None:
        nonlocal acked
        with cond:
            acked += 1
            cond.notify_all()

    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    connected.wait(10)
    topic = f"gwbench{uuid.uuid4().hex[:8]}/v1/g/sewage/batch"
    t0 = time.perf_counter()
    for i in range(n_messages):
        if i - acked >= 10_000:
            with cond:
                while i - acked >= 10_000:
                    cond.wait(1)
        client.publish(topic, payload, qos=1)
    with cond:
        while acked < n_messages:
            cond.wait(1)
    dt = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return {"bare_paho_batched_readings_per_s": n_messages * 500 / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (under 30 s)")
    ap.add_argument("--devices", type=int, default=480_000)
    args = ap.parse_args()
    gen_s, pub_s, bare_n = (60, 60, 4_000) if args.quick else (600, 300, 20_000)
    t0 = time.perf_counter()
    registry = build_fleet(FleetSpec(n_devices=args.devices, seed=SEED))
    out: dict[str, object] = {"devices": args.devices, "quick": args.quick}
    out["fleet_build_s"] = time.perf_counter() - t0
    out |= bench_bare_paho(bare_n)
    out |= bench_generate(registry, gen_s)
    out |= bench_encode(registry, gen_s)
    out |= bench_publish(registry, pub_s, qos=1)
    out |= bench_publish(registry, pub_s, qos=0)
    out["publish_vs_bare"] = (
        out["publish_batched_readings_per_s"] / out["bare_paho_batched_readings_per_s"]  # type: ignore[operator]
    )
    out["total_wall_s"] = time.perf_counter() - t0
    for k, v in out.items():
        if isinstance(v, float):
            out[k] = round(v, 3) if v < 1000 else round(v)
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
