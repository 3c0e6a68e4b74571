"""Helpers of the pipeline tests: the CLI as a child process, brokers of our own, checks.

Tests that stop or restart a broker start their OWN Mosquitto on a free loopback port
with the shipped ``deploy/mosquitto.conf`` (only the port, persistence directory, log
destination and user changed); the machine's shared services are never stopped.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gridwatch.batch import ReadingBatch
from gridwatch.domain import DeviceKind

ROOT = Path(__file__).resolve().parents[2]

ALERT_DEVICE_KIND: dict[str, DeviceKind] = {
    "trapped_passenger": DeviceKind.ELEVATOR,
    "overspeed": DeviceKind.ELEVATOR,
    "door_fault": DeviceKind.ELEVATOR,
    "elevator_fault_warning": DeviceKind.ELEVATOR,
    "vibration_rising": DeviceKind.ELEVATOR,
    "cover_displaced": DeviceKind.SEWAGE,
    "overflow_imminent": DeviceKind.SEWAGE,
    "level_high": DeviceKind.SEWAGE,
    "blockage_suspected": DeviceKind.SEWAGE,
    "falling_object": DeviceKind.HIGHFALL,
}


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child gridwatch: no GRIDWATCH_* of the caller's, our tree first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class Gridwatch:
    """``gridwatch <args>`` as a child process with its logs in a file (JSON lines)."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gridwatch:
        fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch", "--log-format", "json", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the test runner is not sent to it
        )
        fh.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"gridwatch {self.args[:2]} did not exit within {timeout} s\n{self.tail()}"
            ) from None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the clean shutdown every test relies on."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"event": line.decode(errors="replace")})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.logs() if r.get("event") == name]

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


@contextmanager
def running(gw: Gridwatch) -> Iterator[Gridwatch]:
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()


# -- brokers of our own ------------------------------------------------------------------


# -- what the database holds ---------------------------------------------------------------


