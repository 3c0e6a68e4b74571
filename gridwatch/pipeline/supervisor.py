"""``gridwatch run --workers N``: N worker processes, each a share of the grids, supervised.

The supervisor prepares storage once (migrations, registry rows) so N workers never race
on them, then starts worker k as ``gridwatch run --partition k/N --worker-index k`` with
the effective settings in its environment. Each worker has its own MQTT client id
(``<client_id>-<k>ofN``, a persistent session), detector state and checkpoint; alerts and
dispatch queues are global in storage.

Health: a worker is healthy while its process lives and its status file is rewritten
(``status.STALE_S``). A dead worker is reported (log line, ``restarts`` in the status,
``gridwatch_supervisor_worker_restarts_total``) and restarted with exponential back-off;
a hung one (status not rewritten for ``health_timeout_s``) is killed first. Because a
worker acknowledges MQTT messages only after storing and alerting on them, a restarted
worker gets everything its predecessor had not finished from the broker's session.

The supervisor itself serves the console (one port for the whole district), the status
file aggregating every worker, and ``/metrics`` merging the workers' metrics (each sample
labelled ``worker``). With the built-in simulator on, it also runs ``gridwatch sim`` as a
supervised child publishing to the broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector as PromCollector

from gridwatch.config import Settings, mask_url
from gridwatch.pipeline import assembly
from gridwatch.pipeline.http import MetricsServer
from gridwatch.pipeline.status import (
    StatusReporter,
    read_status,
    status_path,
    worker_status_path,
)

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 30.0
START_GRACE_S = 120.0
"""A starting worker builds its registry and opens storage before its first status write."""


@dataclass(slots=True)
class Child:
    """One supervised process: a worker (``index`` >= 0) or the simulator (-1)."""

    index: int
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff_s: float = 1.0
    next_start: float = 0.0
    last_exit: int | None = None
    history: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as ``GRIDWATCH_*`` variables (they outrank a child's config file)."""
    out: dict[str, str] = {}
    data = settings.model_dump(mode="json")
    password = settings.mqtt.password
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if v is None:
                    continue
                if key == "mqtt" and sub == "password" and password is not None:
                    v = password.get_secret_value()
                out[f"GRIDWATCH_{key.upper()}__{sub.upper()}"] = (
                    str(v).lower() if isinstance(v, bool) else str(v)
                )
        elif value is not None:
            out[f"GRIDWATCH_{key.upper()}"] = str(value)
    return out


