"""End to end through the machine's Mosquitto and PostgreSQL: the district at real time,
then the highest speed-up the pipeline sustains.

One run, fixed seed:

0. **Baseline** (``baseline_broker_readings_per_s``): the same publisher flat out into a
   bare paho subscriber that only counts: what the broker and the publisher allow on this
   machine without any pipeline.
1. **Real time**: ``gridwatch run --workers 2`` on a fresh PostgreSQL schema; the
   simulated fleet (480,000 devices, ~50k readings/s: batched gateway topics, one message
   per grid and kind every 0.5 s, QoS 1) publishes at real time for 10 minutes. Faults
   start after 30 s, so red alerts give latency samples (device timestamp -> claimable,
   the pipeline's ``gridwatch_pipeline_alert_latency_seconds`` histogram).
2. **Speed-up**: the same publisher, same timeline, at x2, x4, x6, x8 (2 minutes each;
   pausing between steps until the pipeline has drained). A step is sustained when the
   backlog (readings published minus accepted) does not grow; ``max_speedup_sustained``
   is the last sustained one.

Backlog growth: least-squares slope of the backlog over the second half of a phase above
2 % of the offered rate, with the final backlog above two seconds of traffic; the same on
storage (accepted minus stored) with ten seconds of slack, since storage commits large
chunks behind ingest on purpose. CPU is per process group from /proc; peak RSS is the
largest ``VmHWM`` of the supervisor plus each worker.

The publisher stands for the district's ~14,000 gateways, which run on machines of their
own and choose their own MQTT version: here it publishes MQTT 3.1.1 at QoS 1 with
``sim.publish.GatewayPublisher``, a lean client (a third of paho's CPU per message) so
that load generation takes as little as possible of the 2 cores it shares with the
pipeline; its CPU is reported separately (``cpu_cores.publisher``). The pipeline's
collectors use ``mqtt.protocol`` (default 3.1.1; ``--protocol 5`` compares).

Usage: ``python bench/e2e.py [--quick] [--mqtt URL] [--pg URL] [--protocol 3.1.1|5]``
(``--quick``: 48,000 devices, 20 s real time, then x4 for 10 s: about a minute in all).
The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.testing import OwnBroker  # noqa: E402  (the shipped deploy/mosquitto.conf)

SEED = 20261126
STEP_WALL_S = 0.5
CLK = os.sysconf("SC_CLK_TCK")


# -- the publisher (a child process, driven over stdin) ---------------------------------


def publisher_main(args: argparse.Namespace) -> int:
    """Publish the simulated fleet; stdin commands ``speed X`` / ``pause`` / ``quit``;
    one progress JSON line per second on stdout."""
    from gridwatch.contract import DEFAULT_ROOT
    from sim.engine import FleetSim, SimSpec
    from sim.fleet import FleetSpec, build_fleet
    from sim.publish import GatewayPublisher, MessageEncoder, PayloadFormat

    reg = build_fleet(FleetSpec(n_devices=args.devices, seed=SEED))
    now_ms = time.time_ns() // 1_000_000
    sim = FleetSim(reg, SimSpec(seed=SEED, start_ms=now_ms, warmup_s=args.warmup_s))
    enc = MessageEncoder(reg, PayloadFormat.BINARY, args.root or DEFAULT_ROOT, 500)
    pub = GatewayPublisher(args.mqtt, max_pending=5_000)
    drip = _FaultDrip(sim) if args.warmup_s < 1e6 else None
    speed = 0.0
    readings = messages = 0
    anchor_wall, anchor_sim = time.monotonic(), sim.now_ms
    last_report = 0.0
    commands: queue.Queue[str] = queue.Queue()

    def read_commands() -> None:  # select() misses lines Python already buffered
        for line in sys.stdin:
            commands.put(line)
        commands.put("quit")

    threading.Thread(target=read_commands, name="bench-commands", daemon=True).start()
    print(json.dumps({"ready": True, "devices": len(reg)}), flush=True)
    quit_ = False
    try:
        while not quit_:
            while not commands.empty():
                cmd = commands.get().split()
                if not cmd or cmd[0] == "quit":
                    quit_ = True
                    break
                if cmd[0] == "speed":
                    speed = float(cmd[1])
                    wall_ms = time.time_ns() // 1_000_000
                    if speed == 1.0 and sim.now_ms < wall_ms:
                        sim.advance(wall_ms)  # skip what was "sent" before anyone listened
                elif cmd[0] == "pause":
                    speed = 0.0
                anchor_wall, anchor_sim = time.monotonic(), sim.now_ms
            t = time.monotonic()
            if speed > 0:
                target = anchor_sim + round((t - anchor_wall) * speed * 1000)
                if speed > 1e6:  # flat out: one 10 s step at a time
                    target = sim.now_ms + 10_000
                if target > sim.now_ms:
                    if drip is not None:
                        drip.before_step()
                    for batch in sim.advance(target):
                        readings += len(batch)
                        for msg in enc.messages(batch):
                            pub(msg.topic, msg.payload)
                            messages += 1
            pub.poll()  # send the step's tail, count acknowledgements, keep alive
            if t - last_report >= 1.0:
                last_report = t
                print(
                    json.dumps(
                        {
                            "t": time.time(),
                            "sim_ms": sim.now_ms,
                            "readings": readings,
                            "messages": messages,
                            "unacked": pub.unacked,
                            "speed": speed,
                            "faults": sim.book.n_faults,
                        }
                    ),
                    flush=True,
                )
            if speed <= 1e6:
                time.sleep(max(0.0, STEP_WALL_S - (time.monotonic() - t)))
    finally:
        pub.close()
    return 0


class _FaultDrip:
    """Red-alert faults every 10 simulated seconds (falling objects, displaced covers,
    trapped passengers), so even a one-minute run has latency samples; the simulator's own
    random faults come on top after its warm-up."""

    EVERY_MS = 10_000
    PLAN = (("highfall", "falling_object", 2), ("sewage", "cover_displaced", 1),
            ("elevator", "entrapment", 2))  # fmt: skip

    def __init__(self, sim: Any) -> None:
        from gridwatch.pipeline.feeder import DemoInjector

        self.sim = sim
        self.rng = np.random.default_rng([SEED, 99])
        self.injector = DemoInjector(sim, [])
        self.next_ms = sim.now_ms + 5_000
        self.order = 0

    def before_step(self) -> None:
        from gridwatch.domain import DeviceKind
        from sim.faults import FaultKind
        from sim.schedule import Event

        while self.sim.now_ms >= self.next_ms - self.injector.lead_ms:
            for kind, fault, n in self.PLAN:
                pool = self.sim.registry.devices_of_kind(DeviceKind(kind))
                for dev in self.rng.choice(pool, n, replace=False).tolist():
                    start = self.next_ms + int(self.rng.integers(0, self.EVERY_MS))
                    seed = int(self.rng.integers(0, 2**62))
                    ev = Event(start, self.order, dev, DeviceKind(kind), FaultKind(fault), seed)
                    self.injector.pending.append(ev)
                    self.order += 1
            self.injector.pending.sort()
            self.next_ms += self.EVERY_MS
        self.injector.before_step()


class Publisher:
    """The publisher child: commands in, progress lines collected by a reader thread."""

    def __init__(self, mqtt: str, root: str, devices: int, warmup_s: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--publisher",
                "--mqtt",
                mqtt,
                "--root",
                root,
                "--devices",
                str(devices),
                "--warmup-s",
                str(warmup_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self.last: dict[str, Any] = {}
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bench-publisher", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if obj.get("ready"):
                self.ready.set()
            else:
                self.last = obj

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.send("quit")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the bare baseline -------------------------------------------------------------------


def baseline(mqtt: str, devices: int, seconds: float) -> float:
    """Readings/s from the publisher (flat out) to a paho subscriber that only counts."""
    import paho.mqtt.client as pm
    from paho.mqtt.enums import CallbackAPIVersion

    from ingest.mqtt import MqttSettings

    root = f"gwbase{uuid.uuid4().hex[:6]}"
    s = MqttSettings.from_url(mqtt)
    count = {"readings": 0, "first": 0.0, "last": 0.0}

    def on_message(c: Any, u: Any, msg: Any) -> None:
        p = msg.payload
        hlen = int.from_bytes(p[4:8], "little")
        n = json.loads(p[8 : 8 + hlen])["n"]
        now = time.monotonic()
        if not count["first"]:
            count["first"] = now
        count["last"] = now
        count["readings"] += n

    sub = pm.Client(CallbackAPIVersion.VERSION2, client_id=f"{root}-sub")
    sub.on_message = on_message
    sub.connect(s.host, s.port)
    sub.subscribe(f"{root}/v1/+/+/batch", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    pub = Publisher(mqtt, root, devices, 1e9)
    pub.ready.wait(120)
    pub.send("speed 1e9")
    time.sleep(seconds)
    pub.close()
    time.sleep(2.0)
    sub.loop_stop()
    sub.disconnect()
    span = max(count["last"] - count["first"], 1e-9)
    return count["readings"] / span


# -- measuring the pipeline ---------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _pids_named(name: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == name:
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime per pid (clock ticks); processes come and go (PostgreSQL backends)."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return out


def _cpu_seconds(samples: list[dict[str, Any]], group: str) -> float:
    """CPU seconds of a process group over the samples: per pid, last seen minus first seen
    (0 for a process that started during the phase)."""
    first = samples[0]["cpu"][group]
    last: dict[int, int] = {}
    for smp in samples:
        last.update(smp["cpu"][group])
    return sum(v - first.get(pid, 0) for pid, v in last.items()) / CLK


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Watch:
    """Samples status, publisher progress, CPU and RSS every ``every_s`` on a thread."""

    def __init__(self, data_dir: Path, sup_pid: int, pub: Publisher, every_s: float = 2.0):
        self.data_dir = data_dir
        self.sup_pid = sup_pid
        self.pub = pub
        self.every_s = every_s
        self.samples: list[dict[str, Any]] = []
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "status.json").read_text()))
        except (OSError, json.JSONDecodeError):
            return {}

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(self.sample())

    def pipeline_pids(self, st: dict[str, Any]) -> list[int]:
        return [self.sup_pid] + [int(w["pid"]) for w in st.get("workers", []) if w.get("pid")]

    def sample(self) -> dict[str, Any]:
        st = self.status()
        pids = self.pipeline_pids(st)
        for pid in pids:
            self.peak[pid] = max(self.peak.get(pid, 0.0), _peak_rss_mb(pid))
        return {
            "t": time.monotonic(),
            "published": int(self.pub.last.get("readings", 0)),
            "accepted": int((st.get("readings") or {}).get("accepted", 0)),
            "stored": int((st.get("stored") or {}).get("rows", 0)),
            "backlog_bytes": int((st.get("stored") or {}).get("backlog_bytes", 0)),
            "lag_s": st.get("device_lag_s"),
            "rss_mb": float(st.get("rss_mb") or 0.0),
            "cpu": {
                "pipeline": _cpu_ticks(pids),
                "publisher": _cpu_ticks([self.pub.proc.pid]),
                "mosquitto": _cpu_ticks(_pids_named("mosquitto")),
                "postgres": _cpu_ticks(_pids_named("postgres")),
            },
        }


def _slope(t: np.ndarray, y: np.ndarray) -> float:
    if t.size < 3 or np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t - t[0], y, 1)[0])


def analyse(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates and backlog growth of one phase's samples (the first 15 % are warm-up)."""
    if len(samples) < 4:
        return {"error": "too few samples"}
    s = samples[max(1, len(samples) * 15 // 100) :]
    t = np.array([x["t"] for x in s])
    pub = np.array([x["published"] for x in s], dtype=float)
    acc = np.array([x["accepted"] for x in s], dtype=float)
    sto = np.array([x["stored"] for x in s], dtype=float)
    span = max(t[-1] - t[0], 1e-9)
    offered = (pub[-1] - pub[0]) / span
    half = t >= t[0] + span / 2
    ingest_backlog = pub - acc
    store_backlog = acc - sto
    g_ingest = _slope(t[half], ingest_backlog[half])
    g_store = _slope(t[half], store_backlog[half])
    growing_ingest = g_ingest > 0.02 * offered and ingest_backlog[-1] > 2 * offered
    # storage is delayed on purpose (committed in large chunks behind): 10 s of slack
    growing_store = g_store > 0.02 * offered and store_backlog[-1] > 10 * offered
    cpu = {k: _cpu_seconds(s, k) / span for k in s[0]["cpu"]}
    return {
        "seconds": round(float(span), 1),
        "offered_readings_per_s": round(float(offered), 1),
        "accepted_readings_per_s": round(float((acc[-1] - acc[0]) / span), 1),
        "stored_readings_per_s": round(float((sto[-1] - sto[0]) / span), 1),
        "ingest_backlog_end": int(ingest_backlog[-1]),
        "ingest_backlog_slope_per_s": round(g_ingest, 1),
        "storage_backlog_end": int(store_backlog[-1]),
        "storage_backlog_slope_per_s": round(g_store, 1),
        "backlog_growing": bool(growing_ingest or growing_store),
        "cpu_cores": {k: round(float(v), 2) for k, v in cpu.items()},
        "max_device_lag_s": max((x["lag_s"] or 0.0) for x in s),
    }


def latency_quantiles(metrics_url: str) -> dict[str, float | None]:
    """p50/p99 of red (and all-grade) alert latency from the supervisor's merged metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from gridwatch.pipeline.metrics import quantile_of_buckets

    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    red: dict[float, float] = {}
    every: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "gridwatch_pipeline_alert_latency_seconds":
            continue
        for smp in fam.samples:
            if not smp.name.endswith("_bucket"):
                continue
            le = float(smp.labels["le"])
            every[le] = every.get(le, 0.0) + smp.value
            if smp.labels.get("grade") == "red":
                red[le] = red.get(le, 0.0) + smp.value
    return {
        "latency_p50_s": quantile_of_buckets(list(red.items()), 0.5),
        "latency_p99_s": quantile_of_buckets(list(red.items()), 0.99),
        "red_alerts": max(red.values()) if red else 0,
        "all_grades_p99_s": quantile_of_buckets(list(every.items()), 0.99),
    }


def run_phase(watch: Watch, seconds: float) -> dict[str, Any]:
    start = len(watch.samples)
    time.sleep(seconds)
    return analyse(watch.samples[start:])


def wait_drained(watch: Watch, timeout_s: float, per_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        x = watch.sample()
        if x["published"] - x["accepted"] < per_s and x["accepted"] - x["stored"] < per_s:
            return True
        time.sleep(2.0)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="48,000 devices, 20 s, then x4 10 s")
    ap.add_argument(
        "--mqtt",
        help="use this broker (default: the machine's mosquitto started on a free port with "
        "deploy/mosquitto.conf; a default-configured broker drops QoS 1 messages past 1,000 "
        "queued per client, which a worker's one-second pause exceeds at this rate)",
    )
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--devices", type=int)
    ap.add_argument("--seconds", type=float, help="real-time phase (default 600; quick 20)")
    ap.add_argument("--speeds", default=None, help="comma-separated speed-ups to try")
    ap.add_argument("--speed-seconds", type=float, help="seconds per speed-up step")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--protocol", choices=("3.1.1", "5"), help="the collectors' mqtt.protocol")
    ap.add_argument("--keep", action="store_true", help="keep the schema and data dir")
    ap.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--warmup-s", type=float, default=30.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publisher:
        return publisher_main(args)

    broker = None
    if args.mqtt is None:
        broker = OwnBroker(Path(tempfile.mkdtemp(prefix="gw-e2e-broker-"))).start()
        args.mqtt = broker.url
    print(f"broker {args.mqtt}; baseline: publisher flat out -> bare subscriber", flush=True)
    try:
        return _bench(args, broker)
    finally:
        if broker is not None:
            broker.stop(timeout_s=30)


def _bench(args: argparse.Namespace, broker: OwnBroker | None) -> int:
    devices = args.devices or (48_000 if args.quick else 480_000)
    # --quick is a smoke run that finishes within about a minute, start-up included
    seconds = args.seconds or (20.0 if args.quick else 600.0)
    speeds = [float(x) for x in (args.speeds or ("4" if args.quick else "2,4,6,8")).split(",")]
    speed_s = args.speed_seconds or (10.0 if args.quick else 120.0)
    rate_1x = devices * 0.105  # readings/s at real time (docs/simulator.md)
    base = baseline(args.mqtt, devices, 3.0 if args.quick else 20.0)
    print(f"  {base:,.0f} readings/s", flush=True)

    import psycopg

    schema = f"bench_e2e_{uuid.uuid4().hex[:8]}"
    root = f"gwbench{uuid.uuid4().hex[:6]}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    work = Path(tempfile.mkdtemp(prefix="gw-e2e-"))
    env = _env(
        GRIDWATCH_PIPELINE__MAX_FUTURE_S="86400",
        GRIDWATCH_MQTT__CLIENT_ID=f"bench-{root}",
        **({"GRIDWATCH_MQTT__PROTOCOL": args.protocol} if args.protocol else {}),
    )
    cmd = [
        sys.executable, "-m", "gridwatch", "--log-level", "WARNING", "run",
        "--workers", str(args.workers), "--mqtt", args.mqtt, "--root", root,
        "--db", f"{args.pg}?schema={schema}", "--devices", str(devices), "--seed", str(SEED),
        "--no-sim", "--no-console", "--metrics-port", "0", "--data-dir", str(work / "data"),
        "--no-summary",
    ]  # fmt: skip
    log = (work / "pipeline.log").open("wb")
    sup = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    pub: Publisher | None = None
    watch: Watch | None = None
    result: dict[str, Any] = {}
    try:
        data = work / "data"
        deadline = time.monotonic() + 300
        while True:
            st = _status(data)
            ws = st.get("workers") or []
            if len(ws) == args.workers and all(
                w.get("state") == "running" and w.get("mqtt_connected") for w in ws
            ):
                break
            if sup.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pipeline did not start; see {work / 'pipeline.log'}")
            time.sleep(1.0)
        pub = Publisher(args.mqtt, root, devices, 30.0)
        pub.ready.wait(300)
        watch = Watch(data, sup.pid, pub).start()
        print(f"real time: {devices:,} devices for {seconds:.0f} s", flush=True)
        pub.send("speed 1")
        rt = run_phase(watch, seconds)
        lat = latency_quantiles(_status(data)["metrics_url"])
        print(f"  {rt}\n  {lat}", flush=True)
        sustained = 1.0 if not rt.get("backlog_growing") else 0.0
        steps = []
        if sustained:
            for x in speeds:
                pub.send("pause")
                wait_drained(watch, 180, rate_1x)
                print(f"speed-up x{x:g} for {speed_s:.0f} s", flush=True)
                pub.send(f"speed {x}")
                ph = run_phase(watch, speed_s)
                ph["speed"] = x
                steps.append(ph)
                print(f"  {ph}", flush=True)
                if ph.get("backlog_growing") or ph["offered_readings_per_s"] < 0.8 * x * rate_1x:
                    break  # not sustained (or the publisher itself could not offer it)
                sustained = x
        pub.send("pause")
        peak_pipeline = max(watch.peak.values(), default=0.0)
        result = {
            "devices": devices,
            "workers": args.workers,
            "protocol": args.protocol or "default",
            "realtime_seconds": seconds,
            "offered_readings_per_s": rt.get("offered_readings_per_s"),
            "accepted_readings_per_s": rt.get("accepted_readings_per_s"),
            "stored_readings_per_s": rt.get("stored_readings_per_s"),
            "latency_p50_s": lat["latency_p50_s"],
            "latency_p99_s": lat["latency_p99_s"],
            "red_alerts": lat["red_alerts"],
            "peak_rss_mb": round(sum(watch.peak.values()), 1),
            "peak_rss_one_process_mb": round(peak_pipeline, 1),
            "backlog_growing": bool(rt.get("backlog_growing")),
            "cpu_cores_realtime": rt.get("cpu_cores"),
            "max_speedup_sustained": sustained,
            "speedup_steps": steps,
            "baseline_broker_readings_per_s": round(base, 1),
            "broker": "own mosquitto, deploy/mosquitto.conf" if broker else args.mqtt,
            "machine": f"{os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        }
    finally:
        if watch is not None:
            watch.stop()
        if pub is not None:
            pub.close()
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(180)
        except subprocess.TimeoutExpired:
            sup.kill()
        log.close()
        if not args.keep:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                    (f"%/{schema}",),
                )
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(json.dumps(result))
    return 0


def _status(data: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data / "status.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