def sqlite_rows(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # not migrated yet
    finally:
        conn.close()


def stored_keys(conn: Any, dialect: str, kind: DeviceKind) -> np.ndarray:
    """Every stored (device_id, ts_ms) of a kind as one sorted int-pair array per device id."""
    if dialect == "postgres":
        sql = (
            f"SELECT d.device_id, (extract(epoch FROM r.ts) * 1000)::bigint "
            f"FROM readings_{kind.value} r JOIN devices d ON d.device_key = r.device"
        )
    else:
        sql = (
            f"SELECT d.device_id, r.ts_ms FROM readings_{kind.value} r "
            "JOIN devices d ON d.device_key = r.device"
        )
    rows = conn.execute(sql).fetchall()
    return np.array([(str(d), int(t)) for d, t in rows], dtype=[("device", "U16"), ("ts_ms", "i8")])


def published_keys(batches: Sequence[ReadingBatch], registry: Any) -> np.ndarray:
    """The (device_id, ts_ms) pairs of what the simulator sent."""
    if not batches:
        return np.zeros(0, dtype=[("device", "U16"), ("ts_ms", "i8")])
    dev = np.concatenate([registry.device_ids[b.device] for b in batches])
    ts = np.concatenate([b.ts_ms for b in batches])
    out = np.zeros(dev.size, dtype=[("device", "U16"), ("ts_ms", "i8")])
    out["device"] = dev
    out["ts_ms"] = ts
    return out


# -- a labelled scenario published over MQTT -----------------------------------------------

FAST_FAULTS = {
    "elevator.entrapment": 0.4,
    "elevator.overspeed": 0.4,
    "elevator.door_fault": 0.4,
    "sewage.cover_displaced": 0.05,
    "highfall.falling_object": 0.3,
}
"""Faults whose alert follows within a minute of device time; every other rate is 0."""


class Scenario:
    """A small district with fast faults, its messages cut into paced steps, its labels."""

    def __init__(
        self,
        tmp: Path,
        *,
        devices: int = 1200,
        duration_s: float = 240.0,
        step_s: float = 2.0,
        seed: int = 4242,
        root: str = "gw",
    ) -> None:
        from sim.engine import FleetSim, SimSpec
        from sim.faults import DEFAULT_RATES, rate_key
        from sim.fleet import FleetSpec, build_fleet
        from sim.publish import MessageEncoder, PayloadFormat

        # 60 devices a grid: 20 grids, enough for every worker to get some
        self.registry = build_fleet(FleetSpec(n_devices=devices, seed=seed, devices_per_grid=60))
        self.registry_path = tmp / "registry.csv"
        self.registry.to_csv(self.registry_path)
        rates = {rate_key(k, f): 0.0 for k, f in DEFAULT_RATES}
        rates.update(FAST_FAULTS)
        now_ms = time.time_ns() // 1_000_000
        self.start_ms = now_ms - round(duration_s * 1000)  # every timestamp in the past
        sim = FleetSim(
            self.registry,
            SimSpec(seed=seed, start_ms=self.start_ms, rates=rates, warmup_s=0, call_gap_s=20),
        )
        enc = MessageEncoder(self.registry, PayloadFormat.BINARY, root, 200)
        self.root = root
        self.steps: list[list[tuple[str, bytes]]] = []
        self.batches: list[ReadingBatch] = []
        step_ms = round(step_s * 1000)
        self.end_ms = self.start_ms + round(duration_s * 1000)
        while sim.now_ms < self.end_ms:
            msgs = []
            for b in sim.advance(min(sim.now_ms + step_ms, self.end_ms)):
                if len(b):
                    self.batches.append(b)
                    msgs += [(m.topic, m.payload) for m in enc.messages(b)]
            self.steps.append(msgs)
        self.labels = sim.labels
        self._reference: set[tuple[str, str]] | None = None

    @property
    def n_readings(self) -> int:
        return sum(len(b) for b in self.batches)

    def reference_alerts(self) -> set[tuple[str, str]]:
        """(device id, alert kind) the detectors and rules open on this scenario with no
        fault in the way: in-process, one thread, no broker, no database."""
        if self._reference is None:
            from detectors.detectorset import DetectorSet
            from gridwatch.batch import Detections
            from gridwatch.clock import ManualClock
            from rules.engine import RulesEngine
            from rules.load import load_rules

            ds = DetectorSet(self.registry)
            engine = RulesEngine(load_rules(registry=self.registry), self.registry, ManualClock())
            out: set[tuple[str, str]] = set()
            next_id = 1
            for b in self.batches:
                changes = engine.process(Detections.concat([ds.update(b)]))
                ids = list(range(next_id, next_id + len(changes.opened)))
                next_id += len(ids)
                engine.bind(changes.opened, ids)
                out |= {(o.device_id, o.alert.value) for o in changes.opened if o.device_id}
            self._reference = out
        return self._reference

    def expected_faults(self, settle_s: float = 90.0) -> list[Any]:
        """Labelled faults that started early enough to be alerted by the end and that the
        detectors do find undisturbed (their own recall is the replay report's business)."""
        from gridwatch.pipeline.evaluate import FAULT_ALERTS

        kinds = {k.split(".")[1] for k in FAST_FAULTS}
        ref = self.reference_alerts()
        return [
            lb
            for lb in self.labels
            if lb.is_fault
            and lb.kind in kinds
            and lb.kind in FAULT_ALERTS
            and lb.start_ms <= self.end_ms - round(settle_s * 1000)
            and any((lb.device_id, k.value) in ref for k in FAULT_ALERTS[lb.kind])
        ]


class Feed:
    """Publishes a scenario's steps at QoS 1 on an owned thread, ``step_wall_s`` apart.

    Waits out a broker outage (paho reconnects), and at the end republishes anything the
    broker never acknowledged, so every message is accepted by the broker exactly as a
    well-behaved gateway would ensure.
    """

    def __init__(self, url: str, steps: list[list[tuple[str, bytes]]], step_wall_s: float):
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from ingest.mqtt import MqttSettings

        s = MqttSettings.from_url(url)
        self.steps = steps
        self.step_wall_s = step_wall_s
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"feed-{os.getpid()}-{time.time_ns()}"
        )
        self.client.max_inflight_messages_set(200)
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect(s.host, s.port, keepalive=10)
        self.client.loop_start()
        self.acked: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, p: self.acked.add(mid)
        self.done = threading.Event()
        self.published = 0
        self.sent_at = 0.0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-feed", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def _publish(self, topic: str, payload: bytes) -> Any:
        while not self.client.is_connected():
            time.sleep(0.05)
        return self.client.publish(topic, payload, qos=1)

    def _run(self) -> None:
        try:
            sent: list[tuple[Any, str, bytes]] = []
            t0 = time.monotonic()
            for i, step in enumerate(self.steps):
                due = t0 + i * self.step_wall_s
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                for topic, payload in step:
                    sent.append((self._publish(topic, payload), topic, payload))
                    self.published += 1
            self.sent_at = time.monotonic()  # all handed to the client (acks may lag)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                missing = [(t, p) for info, t, p in sent if info.mid not in self.acked]
                if not missing:
                    break
                time.sleep(1.0)
                still = [(i, t, p) for i, t, p in sent if i.mid not in self.acked]
                sent = [(self._publish(t, p), t, p) for _, t, p in still]
            else:
                raise AssertionError("the broker never acknowledged every message")
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise AssertionError(f"feed did not finish within {timeout} s")
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- verification against PostgreSQL ---------------------------------------------------------