class Supervisor:
    """Starts, watches, restarts and stops the workers (and the simulator) of one run."""

    def __init__(self, settings: Settings, *, duration_s: float | None = None) -> None:
        self.settings = settings
        self.n = settings.pipeline.workers
        self.duration_s = duration_s
        self.stop_event = threading.Event()
        self.data_dir = Path(settings.data_dir)
        self.children: list[Child] = []
        self.sim: Child | None = None
        self.state = "starting"
        self.started_ms = time.time_ns() // 1_000_000
        self.prom = CollectorRegistry(auto_describe=False)
        self.restarts = Counter(
            "gridwatch_supervisor_worker_restarts",
            "workers restarted after dying or hanging",
            ["worker"],
            registry=self.prom,
        )
        self.alive = Gauge(
            "gridwatch_supervisor_workers_alive", "worker processes running", registry=self.prom
        )
        self.prom.register(_WorkerMetrics(self))
        self.status: StatusReporter | None = None
        self.http: MetricsServer | None = None
        self.console: Any = None
        self.console_url: str | None = None  # kept: the server's URL dies with its socket

    # -- run --------------------------------------------------------------------------

    def run(self) -> int:
        with contextlib.ExitStack() as stack:
            self._prepare(stack)
            self.state = "running"
            deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
            while not self.stop_event.wait(0.5):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._watch()
            self.state = "stopping"
            log.info("supervisor stopping workers")
            self._stop_children()
        return 0

    def status_now(self) -> dict[str, Any]:
        return self.status.last if self.status is not None else {"state": self.state}

    def _prepare(self, stack: contextlib.ExitStack) -> None:
        s = self.settings
        registry = assembly.load_registry(s)
        assembly.load_policy(s, registry)  # fail here, once, on a bad rules/plans file
        storage, _ = assembly.open_store(s, registry, initialise=True)
        stack.callback(storage.close)
        for k in range(self.n):
            assembly.my_grids(registry, (k, self.n))  # ConfigError: a worker without grids
        self.status = StatusReporter(status_path(self.data_dir), self.snapshot)
        self.status.start()
        stack.callback(lambda: self.status.stop() if self.status else None)
        if s.pipeline.metrics_port is not None:
            self.http = MetricsServer(
                self.prom,
                self.status_now,
                lambda: self.state == "running" and all(self._healthy(c) for c in self.children),
                host=s.pipeline.metrics_host,
                port=s.pipeline.metrics_port,
            ).start()
            stack.callback(self.http.stop)
        if s.console.enabled:
            self._start_console(stack, storage, registry)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
        env.update(settings_env(s))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_root()), env.get("PYTHONPATH")) if p)
        for k in range(self.n):
            argv = [
                sys.executable,
                "-m",
                "gridwatch",
                "--log-level",
                s.log_level,
                "run",
                "--partition",
                f"{k}/{self.n}",
                "--worker-index",
                str(k),
                "--no-summary",
            ]
            if s.pipeline.metrics_port is None:
                argv.append("--no-metrics")
            self.children.append(Child(k, argv, env))
        if s.sim.enabled and s.mqtt.url is not None:
            self.sim = Child(-1, self._sim_argv(), env)
        for c in self.children:
            self._start(c)
        stack.callback(self._stop_children)
        if self.sim is not None:
            self._start(self.sim)

    def _sim_argv(self) -> list[str]:
        s = self.settings
        argv = [
            sys.executable,
            "-m",
            "gridwatch",
            "sim",
            "--devices",
            str(s.sim.devices),
            "--seed",
            str(s.sim.seed),
            "--speed",
            str(s.sim.speed),
            "--duration",
            str(10 * 365 * 86400),
            "--mqtt",
            s.mqtt.url or "",
            "--root",
            s.mqtt.root,
            "--fault-scale",
            str(s.sim.fault_scale),
            "--start-ms",
            str(time.time_ns() // 1_000_000),
            "--no-progress",
        ]
        if s.files.registry is not None:
            argv += ["--registry", str(s.files.registry)]
        return argv

    def _start_console(self, stack: contextlib.ExitStack, storage: Any, registry: Any) -> None:
        try:
            from alerts.console import ConsoleServer, create_app
        except ImportError as exc:
            log.warning("console not available", extra={"error": str(exc)})
            return
        c = self.settings.console
        try:
            _, plans = assembly.load_policy(self.settings, registry)
            app = create_app(storage, registry, plans=plans)
            self.console = ConsoleServer(app, host=c.host, port=c.port).start()
            self.console_url = self.console.url
        except (OSError, RuntimeError) as exc:
            log.warning("console not served", extra={"port": c.port, "error": str(exc)})
            return
        stack.callback(self.console.stop)

    # -- children ---------------------------------------------------------------------

    def _start(self, c: Child) -> None:
        c.proc = subprocess.Popen(c.argv, env=c.env, stdin=subprocess.DEVNULL)
        c.started = time.monotonic()
        c.history.append(f"started pid {c.proc.pid}")
        event = "simulator started" if c.index < 0 else "worker started"
        log.info(event, extra={"worker": c.index, "pid": c.proc.pid})

    def _healthy(self, c: Child) -> bool:
        if not c.alive:
            return False
        if c.index < 0 or time.monotonic() - c.started < START_GRACE_S:
            return True
        st = read_status(worker_status_path(self.data_dir, c.index))
        if st is None:
            return False
        return bool(st.get("age_s", 1e9) <= self.settings.pipeline.health_timeout_s)

    def _watch(self) -> None:
        now = time.monotonic()
        for c in [*self.children, *([self.sim] if self.sim else [])]:
            if c.proc is None:
                if now >= c.next_start:
                    self._start(c)
                continue
            code = c.proc.poll()
            hung = code is None and not self._healthy(c)
            if code is None and not hung:
                if now - c.started > 60:
                    c.backoff_s = 1.0  # it ran a while: the next failure starts fresh
                continue
            what = "simulator" if c.index < 0 else "worker"
            if hung:
                log.error("worker hung (status not updated); killing it", extra={"worker": c.index})
                c.proc.kill()
                c.proc.wait(10)
                code = c.proc.returncode
            c.last_exit = code
            c.restarts += 1
            c.history.append(f"exited {code}")
            if c.index >= 0:
                self.restarts.labels(str(c.index)).inc()
            log.error(
                "simulator died; restarting" if what == "simulator" else "worker died; restarting",
                extra={"worker": c.index, "exit_code": code, "restart_in_s": c.backoff_s},
            )
            c.proc = None
            c.next_start = now + c.backoff_s
            c.backoff_s = min(c.backoff_s * 2, BACKOFF_MAX_S)
        self.alive.set(sum(1 for c in self.children if c.alive))

    def _stop_children(self) -> None:
        """SIGTERM every child (each shuts down cleanly), SIGKILL what outlives the grace."""
        everyone = [*([self.sim] if self.sim else []), *self.children]
        for c in everyone:  # the simulator first: no new readings while workers drain
            if c.alive and c.proc is not None:
                c.proc.send_signal(signal.SIGTERM)
                if c.index < 0:
                    _wait(c.proc, 15)
        deadline = time.monotonic() + 90
        for c in everyone:
            if c.proc is None:
                continue
            if not _wait(c.proc, max(1.0, deadline - time.monotonic())):
                log.error("worker did not stop in time; killing it", extra={"worker": c.index})
                c.proc.kill()
                c.proc.wait(10)
            c.last_exit = c.proc.returncode
            c.proc = None
        self.alive.set(0)

    # -- status -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        workers = []
        totals: dict[str, Any] = {
            "readings": {"accepted": 0, "per_s": 0.0, "messages": 0, "late": 0},
            "stored": {
                "rows": 0,
                "per_s": 0.0,
                "duplicates": 0,
                "writer_rows": 0,
                "delayed_rows": 0,
                "backlog_bytes": 0,
                "spill_files": 0,
            },
            "rejected": {},
            "alerts": {"opened": {}, "upgraded": 0, "cleared": 0, "write_failures": 0},
            "queues": {"inprocess": 0, "ingest_handoff": 0, "detect": 0, "unacked": 0},
        }
        lag: list[float] = []
        rss = 0.0
        dispatch: dict[str, int] = {}
        for c in self.children:
            st = read_status(worker_status_path(self.data_dir, c.index)) or {}
            st = {**st, "index": c.index, "restarts": c.restarts, "alive": c.alive}
            st["pid"] = c.proc.pid if c.proc is not None else None
            if not c.alive:
                st["state"] = "restarting"
            workers.append(st)
            for sec in ("readings", "stored", "queues"):
                for k, v in (st.get(sec) or {}).items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        totals[sec][k] = totals[sec].get(k, 0) + v
            for k, v in (st.get("rejected") or {}).items():
                totals["rejected"][k] = totals["rejected"].get(k, 0) + v
            a = st.get("alerts") or {}
            for g, v in (a.get("opened") or {}).items():
                totals["alerts"]["opened"][g] = totals["alerts"]["opened"].get(g, 0) + v
            for k in ("upgraded", "cleared", "write_failures"):
                totals["alerts"][k] += int(a.get(k) or 0)
            if st.get("device_lag_s") is not None:
                lag.append(float(st["device_lag_s"]))
            rss += float(st.get("rss_mb") or 0)
            dispatch = st.get("dispatch_queues") or dispatch
        return {
            "role": "supervisor",
            "name": "supervisor",
            "pid": os.getpid(),
            "state": self.state,
            "problem": ", ".join(
                f"worker {c.index} {c.history[-1]}" for c in self.children if not c.alive
            ),
            "started_ms": self.started_ms,
            "uptime_s": round(time.time() - self.started_ms / 1000, 1),
            "workers_n": self.n,
            "transport": "mqtt",
            "storage": mask_url(self.settings.storage.url),
            "metrics_url": self.http.url if self.http is not None else None,
            "console_url": self.console_url,
            **totals,
            "dispatch_queues": dispatch,
            "device_lag_s": max(lag) if lag else None,
            "rss_mb": round(rss, 1),
            "workers": workers,
            "sim": None
            if self.sim is None
            else {
                "pid": self.sim.proc.pid if self.sim.proc else None,
                "restarts": self.sim.restarts,
            },
        }

    def worker_metric_urls(self) -> Iterator[tuple[int, str]]:
        for c in self.children:
            st = read_status(worker_status_path(self.data_dir, c.index))
            if st and st.get("metrics_url") and c.alive:
                yield c.index, f"{st['metrics_url']}/metrics"


class _WorkerMetrics(PromCollector):
    """Scrapes every worker's ``/metrics`` at collection time and adds a ``worker`` label."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, url in self.sup.worker_metric_urls():
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    text = resp.read().decode("utf-8")
            except OSError:
                continue
            for fam in text_string_to_metric_families(text):
                out = merged.get(fam.name)
                if out is None:
                    out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                    merged[fam.name] = out
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp)
        yield from merged.values()


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _root() -> Path:
    return Path(__file__).resolve().parents[2]
