"""The embedded transport: a bounded in-process queue instead of a broker.

The simulator's in-process sink is a ``Callable[[str, bytes], None]``; an
``InProcessTransport`` is one. Messages take exactly the path MQTT messages take
(``Collector.on_message``), so the embedded default exercises the same decoding and
validation as production. When the queue is full the producer blocks (explicit
back-pressure, counted in ``gridwatch_ingest_backpressure_seconds_total{queue="inprocess"}``):
memory stays bounded whatever the producer's rate.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Final, cast

from ingest.collector import Collector
from ingest.dispatch import DispatcherStoppedError

log = logging.getLogger(__name__)

_STOP: Final = object()
_IDLE_WAIT_S: Final = 0.1


class InProcessTransport:
    """``transport(topic, payload)`` feeds ``collector`` through a queue of ``max_messages``.

    With ``threaded=True`` (default) a named consumer thread owned by this object drains
    the queue; ``start``/``stop`` bound its life. With ``threaded=False`` the call runs the
    collector in the caller's thread (no queue), for deterministic single-thread use.
    """

    def __init__(
        self,
        collector: Collector,
        *,
        max_messages: int = 10_000,
        threaded: bool = True,
        name: str = "gridwatch-ingest-inprocess",
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        self.collector = collector
        self._threaded = threaded
        self._name = name
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_messages)
        self._thread: threading.Thread | None = None
        self.blocked_s = 0.0
        self.blocked_events = 0
        self.delivered = 0

    def start(self) -> None:
        self.collector.start()
        if self._threaded and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the consumer thread runs (always True when unthreaded)."""
        return not self._threaded or (self._thread is not None and self._thread.is_alive())

    @property
    def depth(self) -> int:
        """Messages waiting for the collector (status and metrics; approximate)."""
        return self._queue.qsize()

    def __call__(self, topic: str, payload: bytes) -> None:
        if not self._threaded:
            self.collector.on_message(topic, payload)
            self.collector.poll()
            return
        if self._thread is None:
            raise RuntimeError("InProcessTransport.start() was not called")
        item = (topic, payload)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            clock = self.collector.clock
            self.blocked_events += 1
            self.collector.metrics.backpressure_events.labels("inprocess").inc()
            t0 = clock.monotonic()
            self._queue.put(item)
            waited = clock.monotonic() - t0
            self.blocked_s += waited
            self.collector.metrics.backpressure_seconds.labels("inprocess").inc(waited)

    def sync(self, timeout: float | None = 60.0) -> bool:
        """Block until everything sent so far is judged and through every sink."""
        if not self._threaded:
            self.collector.flush()
            return self.collector.dispatcher.wait_idle(timeout)
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            return False
        return self.collector.dispatcher.wait_idle(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued, flush, wait for the sinks, stop the threads."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        return self.collector.close(timeout)

    def _run(self) -> None:
        c = self.collector
        get = self._queue.get
        while True:
            wait = c.next_flush_in()
            try:
                item = get(timeout=_IDLE_WAIT_S if wait is None else max(wait, 0.001))
            except queue.Empty:
                item = None
            try:
                if item is None:
                    c.poll()
                    c.metrics.inproc_depth.set(self._queue.qsize())
                    c.metrics.pending_rows.set(c.pending_rows)
                elif item is _STOP:
                    c.flush()
                    return
                elif isinstance(item, threading.Event):
                    c.flush()
                    item.set()
                else:
                    topic, payload = cast(tuple[str, bytes], item)
                    c.on_message(topic, payload)
                    self.delivered += 1
                    c.poll()
                    if not self.delivered & 1023:  # gauges sampled, not set per message
                        c.metrics.inproc_depth.set(self._queue.qsize())
                        c.metrics.pending_rows.set(c.pending_rows)
            except DispatcherStoppedError:
                log.error("the sinks were stopped before the in-process transport")
                return
            except Exception:
                # The worker's outer boundary: log and keep consuming.
                log.exception("in-process transport failed on a message; continuing")
