"""Detectors -> rules -> durable alerts, on one owned thread fed by ingest's sinks.

The collector's dispatcher hands every flush to its sinks in order and acknowledges the
flush's MQTT messages only after the last sink returns. ``DetectStage`` gives it two:
``sink`` (queues the batches for the detect thread, returns at once, so detection runs
while storage commits) and ``barrier`` (its ``sync`` waits until the detect thread has
made the flush's alerts durable). A reading is therefore never acknowledged before the
alerts it causes are in the dispatch queues: a crash before that point redelivers it.

The rules engine and the alert dispatcher are single-threaded by design; the detect thread
owns them, and runs the timers (offline checks, clears, escalation) between batches.

Timer checks use device time, not the wall clock (``tick_now_ms``): a worker catching up
on a backlog after a restart, or taking a burst, does not call the fleet offline, and a
replay ticks in simulated time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.dispatch import Dispatcher
from detectors.detectorset import DetectorSet
from gridwatch.batch import Detections, ReadingBatch
from gridwatch.clock import Clock
from gridwatch.domain import DetectionKind, DeviceKind, Grade
from gridwatch.pipeline.checkpoint import Checkpointer
from gridwatch.pipeline.metrics import PipelineMetrics
from gridwatch.pipeline.rules_watch import RulesWatcher
from rules.engine import Changes

log = logging.getLogger(__name__)

NEVER = np.iinfo(np.int64).min
_BARRIER = object()
_STOP = object()


@dataclass(slots=True)
class DetectTotals:
    """Plain tallies for the status file (metrics hold the same as Prometheus series)."""

    batches: int = 0
    readings: int = 0
    detections: int = 0
    opened: dict[str, int] | None = None
    upgraded: int = 0
    cleared: int = 0
    write_failures: int = 0
    watermark_ms: int = 0
    last_tick_ms: int = 0

    def __post_init__(self) -> None:
        if self.opened is None:
            self.opened = {g.value: 0 for g in Grade}


class DetectStage:
    """One thread running ``detectors`` and ``dispatcher`` (which owns the rules engine).

    ``mine`` (bool per dense device index) restricts timer detections to this worker's
    devices: the detector state covers the whole registry, but another worker's devices
    are silent here, not offline. ``on_alerts`` is called after alerts were made durable
    (the console's live feed, the MQTT publisher).
    """

    def __init__(
        self,
        detectors: DetectorSet,
        dispatcher: Dispatcher,
        *,
        clock: Clock,
        metrics: PipelineMetrics,
        tick_interval_s: float = 1.0,
        mine: npt.NDArray[np.bool_] | None = None,
        checkpointer: Checkpointer | None = None,
        on_alerts: Callable[[Changes], None] | None = None,
        max_batches: int = 64,
        name: str = "gridwatch-detect",
        collect: list[Detections] | None = None,
        stream_grace_s: float = 120.0,
    ) -> None:
        self.detectors = detectors
        self.dispatcher = dispatcher
        self.clock = clock
        self.metrics = metrics
        self.tick_interval_s = tick_interval_s
        self.mine = mine
        self.checkpointer = checkpointer
        self.on_alerts = on_alerts
        self.totals = DetectTotals()
        self.collect = collect
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_batches)
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._next_tick = 0.0
        self._done = threading.Condition()
        self._submitted = 0
        self._completed = 0
        reg = detectors.registry
        self._stream_of = reg.device_grid.astype(np.int64) * len(DeviceKind)
        self._stream_wm = np.full(max(1, reg.grid_ids.size) * len(DeviceKind), NEVER, np.int64)
        self._grace_ms = round(stream_grace_s * 1000)
        self.sink = _Sink(self)
        self.barrier = _Barrier(self)
        self.rules_watch: RulesWatcher | None = None  # set by the worker: reload on edit

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> DetectStage:
        if self._thread is not None:
            raise RuntimeError("detect stage already started")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Process what is queued, flush the dispatcher's write-behind, save a checkpoint."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("detect thread did not stop in time", extra={"timeout_s": timeout})
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    # -- producer side (the ingest dispatcher thread) -----------------------------------

    def submit(self, batch: ReadingBatch) -> None:
        self._check()
        self._queue.put(batch)
        self.metrics.detect_queue.set(self._queue.qsize())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far went through detectors and rules."""
        self._check()
        with self._done:
            self._submitted += 1
            seq = self._submitted
        self._queue.put((_BARRIER, seq))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._completed < seq:
                self._check()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(0.5 if left is None else min(left, 0.5))
        return True

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"detect thread failed: {self._error!r}") from self._error
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("detect stage is not running")

    # -- the detect thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._next_tick = time.monotonic() + self.tick_interval_s
            while True:
                timeout = max(0.0, self._next_tick - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    self.finish()
                    return
                if isinstance(item, ReadingBatch):
                    self.process_batch(item)
                elif isinstance(item, tuple) and item[0] is _BARRIER:
                    with self._done:
                        self._completed = item[1]
                        self._done.notify_all()
                if time.monotonic() >= self._next_tick:
                    self.run_timers()
        except BaseException as exc:  # the thread's outer boundary: surface it to the owner
            self._error = exc
            log.exception("detect thread failed")
            with self._done:
                self._done.notify_all()

    def process_batch(self, batch: ReadingBatch) -> None:
        """Detectors, rules, durable alerts for one batch (the detect thread, or inline)."""
        if len(batch) == 0:
            return
        t0 = time.perf_counter()
        det = self.detectors.update(batch)
        self.metrics.detect_seconds.labels(batch.kind.value).observe(time.perf_counter() - t0)
        self.totals.batches += 1
        self.totals.readings += len(batch)
        newest = int(batch.ts_ms.max())
        self.totals.watermark_ms = max(self.totals.watermark_ms, newest)
        np.maximum.at(self._stream_wm, self._stream_of[batch.device] + batch.kind.code, batch.ts_ms)
        self._handle(det)

    def _handle(self, det: Detections) -> None:
        """Rules and the durable write; a failed write is retried before anything else."""
        if len(det):
            self.totals.detections += len(det)
            for code, n in zip(*np.unique(det.kind, return_counts=True), strict=True):
                self.metrics.detections.labels(DetectionKind.from_code(int(code)).value).inc(int(n))
            if self.collect is not None:
                self.collect.append(det)
        delay = 0.05
        t0 = time.perf_counter()
        while True:
            try:
                changes = self.dispatcher.handle(det) if len(det) else self._retry_only()
                break
            except Exception:
                # The database refused the alert write: the dispatcher kept the changes in
                # its backlog; retry (with the next batch's changes) until it takes them.
                self.totals.write_failures += 1
                self.metrics.alert_write_failures.inc()
                log.warning("alert write failed; retrying", extra={"retry_in_s": delay})
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                det = Detections.empty()
        self.metrics.rules_seconds.observe(time.perf_counter() - t0)
        self._account(changes)

    def _retry_only(self) -> Changes:
        self.dispatcher.handle(Detections.empty())
        return Changes()

    def _account(self, changes: Changes) -> None:
        if not changes:
            return
        now_ms = self.clock.now_ms()
        opened = self.totals.opened or {}
        for o in changes.opened:
            opened[o.grade.value] = opened.get(o.grade.value, 0) + 1
            self.metrics.alerts.labels(o.grade.value, "opened").inc()
            if o.silenced:
                continue
            wait_ms = 0
            if o.grade is not Grade.RED:
                spec = self.dispatcher.engine.ruleset.notify(o.grade)
                wait_ms = round(spec.group_wait_s * 1000)
            latency = (now_ms + wait_ms - o.last_seen_ms) / 1000
            self.metrics.latency.labels(o.grade.value).observe(max(0.0, latency))
            log.debug(
                "alert opened",
                extra={"alert": o.alert.value, "grade": o.grade.value, "latency_s": latency},
            )
        for u in changes.upgraded:
            self.totals.upgraded += 1
            self.metrics.alerts.labels(u.grade.value, "upgraded").inc()
        if changes.cleared:
            self.totals.cleared += len(changes.cleared)
            self.metrics.alerts_cleared.inc(len(changes.cleared))
        if self.on_alerts is not None:
            try:
                self.on_alerts(changes)
            except Exception:
                log.exception("alert hook failed")

    def tick_now_ms(self) -> int | None:
        """Device-time 'now' of the timer checks (None until readings arrived).

        Every (grid, kind) message stream has its own watermark (newest timestamp
        received). Streams arrive skewed: a gateway's batch, a broker backlog drained
        after a restart, a burst. 'Now' is the watermark of the slowest *active* stream,
        so that no device looks silent only because its stream's next message has not
        been processed yet; a stream more than ``stream_grace_s`` behind the newest one
        is stalled (a gateway down), left out, and its devices do go offline. Never past
        the wall clock, never backwards.
        """
        wm = self._stream_wm
        top = int(wm.max())
        if top == NEVER:
            return None
        safe = int(wm[wm >= top - self._grace_ms].min())
        now = min(self.clock.now_ms(), safe)
        return max(now, self.totals.last_tick_ms)

    def run_timers(self) -> None:
        """Timer checks at the device-time 'now' (the detect thread, or inline)."""
        self._next_tick = time.monotonic() + self.tick_interval_s
        if self.rules_watch is not None:
            self.rules_watch.check()  # here: the engine is this thread's alone
        now_dev = self.tick_now_ms()
        if now_dev is None:
            return  # nothing heard yet: nothing can be offline in device time
        det = self.detectors.tick(now_dev)
        if self.mine is not None and len(det):
            det = det.take(np.flatnonzero(self.mine[det.device]))
        self.totals.last_tick_ms = now_dev
        self._handle(det)
        while True:
            try:
                changes = self.dispatcher.tick()
                break
            except Exception:
                self.totals.write_failures += 1
                self.metrics.alert_write_failures.inc()
                log.warning("alert timers failed; retrying")
                time.sleep(0.5)
        self._account(changes)
        lag = max(0.0, (self.clock.now_ms() - self.totals.watermark_ms) / 1000)
        self.metrics.device_lag.set(lag)
        if self.checkpointer is not None:
            self.checkpointer.maybe_save(self.detectors, self.totals.watermark_ms)

    def finish(self) -> None:
        """Write the alert counters behind and checkpoint (at stop, or after a replay)."""
        try:
            self.dispatcher.close()
        except Exception:
            log.exception("final alert flush failed; open alert counts may lag")
        if self.checkpointer is not None:
            self.checkpointer.save_now(self.detectors, self.totals.watermark_ms)
        with self._done:
            self._completed = self._submitted
            self._done.notify_all()


class _Sink:
    """BatchSink: hands batches to the detect thread without waiting for it."""

    def __init__(self, stage: DetectStage) -> None:
        self._stage = stage

    def write(self, batch: ReadingBatch) -> None:
        self._stage.submit(batch)


class _Barrier:
    """DurableSink with nothing to write: ``sync`` waits until the flush's alerts are durable."""

    def __init__(self, stage: DetectStage) -> None:
        self._stage = stage

    def write(self, batch: ReadingBatch) -> None:
        return None

    def sync(self) -> None:
        while not self._stage.wait(timeout=30.0):
            log.warning("waiting for the detect stage before acknowledging")
