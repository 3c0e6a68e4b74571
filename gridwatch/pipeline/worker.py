"""One pipeline process: transport -> ingest -> detect/rules/alerts, storage beside.

``Worker.run(stop)`` assembles everything from ``Settings``, runs until ``stop`` is set
(Ctrl-C, SIGTERM, a supervisor) or ``duration_s`` passed, then shuts down in flow
order so nothing accepted is lost:

1. stop intake (the simulator feeder; the MQTT front end stops reading),
2. flush ingest's last micro-batch through every sink (MQTT: then acknowledge it),
3. the detect thread finishes its queue, writes the alert counters behind, checkpoints,
4. the storage stage stops draining; the writer commits (or spills) what it holds,
5. console, alert publisher, metrics endpoint; the status file says ``stopped``.

A restart resumes from the checkpoint (detector state), from storage (open alerts, spill
files, the backlog) and from the broker's persistent session (unacknowledged messages).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.dispatch import Dispatcher, DispatchSettings
from detectors.detectorset import DetectorSet
from gridwatch.clock import Clock, SystemClock
from gridwatch.config import Settings, mask_url
from gridwatch.deadletter import DeadLetter
from gridwatch.domain import Grade
from gridwatch.pipeline import assembly
from gridwatch.pipeline.checkpoint import Checkpointer
from gridwatch.pipeline.detect import DetectStage
from gridwatch.pipeline.http import MetricsServer
from gridwatch.pipeline.metrics import PipelineMetrics, histogram_quantile
from gridwatch.pipeline.resume import catch_up
from gridwatch.pipeline.rules_watch import RulesWatcher
from gridwatch.pipeline.status import StatusReporter, status_path
from gridwatch.pipeline.store import StorageStage
from ingest.collector import Collector
from ingest.config import IngestConfig
from rules.engine import Changes, RulesEngine
from storage import Storage
from storage.writer import ReadingWriter

log = logging.getLogger(__name__)

QUEUE_POLL_S = 5.0
"""Dispatch-queue depths are a database query: every 5 s, not every status second."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What this process does besides its share of the pipeline.

    A supervisor's workers leave the console and the status file's top slot to the
    supervisor, and only worker 0 publishes alerts to MQTT (the outbox is global: two
    publishers would send each message twice).
    """

    name: str = "pipeline"
    index: int | None = None
    initialise_storage: bool = True
    serve_console: bool = True
    publish_alerts: bool = True
    status_file: Path | None = None
    duration_s: float | None = None
    run_sim: bool = True
    storage_attempts: int = 1


@dataclass(slots=True)
class _Rates:
    t: float = field(default_factory=time.monotonic)
    accepted: int = 0
    stored: int = 0


class Worker:
    """Assembles and runs one pipeline process; see the module docstring."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self.metrics = PipelineMetrics()
        self.started_ms = time.time_ns() // 1_000_000
        self.state = "starting"
        self.partition = assembly.partition_of_settings(settings)
        self.clock: Clock = SystemClock()
        self.detect: DetectStage | None = None
        self.store: StorageStage | None = None
        self.collector: Collector | None = None
        self.front: Any = None
        self.transport: Any = None
        self.feeder: Any = None
        self.console: Any = None
        self.console_url: str | None = None  # kept: the server's URL dies with its socket
        self.publisher: Any = None
        self.http: MetricsServer | None = None
        self.status: StatusReporter | None = None
        self.checkpointer: Checkpointer | None = None
        self._rates = _Rates()
        self._per_s = (0.0, 0.0)
        self._queues: dict[str, int] = {}
        self._next_queue_poll = 0.0
        self._storage: Any = None
        self._failure = ""
        self.caught_up = 0
        self.ready = threading.Event()

    # -- naming -----------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def part_name(self) -> str:
        if self.partition is None:
            return "all"
        k, n = self.partition
        return f"{k}of{n}"

    @property
    def embedded(self) -> bool:
        return self.settings.mqtt.url is None

    # -- run --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Run until ``stop`` is set or the duration passed; returns an exit code."""
        with contextlib.ExitStack() as stack:
            try:
                self._assemble(stack)
            except BaseException:
                self.state = "failed"
                raise
            self.state = "running"
            self.ready.set()
            log.info(
                "pipeline running",
                extra={
                    "worker": self.options.name,
                    "partition": self.settings.pipeline.partition,
                    "transport": "inprocess" if self.embedded else "mqtt",
                    "storage": mask_url(self.settings.storage.url),
                    "devices": len(self.registry),
                },
            )
            deadline = (
                None
                if self.options.duration_s is None
                else time.monotonic() + self.options.duration_s
            )
            while not stop.wait(0.2):
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("duration reached; stopping", extra={"worker": self.options.name})
                    break
                problem = self.problem()
                if problem:
                    self._failure = problem
                    log.error("pipeline component failed", extra={"problem": problem})
                    break
                if self.feeder is not None and self.feeder.done:
                    log.info("simulation finished; stopping")
                    break
            self.state = "stopping"
            log.info("pipeline stopping", extra={"worker": self.options.name})
        # ExitStack ran every shutdown step, last started first.
        return 1 if self._failure else 0

    def problem(self) -> str:
        """Why this worker is unhealthy ('' when fine): a dead thread is not recoverable."""
        if self.detect is not None and not self.detect.alive:
            return "detect thread stopped"
        if self.feeder is not None and self.feeder.error is not None:
            return f"simulator failed: {self.feeder.error!r}"
        if self.front is not None and not self.front.alive:
            return "MQTT front end stopped"
        return ""

    def healthy(self) -> bool:
        return self.state == "running" and not self.problem()

    # -- assembly ----------------------------------------------------------------------

    def _assemble(self, stack: contextlib.ExitStack) -> None:
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = assembly.load_registry(s)
        grids = assembly.my_grids(self.registry, self.partition)
        mine = assembly.mine_mask(self.registry, grids)
        rules, plans = assembly.load_policy(s, self.registry)
        self.plans = plans

        sim = None
        if self.embedded and self.options.run_sim and s.sim.enabled:
            sim = self._make_sim()

        storage, keys = assembly.open_store(
            s,
            self.registry,
            initialise=self.options.initialise_storage,
            attempts=self.options.storage_attempts,
        )
        self._storage = storage
        stack.callback(storage.close)

        status_file = self.options.status_file or status_path(self.data_dir)
        status = StatusReporter(status_file, self.snapshot, name="gridwatch-status")
        self.status = status.start()
        stack.callback(lambda: status.stop("failed" if self._failure else "stopped"))

        mp = s.pipeline.metrics_port
        if mp is not None:
            try:
                self.http = MetricsServer(
                    self.metrics.registry,
                    lambda: self.status.last if self.status else {},
                    self.healthy,
                    host=s.pipeline.metrics_host,
                    port=mp if self.options.index is None else 0,
                ).start()
            except OSError as exc:  # the pipeline matters more than its metrics endpoint
                log.warning("metrics not served", extra={"port": mp, "error": str(exc)})
            else:
                stack.callback(self.http.stop)

        # storage stage (last to stop)
        name = self.part_name
        writer = ReadingWriter(
            storage,
            keys,
            spill_dir=self.data_dir / "spill" / f"readings-{name}",
            max_memory_rows=s.pipeline.writer_memory_rows,
            commit_rows=min(50_000, s.pipeline.writer_memory_rows),
            # Every writer marks the minutes it wrote; whichever takes the refresher's lock
            # refreshes all marked minutes (storage.rollups): one at a time, none missed.
            rollup_interval_s=60.0,
            name=f"readings-{name}",
        ).start()
        self.store = StorageStage(
            writer,
            self.registry,
            self.data_dir / "backlog" / name,
            metrics=self.metrics,
            delay_after_rows=_delay_after_rows(s),
            max_backlog_bytes=s.pipeline.backlog_max_bytes,
        ).start()
        writer.rollup_defer = self.store.behind  # readings before derived rollups
        stack.callback(self.store.stop)

        # detect stage
        detectors = DetectorSet(self.registry)
        self.checkpointer = Checkpointer(
            self.data_dir / "checkpoints" / f"detectors-{name}.npz",
            interval_s=s.pipeline.checkpoint_interval_s,
            metrics=self.metrics,
        )
        watermark = self.checkpointer.load_into(detectors)
        engine = RulesEngine(rules, self.registry, self.clock)
        dispatcher = Dispatcher(
            storage,
            engine,
            clock=self.clock,
            settings=DispatchSettings(outbox=not self.embedded),
            owns=assembly.owner_filter(self.partition),
        )
        restored = dispatcher.start()
        self.detect = DetectStage(
            detectors,
            dispatcher,
            clock=self.clock,
            metrics=self.metrics,
            tick_interval_s=s.pipeline.tick_interval_s,
            mine=mine,
            checkpointer=self.checkpointer,
            on_alerts=self._on_alerts,
        )
        if watermark:
            self.detect.totals.watermark_ms = watermark
        since = watermark or self.clock.now_ms() - round(s.pipeline.resume_lookback_s * 1000)
        self.caught_up, last_ts = catch_up(
            self.detect, storage, self.registry, keys, since, mine=mine
        )
        if s.files.rules is not None:  # the shipped defaults are not edited in place
            self.detect.rules_watch = RulesWatcher(
                engine, s.files.rules, plan_names=list(plans.plans), registry=self.metrics.registry
            )
        self.detect.start()
        stack.callback(self.detect.stop)
        log.info(
            "detect stage started",
            extra={"restored_alerts": restored, "checkpoint_watermark_ms": watermark},
        )

        # console and alert publisher (after the stages they show; stopped before them)
        if s.console.enabled and self.options.serve_console:
            self._start_console(stack, storage)
        if not self.embedded and self.options.publish_alerts:
            self._start_publisher(stack, storage)

        # ingest and the transport (first to stop)
        cfg = IngestConfig(
            root=s.mqtt.root,
            flush_messages=_flush_messages(s),
            # an accelerated simulator's timestamps run ahead of the wall clock
            max_future_s=None if s.sim.enabled and s.sim.speed != 1.0 else s.pipeline.max_future_s,
        )
        self.collector = Collector(
            self.registry,
            sinks=[self.detect.sink, self.store, self.detect.barrier],
            dead_letters=_DeadLetters(storage),
            config=cfg,
            clock=self.clock,
            metrics=self.metrics.ingest,
            # what the broker redelivers but storage already holds is a duplicate
            last_ts_ms=last_ts if self.caught_up else None,
        )
        stack.callback(self.collector.close)
        if self.embedded:
            self._start_inprocess(stack, sim)
        else:
            self._start_mqtt(stack, grids)
        self.metrics.up.set(1)
        stack.callback(lambda: self.metrics.up.set(0))

    def _make_sim(self) -> Any:
        from gridwatch.pipeline.feeder import ScaledClock
        from sim.engine import FleetSim, SimSpec

        s = self.settings.sim
        start_ms = time.time_ns() // 1_000_000
        if s.speed != 1.0:
            self.clock = ScaledClock(start_ms, s.speed)
        return FleetSim(
            self.registry, SimSpec(seed=s.seed, start_ms=start_ms, fault_scale=s.fault_scale)
        )

    def _start_inprocess(self, stack: contextlib.ExitStack, sim: Any) -> None:
        from ingest.inprocess import InProcessTransport

        if self.collector is None:
            raise RuntimeError("collector not assembled")
        self.transport = InProcessTransport(self.collector, max_messages=2_000)
        self.transport.start()
        stack.callback(self.transport.stop)
        if sim is not None:
            from gridwatch.pipeline.feeder import SimFeeder

            s = self.settings.sim
            self.feeder = SimFeeder(
                sim,
                self.transport,
                speed=s.speed,
                root=self.settings.mqtt.root,
                demo=s.demo_faults,
                clock=self.clock,
            ).start()
            stack.callback(self.feeder.stop)

    def _start_mqtt(self, stack: contextlib.ExitStack, grids: list[str] | None) -> None:
        from ingest.mqtt import MqttCollector, MqttSettings
        from ingest.partition import collector_filters

        m = self.settings.mqtt
        if self.collector is None or m.url is None:
            raise RuntimeError("collector not assembled")
        client_id = m.client_id if self.partition is None else f"{m.client_id}-{self.part_name}"
        settings = MqttSettings.from_url(
            m.url,
            client_id=client_id,
            username=m.username,
            password=m.password,
            ca_file=str(m.ca_file) if m.ca_file else None,
            qos=m.qos,
            protocol=m.protocol,
        )
        filters = collector_filters(self.registry, root=m.root, grids=grids)
        self.front = MqttCollector(self.collector, settings, filters)
        self.front.start()
        stack.callback(self.front.stop)
        if not self.front.wait_ready(15.0):
            log.warning("MQTT broker not ready yet; the collector keeps reconnecting")

    def _start_console(self, stack: contextlib.ExitStack, storage: Any) -> None:
        try:
            from alerts.console import ConsoleServer, create_app
            from alerts.service import AlertService
        except ImportError as exc:  # the console's web stack is optional at run time
            log.warning("console not available", extra={"error": str(exc)})
            return
        c = self.settings.console
        service = AlertService(storage, self.registry, plans=self.plans, clock=self.clock)
        try:
            app = create_app(storage, self.registry, service=service, clock=self.clock)
            self.console = ConsoleServer(app, host=c.host, port=c.port).start()
            self.console_url = self.console.url
        except (OSError, RuntimeError) as exc:
            log.warning(
                "console not served", extra={"host": c.host, "port": c.port, "error": str(exc)}
            )
            self.console = None
            return
        stack.callback(self.console.stop)

    def _start_publisher(self, stack: contextlib.ExitStack, storage: Any) -> None:
        from gridwatch.pipeline.publisher import OutboxPump
        from ingest.mqtt import MqttSettings

        m = self.settings.mqtt
        if m.url is None:
            return
        # the collector's account and TLS (broker-auth lets it write the alert topics); MQTT 5
        # whatever mqtt.protocol says: only 5's PUBACK reports an ACL refusal
        broker = MqttSettings.from_url(
            m.url,
            client_id=f"{m.client_id}-alerts",
            username=m.username,
            password=m.password,
            ca_file=str(m.ca_file) if m.ca_file else None,
        )
        self.publisher = OutboxPump(storage, broker, root=m.root)
        self.publisher.start()
        stack.callback(self.publisher.stop)

    def _on_alerts(self, changes: Changes) -> None:
        if self.console is not None:
            self.console.app.state.console.hub.notify()
        if self.publisher is not None:
            self.publisher.wake()

    # -- status -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything ``gridwatch status`` shows; also refreshes the rate gauges."""
        now = time.monotonic()
        c, st, d = self.collector, self.store, self.detect
        accepted = c.accepted if c is not None else 0
        if st is not None:
            st.stored_delta()
        stored = st.writer.stats().written_rows if st is not None else 0
        dt = now - self._rates.t
        if dt >= 0.5:
            self._per_s = (
                (accepted - self._rates.accepted) / dt,
                (stored - self._rates.stored) / dt,
            )
            self._rates = _Rates(now, accepted, stored)
            self.metrics.readings_per_s.set(self._per_s[0])
            self.metrics.stored_per_s.set(self._per_s[1])
        if now >= self._next_queue_poll and self._storage is not None and self.state == "running":
            self._next_queue_poll = now + QUEUE_POLL_S
            self._poll_queues()
        ws = st.writer.stats() if st is not None else None
        lat = {
            g.value: {
                "p50_s": histogram_quantile(self.metrics.latency, 0.5, grade=g.value),
                "p99_s": histogram_quantile(self.metrics.latency, 0.99, grade=g.value),
            }
            for g in (Grade.RED, Grade.YELLOW)
        }
        totals = d.totals if d is not None else None
        return {
            "role": "worker" if self.options.index is not None else "pipeline",
            "name": self.options.name,
            "index": self.options.index,
            "pid": os.getpid(),
            "state": self.state,
            "problem": self.problem() if self.state == "running" else self._failure,
            "started_ms": self.started_ms,
            "uptime_s": round(time.time() - self.started_ms / 1000, 1),
            "partition": self.settings.pipeline.partition,
            "transport": "inprocess" if self.embedded else "mqtt",
            "mqtt_connected": bool(self.front.connected) if self.front is not None else None,
            "storage": mask_url(self.settings.storage.url),
            "metrics_url": self.http.url if self.http is not None else None,
            "console_url": self.console_url,
            "readings": {
                "accepted": accepted,
                "per_s": round(self._per_s[0], 1),
                "messages": c.messages if c is not None else 0,
                "late": c.late_accepted if c is not None else 0,
            },
            "rejected": dict(c.rejected) if c is not None else {},
            "stored": {
                "rows": stored,
                "per_s": round(self._per_s[1], 1),
                "duplicates": ws.duplicate_rows if ws else 0,
                "writer_rows": ws.outstanding_rows if ws else 0,
                "spill_files": ws.spill_files if ws else 0,
                "db_up": ws.db_up if ws else None,
                "delayed_rows": st.delayed_rows if st is not None else 0,
                "backlog_bytes": st.backlog_bytes() if st is not None else 0,
            },
            "alerts": {
                "opened": dict(totals.opened or {}) if totals else {},
                "upgraded": totals.upgraded if totals else 0,
                "cleared": totals.cleared if totals else 0,
                "write_failures": totals.write_failures if totals else 0,
                "latency": lat,
            },
            "queues": {
                "inprocess": self.transport.depth if self.transport is not None else 0,
                "ingest_handoff": c.dispatcher.depth if c is not None else 0,
                "detect": d.depth if d is not None else 0,
                "unacked": self.front.unacked if self.front is not None else 0,
            },
            "dispatch_queues": dict(self._queues),
            "rules": self._rules_status(),
            "device_lag_s": (
                round(max(0.0, (self.clock.now_ms() - totals.watermark_ms) / 1000), 1)
                if totals and totals.watermark_ms
                else None
            ),
            "checkpoint": {
                "saved": self.checkpointer.saved if self.checkpointer else 0,
                "last_saved_ms": self.checkpointer.last_saved_ms if self.checkpointer else 0,
            },
            "sim": self._sim_status(),
            "rss_mb": round(_rss_mb(), 1),
        }

    def _rules_status(self) -> dict[str, Any] | None:
        d = self.detect
        if d is None:
            return None
        if d.rules_watch is not None:
            return d.rules_watch.status()
        return {"digest": d.dispatcher.engine.ruleset.digest}

    def _sim_status(self) -> dict[str, Any] | None:
        f = self.feeder
        if f is None:
            return None
        stats = f.replay.stats
        return {
            "readings": stats.total_readings,
            "sim_s": stats.sim_ms / 1000,
            "faults": stats.faults,
            "behind_s": round(stats.behind_s, 1),
            "demo_faults": f.injector.activated if f.injector else 0,
        }

    def _poll_queues(self) -> None:
        from storage import alerts as db

        try:
            with self._storage.connection(readonly=True) as conn:
                rows = db.queue_depths(conn, self._storage, self.clock.now_ms())
        except Exception as exc:  # a status poll must never hurt the pipeline
            log.warning("queue depth poll failed", extra={"error": str(exc)})
            return
        out: dict[str, int] = {}
        for r in rows:
            for state in ("ready", "claimed", "waiting"):
                key = f"{r['level']}.{state}"
                out[key] = out.get(key, 0) + int(r[state])
        for key, n in out.items():
            level, state = key.split(".")
            self.metrics.dispatch_queue.labels(level, state).set(n)
        self._queues = out


