"""A labelled scenario through the whole pipeline, as fast as it goes, deterministically.

The same stages as ``gridwatch run``, minus the threads: the simulator's messages (the
contract's bytes) go through ``ingest.Collector`` (decode, validate), the detectors, the
rules and the alert dispatcher into a fresh database, with readings stored beside. The
clock is the simulation's (a ``ManualClock`` moved to each step's end), so for-durations,
clears and escalations behave as they would live, only faster, and a seed reproduces the
same alerts. ``evaluate`` then scores the stored alerts against the simulator's labels.

One thread does everything except the reading writer (its own thread, as in production),
so the throughput figures are those of one pipeline worker on one core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from alerts.dispatch import Dispatcher, DispatchSettings
from alerts.plans import DEFAULT_PLANS_PATH, load_plans
from detectors.detectorset import DetectorSet
from detectors.evaluate import evaluate as evaluate_detections
from gridwatch.batch import Detections
from gridwatch.clock import ManualClock
from gridwatch.deadletter import DeadLetter
from gridwatch.pipeline.detect import DetectStage
from gridwatch.pipeline.evaluate import AlertRow, evaluate_alerts
from gridwatch.pipeline.metrics import PipelineMetrics
from gridwatch.registry import Registry
from ingest.collector import Collector
from ingest.config import IngestConfig
from rules.engine import RulesEngine
from rules.load import DEFAULT_RULES_PATH, load_rules
from sim.engine import FleetSim, SimSpec
from sim.fleet import FleetSpec, build_fleet
from sim.publish import MessageEncoder, PayloadFormat
from storage import ReadingWriter, Storage, open_storage

log = logging.getLogger(__name__)

TICK_MS = 10_000
"""Timer checks every 10 simulated seconds (offline limits are 30 s and more)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """What to replay. Defaults: 10,000 devices for 2 simulated hours (the first 10
    minutes are the simulator's fault-free warm-up), the default fault rates."""

    devices: int = 10_000
    duration_s: float = 7200.0
    seed: int = 20261126
    fault_scale: float = 1.0
    rates: Mapping[str, float] = field(default_factory=dict)
    step_s: float = 2.0
    rules: Path | None = None
    plans: Path | None = None
    store_readings: bool = True
    detections: bool = True
    """Also score the detectors (``detectors.evaluate``) from the detections seen."""


@dataclass(slots=True)
class ReplayResult:
    scenario: Scenario
    registry: Registry
    labels: list[Any]
    alerts: list[AlertRow]
    end_ms: int
    start_ms: int
    wall_s: float
    readings: int
    stored: int
    rejected: dict[str, int]
    timeline: dict[str, list[float]]
    alert_rows: list[dict[str, Any]]
    detections: Detections | None
    rules_digest: str

    def evaluation(self) -> dict[str, Any]:
        return evaluate_alerts(self.alerts, self.labels, self.end_ms)

    def detector_evaluation(self) -> dict[str, Any] | None:
        if self.detections is None:
            return None
        return evaluate_detections(self.detections, self.labels, self.end_ms)


class _Inline:
    """Ingest sink that runs the detect stage in the caller's thread (no queue)."""

    def __init__(self, stage: DetectStage) -> None:
        self.stage = stage

    def write(self, batch: Any) -> None:
        self.stage.process_batch(batch)


class _WriterSink:
    def __init__(self, writer: ReadingWriter) -> None:
        self.writer = writer

    def write(self, batch: Any) -> None:
        self.writer.submit(batch)