def pg_connect(pg_url: str, schema: str) -> Any:
    import psycopg

    return psycopg.connect(pg_url, options=f"-c search_path={schema}", autocommit=True)


def stored_count(pg_url: str, schema: str) -> int:
    try:
        with pg_connect(pg_url, schema) as conn:
            return sum(
                int(conn.execute(f"SELECT count(*) FROM readings_{k.value}").fetchone()[0])
                for k in DeviceKind
            )
    except Exception:  # not migrated yet, or a connection refused during a fault
        return -1


def verify_pipeline(pg_url: str, schema: str, scenario: Scenario) -> dict[str, Any]:
    """The three promises after a fault: readings exactly once, every labelled fault
    alerted, the dispatch queue without lost or duplicated alerts. Returns figures."""
    from gridwatch.pipeline.evaluate import FAULT_ALERTS

    with pg_connect(pg_url, schema) as conn:
        for kind in DeviceKind:
            got = stored_keys(conn, "postgres", kind)
            want = published_keys(
                [b for b in scenario.batches if b.kind == kind], scenario.registry
            )
            assert got.size == np.unique(got).size, f"{kind}: a reading stored twice"
            missing = np.setdiff1d(want, got)
            extra = np.setdiff1d(got, want)
            assert missing.size == 0, f"{kind}: {missing.size} published readings not stored"
            assert extra.size == 0, f"{kind}: {extra.size} stored readings never published"
        alerts = conn.execute(
            "SELECT id, device_id, kind, grade, first_seen_ms FROM alerts WHERE scope = 'device'"
        ).fetchall()
        links = conn.execute(
            "SELECT l.alert_id, count(*) FROM dispatch_item_alerts l "
            "JOIN dispatch_queue q ON q.id = l.item_id "
            "WHERE q.level = 'grid' AND q.item_kind = 'alert' GROUP BY l.alert_id"
        ).fetchall()
    by_key: dict[tuple[str, str], int] = {}
    for _, dev, kind, _, _ in alerts:
        by_key[(dev, kind)] = by_key.get((dev, kind), 0) + 1
    dup = {k: n for k, n in by_key.items() if n > 1}
    assert not dup, f"alerts opened twice: {dup}"
    linked = dict(links)
    assert all(n == 1 for n in linked.values()), "an alert queued twice"
    red = [a for a in alerts if a[3] == "red"]
    unqueued = [a for a in red if a[0] not in linked]
    assert not unqueued, f"red alerts missing from the dispatch queue: {unqueued[:5]}"
    missing_faults = []
    for lb in scenario.expected_faults():
        kinds = {k.value for k in FAULT_ALERTS[lb.kind]}
        if not any(dev == lb.device_id and kind in kinds for _, dev, kind, _, _ in alerts):
            missing_faults.append((lb.kind, lb.device_id, lb.start_ms - scenario.start_ms))
    assert not missing_faults, f"labelled faults without an alert: {missing_faults}"
    return {"alerts": len(alerts), "red": len(red), "faults": len(scenario.expected_faults())}