def _rss_mb() -> float:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with Path("/proc/self/statm").open() as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MQTT311_FLUSH_MESSAGES = 400
"""MQTT 3.1.1 has no Receive Maximum: the broker's ``max_inflight_messages`` (1,000 in
``deploy/mosquitto.conf``) bounds the unacknowledged messages, and a flush's messages stay
unacknowledged until it is handed on. Flushing at 400 keeps two flushes inside the window
(MQTT 5 collectors announce 20,000 and keep ingest's default of 2,000)."""


def _flush_messages(s: Settings) -> int:
    if s.mqtt.url is not None and s.mqtt.protocol == "3.1.1":
        return MQTT311_FLUSH_MESSAGES
    return IngestConfig.model_fields["flush_messages"].default  # type: ignore[no-any-return]


def _delay_after_rows(s: Settings) -> int:
    """PostgreSQL: write ahead to the local log (a commit round trip per micro-batch would
    bound ingest; the drain commits large chunks). SQLite commits locally and cheaply."""
    if s.pipeline.delay_storage_after_rows is not None:
        return s.pipeline.delay_storage_after_rows
    return 0 if s.storage.url.startswith(("postgresql://", "postgres://")) else 200_000


class _DeadLetters:
    """``Storage.write_dead_letters`` as ingest's ``DeadLetterSink`` (which returns None)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self.storage.write_dead_letters(letters)