def run_replay(
    scenario: Scenario,
    db_url: str,
    work_dir: Path,
    *,
    readings_url: str | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> ReplayResult:
    """Replay ``scenario`` into the (empty) database at ``db_url``; see the module docstring.

    ``readings_url`` puts raw readings in a database of their own: with SQLite, one file
    for alerts and one for readings, so the alert writes never wait for SQLite's single
    write lock behind a 50,000-row reading commit.
    """
    registry = build_fleet(FleetSpec(n_devices=scenario.devices, seed=scenario.seed))
    plans = load_plans(scenario.plans or DEFAULT_PLANS_PATH)
    rules = load_rules(
        scenario.rules or DEFAULT_RULES_PATH, registry=registry, plan_names=list(plans.plans)
    )
    sim = FleetSim(
        registry,
        SimSpec(seed=scenario.seed, fault_scale=scenario.fault_scale, rates=scenario.rates),
    )
    clock = ManualClock(sim.now_ms)
    storage = open_storage(db_url)
    readings_store = None
    try:
        storage.migrate()
        keys = storage.save_registry(registry)
        if scenario.store_readings and readings_url and readings_url != db_url:
            readings_store = open_storage(readings_url)
            readings_store.migrate()
            rkeys = readings_store.save_registry(registry)
            target = (readings_store, rkeys)
        else:
            target = (storage, keys)
        return _run(scenario, registry, rules, sim, clock, storage, target, work_dir, progress)
    finally:
        if readings_store is not None:
            readings_store.close()
        storage.close()


def _run(  # noqa: PLR0917 - internal: the assembled pieces of run_replay
    scenario: Scenario,
    registry: Registry,
    rules: Any,
    sim: FleetSim,
    clock: ManualClock,
    storage: Storage,
    readings_target: tuple[Storage, Any],
    work_dir: Path,
    progress: Callable[[float, int], None] | None,
) -> ReplayResult:
    metrics = PipelineMetrics(CollectorRegistry(auto_describe=True))
    engine = RulesEngine(rules, registry, clock)
    # Nobody else writes the replay's database: poll it rarely (simulated seconds).
    quiet = DispatchSettings(
        flush_interval_s=10.0, silence_poll_s=300.0, resolved_poll_s=300.0, outbox=False
    )
    dispatcher = Dispatcher(storage, engine, clock=clock, settings=quiet)
    dispatcher.start()
    collected: list[Detections] | None = [] if scenario.detections else None
    stage = DetectStage(
        DetectorSet(registry), dispatcher, clock=clock, metrics=metrics, collect=collected
    )
    writer = None
    sinks: list[Any] = [_Inline(stage)]
    if scenario.store_readings:
        writer = ReadingWriter(
            *readings_target, spill_dir=work_dir / "spill", rollup_interval_s=None
        ).start()
        sinks.append(_WriterSink(writer))
    collector = Collector(
        registry,
        sinks=sinks,
        dead_letters=_DeadLetters(storage),
        config=IngestConfig(max_future_s=None, max_age_s=None, flush_messages=100_000),
        clock=clock,
        metrics=metrics.ingest,
        threaded=False,
    )
    encoder = MessageEncoder(registry, PayloadFormat.BINARY)
    step_ms = max(100, round(scenario.step_s * 1000))
    start_ms = sim.now_ms
    end_ms = start_ms + round(scenario.duration_s * 1000)
    timeline: dict[str, list[float]] = {
        "sim_s": [],
        "wall_s": [],
        "readings": [],
        "readings_per_s": [],
    }
    t_start = time.perf_counter()
    last_wall = t_start
    readings = 0
    next_tick = start_ms
    try:
        while sim.now_ms < end_ms:
            target = min(sim.now_ms + step_ms, end_ms)
            clock.set_ms(target)
            n = 0
            for batch in sim.advance(target):
                n += len(batch)
                for msg in encoder.messages(batch):
                    collector.on_message(msg.topic, msg.payload)
            collector.flush()
            if target >= next_tick or target >= end_ms:
                stage.run_timers()
                next_tick = target + TICK_MS
            readings += n
            now = time.perf_counter()
            timeline["sim_s"].append((target - start_ms) / 1000)
            timeline["wall_s"].append(now - t_start)
            timeline["readings"].append(n)
            timeline["readings_per_s"].append(n / max(now - last_wall, 1e-9))
            last_wall = now
            if progress is not None:
                progress((target - start_ms) / (end_ms - start_ms), readings)
        stage.finish()
        if writer is not None:
            writer.flush()
    finally:
        if writer is not None:
            writer.stop()
    wall = time.perf_counter() - t_start
    rows = _stored_alerts(storage)
    alerts = [
        AlertRow(
            device_id=r["device_id"],
            kind=r["kind"],
            grade=r["grade"],
            first_seen_ms=int(r["first_seen_ms"]),
            opened_ms=int(r["opened_ms"]),
            end_ms=int(r["resolved_ms"] or end_ms),
        )
        for r in rows
        if r["scope"] == "device" and r["device_id"]
    ]
    stored = writer.stats().written_rows if writer is not None else 0
    return ReplayResult(
        scenario=scenario,
        registry=registry,
        labels=sim.labels,
        alerts=alerts,
        end_ms=end_ms,
        start_ms=start_ms,
        wall_s=wall,
        readings=readings,
        stored=stored,
        rejected=dict(collector.rejected),
        timeline=timeline,
        alert_rows=rows,
        detections=Detections.concat(collected) if collected is not None else None,
        rules_digest=str(rules.digest),
    )


def _stored_alerts(storage: Storage) -> list[dict[str, Any]]:
    cols = (
        "id",
        "kind",
        "grade",
        "scope",
        "scope_id",
        "device_id",
        "grid",
        "street",
        "first_seen_ms",
        "last_seen_ms",
        "opened_ms",
        "resolved_ms",
        "resolution",
        "count",
    )
    with storage.connection(readonly=True) as conn:
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM alerts ORDER BY id").fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


def latency_array(evaluation: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per fault kind, the times to alert (s) of the labels found."""
    return {
        k: np.asarray(v.get("time_to_alert_s") or [], dtype=float)
        for k, v in evaluation.items()
        if not k.startswith("_")
    }


class _DeadLetters:
    """``Storage.write_dead_letters`` as ingest's ``DeadLetterSink`` (which returns None)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self.storage.write_dead_letters(letters)
