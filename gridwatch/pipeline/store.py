"""Raw telemetry storage that yields to alerts: a database writer with a local backlog.

Under overload the database is the first thing to fall behind. Blocking ingest on it
would delay alerts too, so ``StorageStage`` delays raw storage instead: while the
``ReadingWriter`` holds more than ``delay_after_rows`` readings, accepted batches go to
an append-only backlog on local disk (``ingest.sinks.ReadingLog`` frames, fsynced before
the flush is acknowledged), and an owned drain thread feeds the backlog to the writer
whenever it has room, oldest segment first, deleting a segment only once the database
committed all of it. Nothing accepted is lost or stored twice: the database's
(device, ts) key skips a row written again after a crash.

Memory stays bounded by the writer's ``max_memory_rows``; disk by ``max_backlog_bytes``
(past it, ``write`` blocks: back-pressure to the broker). Delayed readings are counted in
``gridwatch_pipeline_storage_delayed_readings_total``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path

from gridwatch.batch import ReadingBatch
from gridwatch.pipeline.metrics import PipelineMetrics
from gridwatch.registry import Registry
from ingest.ids import DeviceIds
from ingest.sinks import ReadingLog, read_reading_log
from storage.writer import ReadingWriter

log = logging.getLogger(__name__)

SEGMENT_BYTES = 32 << 20
"""A backlog segment is read back whole, so it is kept small."""
ROLLUP_DEFER_BYTES = 64 << 20
"""A backlog this large (~1.5 M readings, half a minute of the district) means the
database is behind: the writer defers its rollup refreshes (``ReadingWriter.rollup_defer``)."""
MIN_DRAIN_BYTES = 1 << 20
"""While earlier segments are being committed, the one being written grows to this
(~25,000 readings) before it is handed on: database commits stay large."""


class StorageStage:
    """A durable batch sink (``write`` + ``sync``) over a writer and a disk backlog."""

    def __init__(
        self,
        writer: ReadingWriter,
        registry: Registry,
        backlog_dir: Path,
        *,
        metrics: PipelineMetrics,
        delay_after_rows: int = 200_000,
        max_backlog_bytes: int = 8 << 30,
        sync_timeout_s: float = 5.0,
    ) -> None:
        self.writer = writer
        self.registry = registry
        self._index_of = DeviceIds(registry)  # built once: the drain maps every row back
        self.dir = Path(backlog_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics = metrics
        self.delay_after_rows = delay_after_rows
        self.max_backlog_bytes = max_backlog_bytes
        self.sync_timeout_s = sync_timeout_s
        self._lock = threading.Condition()
        self._active: ReadingLog | None = None
        self._active_path: Path | None = None
        self._seq = max((int(p.stem) for p in self._segments()), default=0)
        self._delaying = False  # a backlog left by an earlier run drains beside new writes
        self._to_sync = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: collections.deque[tuple[Path, int, int]] = collections.deque()
        self.delayed_rows = 0
        self.drained_rows = 0
        self._stored_seen = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> StorageStage:
        self._thread = threading.Thread(
            target=self._drain_loop, name="gridwatch-storage-backlog", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop draining; what is left in the backlog is replayed by the next start."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._lock:
            if self._active is not None:
                self._active.close()
                self._active = None
                self._active_path = None
        self.writer.stop(timeout_s)
        left = self.backlog_bytes()
        if left:
            log.warning(
                "storage backlog left for the next start",
                extra={"bytes": left, "dir": str(self.dir)},
            )

    def behind(self) -> bool:
        """True while the disk backlog holds more than ``ROLLUP_DEFER_BYTES``."""
        return self.backlog_bytes() > ROLLUP_DEFER_BYTES

    # -- the sink (ingest's dispatcher thread) -------------------------------------------

    def write(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        with self._lock:
            behind = self.writer.stats().outstanding_rows + len(batch) > self.delay_after_rows
            if self._delaying or behind:
                if not self._delaying and self.delay_after_rows > 0:
                    # (with 0 the backlog is the normal write-ahead path: nothing to warn of)
                    log.warning(
                        "database behind: delaying raw storage to the local backlog",
                        extra={"writer_rows": self.writer.stats().outstanding_rows},
                    )
                self._delaying = True
                self._append(batch)
                return
        self.writer.submit(batch)
        self._to_sync = True

    def sync(self) -> None:
        """Durable before the acknowledgement: committed, or fsynced in the backlog."""
        if not self._to_sync:
            return
        self._to_sync = False
        # committed, or (database down) spilled to the writer's fsynced files
        while not self.writer.sync(timeout=self.sync_timeout_s):
            stats = self.writer.stats()
            log.warning(
                "waiting for the database before acknowledging",
                extra={"writer_rows": stats.outstanding_rows, "db_up": stats.db_up},
            )

    def _append(self, batch: ReadingBatch) -> None:
        while self.backlog_bytes() >= self.max_backlog_bytes and not self._stop.is_set():
            self._lock.wait(0.5)  # disk bound reached: back-pressure
        if self._active is None or self._active.path.stat().st_size >= SEGMENT_BYTES:
            if self._active is not None:
                self._active.close()
            self._seq += 1
            self._active_path = self.dir / f"{self._seq:012d}.log"
            self._active = ReadingLog(self._active_path, self.registry, fsync=True)
        self._active.write(batch)  # fsynced: durable before the flush is acknowledged
        self.delayed_rows += len(batch)
        self.metrics.delayed.inc(len(batch))
        self._lock.notify_all()

    # -- the drain thread ----------------------------------------------------------------

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.log"))

    def backlog_bytes(self) -> int:
        total = 0
        for p in self._segments():
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._drain_once():
                    with self._lock:
                        self._lock.wait(0.2)
            except Exception:  # the thread's outer loop: log, wait, retry
                log.exception("storage backlog drain failed; retrying")
                self._stop.wait(1.0)
            self.metrics.backlog_bytes.set(self.backlog_bytes())
            self.metrics.writer_rows.set(self.writer.stats().outstanding_rows)

    def _drain_once(self) -> bool:
        """Retire segments the database has, hand the next one to the writer; False when
        there was nothing to do.

        Pipelined: a segment is submitted while earlier ones are still being committed, and
        deleted once every row submitted up to it is durable. The writer works its queue
        in order, so "rows accepted minus rows outstanding" counts the durable prefix.
        """
        stats = self.writer.stats()
        durable = stats.accepted_rows - stats.outstanding_rows
        retired = False
        while self._inflight and self._inflight[0][1] <= durable:
            path, _, n = self._inflight.popleft()
            self.drained_rows += n
            path.unlink(missing_ok=True)
            retired = True
        room = max(self.delay_after_rows // 2, self.writer.max_memory_rows // 2)
        if stats.outstanding_rows > room:
            return retired
        taken = {p for p, _, _ in self._inflight}
        with self._lock:
            segs = [p for p in self._segments() if p not in taken]
            if not segs:
                if self._delaying and not self._inflight:
                    self._delaying = False
                    log.info("storage backlog drained; writing directly again")
                return retired
            path = segs[0]
            if path == self._active_path and self._active is not None:
                if self._inflight and self._active.path.stat().st_size < MIN_DRAIN_BYTES:
                    return retired  # let the segment being written grow while others commit
                self._active.close()  # the segment being written: rotate it out first
                self._active = None
                self._active_path = None
        n = 0
        for batch in read_reading_log(path, self.registry, index_of=self._index_of):
            self.writer.submit(batch)
            n += len(batch)
            if self._stop.is_set():
                return True  # the rest stays in the segment; the database skips repeats
        self._inflight.append((path, self.writer.stats().accepted_rows, n))
        return True

    def stored_delta(self) -> int:
        """Readings committed since the last call (for the stored-readings counter)."""
        written = self.writer.stats().written_rows
        delta = written - self._stored_seen
        self._stored_seen = written
        if delta > 0:
            self.metrics.stored.inc(delta)
        return max(0, delta)

    def wait_drained(self, timeout_s: float) -> bool:
        """True once the backlog is empty and the writer committed everything (tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._segments() and self.writer.flush(timeout=0.2):
                return True
            time.sleep(0.05)
        return False
