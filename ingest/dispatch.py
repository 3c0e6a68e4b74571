"""The hand-off between the collector and its consumers: a bounded queue of flushes.

One flush = the accepted readings of a time slice (one ``ReadingBatch`` per kind), its
dead letters, and the acknowledgement tokens of every message in it. The dispatcher calls
each sink, then the dead-letter sink, then ``on_done(flush)`` (the transport's
acknowledgement), strictly in flush order, so order within a device is preserved and a
message is never acknowledged before its readings are handed on.

Back-pressure is explicit: ``submit`` blocks when ``max_pending`` flushes are waiting,
which stops the transport reading from the broker (the broker then holds the messages,
up to its queue limits); the time blocked is counted in
``gridwatch_ingest_backpressure_seconds_total{queue="handoff"}``. A sink that raises is
retried with exponential back-off, and only the sinks that failed are called again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gridwatch.batch import ReadingBatch
from gridwatch.clock import Clock
from gridwatch.deadletter import DeadLetter
from ingest.metrics import IngestMetrics
from ingest.sinks import BatchSink, DeadLetterSink

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Flush:
    """One micro-batch on its way to the sinks. ``tokens`` are the transport's ack
    handles in receive order; ``epoch`` says which connection they belong to."""

    seq: int
    batches: list[ReadingBatch]
    dead_letters: list[DeadLetter]
    tokens: list[Any]
    epoch: int
    n_messages: int
    received_mono: float
    progress: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    dead_letters_done: bool = False

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)


class DispatcherStoppedError(RuntimeError):
    """``submit`` after ``stop``: the flush was not taken (and will not be acknowledged)."""


class Dispatcher:
    """Calls the sinks for each flush, in order, on its own named thread (or inline).

    ``threaded=False`` runs sinks in the caller's thread inside ``submit``: deterministic,
    for tests and single-threaded embedding.
    """

    def __init__(
        self,
        sinks: Sequence[BatchSink],
        dead_letters: DeadLetterSink | None,
        *,
        clock: Clock,
        metrics: IngestMetrics,
        max_pending: int = 4,
        threaded: bool = True,
        retry_max_s: float = 5.0,
        name: str = "gridwatch-ingest-dispatch",
    ) -> None:
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        self.on_done: Callable[[Flush], None] | None = None
        self._clock = clock
        self._metrics = metrics
        self._threaded = threaded
        self._retry_max_s = retry_max_s
        self._name = name
        self._queue: queue.Queue[Flush | None] = queue.Queue(maxsize=max_pending)
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._idle = threading.Condition()
        self._outstanding = 0
        self._thread: threading.Thread | None = None
        self.blocked_s = 0.0
        self.blocked_events = 0
        self.completed = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if not self._threaded or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Hand every queued flush to the sinks, then stop. False when sinks were still
        failing after ``timeout`` s: those flushes stay unacknowledged (redelivered later)."""
        self._stop.set()
        if self._thread is None:
            return True
        drained = self.wait_idle(timeout)
        if not drained:
            self._abandon.set()
        self._queue.put(None)
        self._thread.join(timeout=max(1.0, self._retry_max_s * 2))
        self._thread = None
        return drained

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def outstanding(self) -> int:
        """Flushes submitted and not yet through every sink."""
        with self._idle:
            return self._outstanding

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted flush went through the sinks (True) or timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    # -- producer side --------------------------------------------------------

    def submit(self, flush: Flush) -> None:
        if not self._threaded:
            self._process(flush)
            return
        if self._stop.is_set() or self._abandon.is_set():
            raise DispatcherStoppedError("dispatcher was stopped; flush not taken")
        if self._thread is None:
            self.start()
        with self._idle:
            self._outstanding += 1
        try:
            self._queue.put_nowait(flush)
        except queue.Full:
            self.blocked_events += 1
            self._metrics.backpressure_events.labels("handoff").inc()
            t0 = self._clock.monotonic()
            try:
                while True:
                    if self._abandon.is_set():
                        with self._idle:
                            self._outstanding -= 1
                        raise DispatcherStoppedError("dispatcher was stopped; flush not taken")
                    try:
                        self._queue.put(flush, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            finally:
                waited = self._clock.monotonic() - t0
                self.blocked_s += waited
                self._metrics.backpressure_seconds.labels("handoff").inc(waited)
        self._metrics.queue_depth.set(self._queue.qsize())

    # -- consumer side --------------------------------------------------------

    def _run(self) -> None:
        while True:
            flush = self._queue.get()
            if flush is None:
                return
            self._metrics.queue_depth.set(self._queue.qsize())
            try:
                self._process(flush)
            finally:
                with self._idle:
                    self._outstanding -= 1
                    self._idle.notify_all()

    def _process(self, flush: Flush) -> None:
        batches = [b for b in flush.batches if len(b)]
        for i, sink in enumerate(self.sinks):
            sync = getattr(sink, "sync", None)  # DurableSink: durable once sync returns
            steps = len(batches) + (sync is not None)
            while flush.progress[i] < steps:
                k = flush.progress[i]
                call: Callable[[], object] = (
                    sync
                    if sync is not None and k == len(batches)
                    else partial(sink.write, batches[k])
                )
                if not self._call_with_retry(sink, call):
                    return  # abandoned while a sink kept failing: never acknowledge
                flush.progress[i] += 1
        dl = self.dead_letters
        if dl is not None and flush.dead_letters and not flush.dead_letters_done:
            if not self._call_with_retry(dl, lambda: dl.write_dead_letters(flush.dead_letters)):
                return
            flush.dead_letters_done = True
        self.completed += 1
        self._metrics.batch_latency.observe(max(0.0, self._clock.monotonic() - flush.received_mono))
        if self.on_done is not None:
            try:
                self.on_done(flush)
            except Exception:
                log.exception("acknowledgement hook failed", extra={"flush": flush.seq})

    def _call_with_retry(self, sink: Any, call: Callable[[], object]) -> bool:
        delay = 0.05
        while True:
            try:
                call()
                return True
            except Exception:
                # A worker's outer boundary: a sink bug or outage must not kill ingest.
                name = type(sink).__name__
                self._metrics.sink_errors.labels(name).inc()
                log.exception("sink failed; retrying", extra={"sink": name, "retry_in_s": delay})
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, self._retry_max_s)
