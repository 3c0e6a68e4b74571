"""The reading writer: takes ``ReadingBatch``es from the pipeline and makes them durable.

Asynchronous from the caller: ``submit`` only maps device keys and appends to a bounded
in-memory FIFO; one owned, named worker thread writes chunks of ``commit_rows`` rows
(``storage.sinks``: binary COPY on PostgreSQL, executemany on SQLite). A partial chunk
waits up to ``linger_s`` for more rows, so commits stay large under load.

Back-pressure is explicit: when ``max_memory_rows`` are waiting, ``submit`` blocks (up to
its ``timeout``, then raises ``WriterFullError``) and ``offer`` returns False.

When the database is unreachable the worker keeps accepting: it moves the FIFO to spill
files on local disk (``storage.spill``) whenever half of the memory bound is used,
retries with exponential back-off, and on recovery replays the files oldest first, then
memory. Order of acceptance is kept, a spill file is deleted only once all of its rows
are committed, and a row written twice (a commit whose acknowledgement was lost) is
skipped by the (device, ts) key. So no accepted reading is lost and none is stored twice;
``stop`` spills what it cannot write, and the next writer on the same ``spill_dir``
replays it. The disk is bounded too (``max_spill_bytes``): past it, back-pressure again.

The sink marks the minutes of every chunk stale in the chunk's own transaction, and
every ``rollup_interval_s`` the worker refreshes the stale minutes that ended
``rollup_grace_s`` ago, whichever writer wrote them (one writer at a time:
``storage.rollups``), so rollups follow late and replayed readings too. The grace keeps
the minute still being written from being recomputed at every turn; ``stop`` refreshes
everything that is marked. While the owner reports raw storage behind (``rollup_defer``)
refreshes wait, at most ``rollup_max_defer_s``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gridwatch.batch import ReadingBatch
from gridwatch.clock import Clock, SystemClock
from gridwatch.errors import StorageError
from storage.partitions import PartitionPolicy
from storage.rows import Rows
from storage.sinks import Sink, SinkUnavailableError, make_sink
from storage.spill import SpillDir

if TYPE_CHECKING:
    from storage.engine import Storage

log = logging.getLogger(__name__)

DEFAULT_SPILL_DIR = Path("data/spill/readings")


class WriterFullError(StorageError):
    """``submit`` timed out: memory (and spill disk, if the database is down) is full."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    accepted_rows: int
    written_rows: int
    duplicate_rows: int
    outstanding_rows: int
    memory_rows: int
    spilled_rows: int
    replayed_rows: int
    spill_files: int
    quarantined_rows: int
    outages: int
    db_up: bool
    rollup_rows: int
    errors: int
    last_error: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReadingWriter:
    """Durable, ordered, idempotent writes of reading batches (see module docstring).

    ``keys`` maps the registry's dense index to the storage device key (the array
    ``Storage.save_registry`` returns). Use as a context manager or call ``start``/``stop``.
    """

    def __init__(
        self,
        storage: Storage,
        keys: npt.NDArray[np.int32],
        *,
        spill_dir: Path | str = DEFAULT_SPILL_DIR,
        commit_rows: int = 50_000,
        max_memory_rows: int = 1_000_000,
        max_spill_bytes: int = 4 << 30,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 10.0,
        linger_s: float = 0.2,
        rollup_interval_s: float | None = 60.0,
        rollup_grace_s: float = 10.0,
        rollup_max_defer_s: float = 300.0,
        maintenance_interval_s: float | None = 3600.0,
        policy: PartitionPolicy | None = None,
        clock: Clock | None = None,
        name: str = "readings",
        sink: Sink | None = None,
    ) -> None:
        for pname, value in (("commit_rows", commit_rows), ("max_memory_rows", max_memory_rows)):
            if value < 1:
                raise ValueError(f"{pname} must be >= 1, got {value}")
        if max_memory_rows < commit_rows:
            raise ValueError(
                f"max_memory_rows ({max_memory_rows}) must be >= commit_rows ({commit_rows})"
            )
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(
                f"need 0 < retry_initial_s <= retry_max_s, got {retry_initial_s}, {retry_max_s}"
            )
        self.storage = storage
        self.keys = np.asarray(keys, dtype=np.int32)
        self.commit_rows = commit_rows
        self.max_memory_rows = max_memory_rows
        self.max_spill_bytes = max_spill_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.linger_s = linger_s
        self.rollup_interval_s = rollup_interval_s
        self.rollup_grace_ms = round(rollup_grace_s * 1000)
        self.rollup_max_defer_s = rollup_max_defer_s
        self.rollup_defer: Callable[[], bool] | None = None
        """Set by the owner: True while raw storage is behind (its backlog grows). Rollups
        are derived and can be recomputed any time, so their refresh waits then, for at
        most ``rollup_max_defer_s`` since the last one: the database's time goes to the
        readings first. The marks keep every stale minute meanwhile."""
        self.maintenance_interval_s = maintenance_interval_s
        self.clock = clock or SystemClock()
        self.name = name
        self._sink = sink or make_sink(
            storage,
            policy=policy,
            clock=self.clock,
            application_name=f"gridwatch-writer-{name}",
        )
        self._spill = SpillDir(spill_dir)
        self._cond = threading.Condition()
        self._mem: collections.deque[Rows] = collections.deque()
        self._mem_rows = 0
        self._mem_since = 0.0  # when the oldest row now in memory arrived (clock.monotonic)
        self._flushing = 0  # callers waiting in flush(): write partial chunks at once
        self._stopping = False
        self._stop_deadline: float | None = None
        self._thread: threading.Thread | None = None
        # Worker-owned state.
        self._retry: list[Rows] = []  # a chunk taken from memory whose write failed
        self._replay_file: Path | None = None
        self._replay_runs: list[Rows] = []
        self._down = False
        self._retry_at = 0.0
        self._backoff = retry_initial_s
        self._last_rollup = self.clock.monotonic()
        self._next_maintenance = self.clock.monotonic()  # first pass at start-up
        # Counters (read under the lock by stats()).
        self._c = dict.fromkeys(
            (
                "accepted",
                "written",
                "duplicates",
                "spilled",
                "replayed",
                "quarantined",
                "outages",
                "rollup_rows",
                "outstanding",
                "errors",
            ),
            0,
        )
        self._spill_files = len(self._spill.files())
        self._last_error = ""

    # -- caller side ------------------------------------------------------------

    def start(self) -> ReadingWriter:
        if self._thread is not None:
            raise RuntimeError("writer already started")
        self._thread = threading.Thread(
            target=self._run, name=f"gridwatch-writer-{self.name}", daemon=True
        )
        self._thread.start()
        if self._spill_files:
            log.info(
                "replaying spill files from an earlier run",
                extra={"files": self._spill_files, "spill_dir": str(self._spill.path)},
            )
        return self

    def __enter__(self) -> ReadingWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(self, batch: ReadingBatch, timeout: float | None = None) -> None:
        """Accept a batch; blocks while memory is full, ``WriterFullError`` after ``timeout`` s."""
        with self._cond:
            self._check_running()
        rows = Rows.from_batch(batch, self.keys)
        if not len(rows):
            return
        with self._cond:
            self._check_running()
            ok = self._cond.wait_for(
                lambda: (
                    self._stopping
                    or self._c["outstanding"] == 0
                    or self._c["outstanding"] + len(rows) <= self.max_memory_rows
                ),
                timeout=timeout,
            )
            self._check_running()
            if not ok:
                raise WriterFullError(
                    f"writer {self.name!r}: {self._c['outstanding']} rows held in memory "
                    f"(max_memory_rows={self.max_memory_rows}) after {timeout} s; "
                    f"database up: {not self._down}"
                )
            if not self._mem:
                self._mem_since = self.clock.monotonic()
            self._mem.append(rows)
            self._mem_rows += len(rows)
            self._c["accepted"] += len(rows)
            self._c["outstanding"] += len(rows)
            self._cond.notify_all()

    def offer(self, batch: ReadingBatch) -> bool:
        """Accept a batch only if memory has room now; never blocks."""
        try:
            self.submit(batch, timeout=0)
        except WriterFullError:
            return False
        return True

    def _check_running(self) -> None:
        if self._thread is None or not self._thread.is_alive() or self._stopping:
            raise StorageError(f"writer {self.name!r} is not running")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted row is committed (spill files included); False on timeout."""

        def done() -> bool:
            return self._c["outstanding"] == 0 and self._spill_files == 0

        def dead() -> bool:
            return self._thread is None or not self._thread.is_alive()

        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: done() or dead(), timeout=timeout)
            finally:
                self._flushing -= 1
            return done()

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every accepted row is durable: committed, or spilled to an fsynced file.

        Unlike ``flush`` this does not wait for the database to come back: during an outage
        it makes the worker spill what it holds at once. A collector acknowledges its
        broker after ``sync``, so acknowledgements go on while the database is down, and
        what was acknowledged survives a crash (the next writer replays the spill files).
        False on timeout.
        """

        def done() -> bool:
            return self._c["outstanding"] == 0

        def dead() -> bool:
            return self._thread is None or not self._thread.is_alive()

        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: done() or dead(), timeout=timeout)
            finally:
                self._flushing -= 1
            return done()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Write what can be written within ``timeout`` s, spill the rest, end the thread."""
        with self._cond:
            self._stopping = True
            if timeout is not None:
                self._stop_deadline = self.clock.monotonic() + timeout
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._sink.close()
        self._spill.close()

    def wake(self) -> None:
        """Re-check timers now (tests that move a ``ManualClock`` call this)."""
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> WriterStats:
        with self._cond:
            c = self._c
            return WriterStats(
                accepted_rows=c["accepted"],
                written_rows=c["written"],
                duplicate_rows=c["duplicates"],
                outstanding_rows=c["outstanding"],
                memory_rows=c["outstanding"],
                spilled_rows=c["spilled"],
                replayed_rows=c["replayed"],
                spill_files=self._spill_files,
                quarantined_rows=c["quarantined"],
                outages=c["outages"],
                db_up=not self._down,
                rollup_rows=c["rollup_rows"],
                errors=c["errors"],
                last_error=self._last_error,
            )

    # -- worker -----------------------------------------------------------------

    def _run(self) -> None:
        errors_in_a_row = 0
        try:
            while True:
                try:
                    if self._iteration():
                        break
                    errors_in_a_row = 0
                except Exception as exc:  # the outermost loop: log, count, carry on
                    errors_in_a_row += 1
                    log.exception("reading writer error", extra={"writer": self.name})
                    with self._cond:
                        self._c["errors"] += 1
                        self._last_error = f"error: {exc!r}"
                    if self._stopping and errors_in_a_row >= 3:
                        self._spill_memory(force=True)  # keep what we hold; next start replays
                        break
                    self._wait(min(self.retry_max_s, self.retry_initial_s * 2**errors_in_a_row))
            try:
                self._maybe_refresh_rollups(force=True)
            except Exception:
                log.exception("final rollup refresh failed", extra={"writer": self.name})
        finally:
            with self._cond:
                self._cond.notify_all()

    def _iteration(self) -> bool:
        """One turn of the worker loop; True when the worker should end."""
        with self._cond:
            stopping = self._stopping
            idle = not self._mem and not self._retry and self._spill_files == 0
        if stopping and idle:
            return True
        if stopping and (self._down or self._past_deadline()):
            self._spill_memory(force=True)
            return True
        if self._down:
            with self._cond:
                syncing = self._flushing > 0
            self._spill_memory(force=syncing)
            if self.clock.monotonic() < self._retry_at:
                self._wait(self._retry_at - self.clock.monotonic())
                return False
        elif self._spill_files:
            self._spill_memory()  # catching up: keep callers unblocked
        self._maybe_maintain()
        if not self._step():
            self._maybe_refresh_rollups(force=stopping)
            if not stopping:
                self._wait_for_work(self._next_timer())
        return False

    def _past_deadline(self) -> bool:
        return self._stop_deadline is not None and self.clock.monotonic() >= self._stop_deadline

    def _wait(self, seconds: float) -> None:
        # Capped so a ManualClock moved by a test (or a stop) is noticed promptly.
        with self._cond:
            if not self._stopping:
                self._cond.wait(timeout=max(0.0, min(seconds, 0.25)))

    def _wait_for_work(self, seconds: float) -> None:
        """Sleep until a full chunk, a flush, a stop, the linger deadline or a timer."""
        with self._cond:
            if self._mem:
                seconds = min(seconds, self._mem_since + self.linger_s - self.clock.monotonic())
            self._cond.wait_for(
                lambda: self._stopping or self._flushing > 0 or self._mem_rows >= self.commit_rows,
                timeout=max(0.0, min(seconds, 0.25)),
            )

    def _next_timer(self) -> float:
        if self.rollup_interval_s is None:
            return 0.25
        return self._last_rollup + self.rollup_interval_s - self.clock.monotonic()

    def _step(self) -> bool:
        """Write one chunk (spill replay first, then memory); False when there was nothing."""
        if self._replay_file is None and self._spill_files and not self._open_next_spill():
            return True
        if self._replay_file is not None:
            chunk, rest = _split(self._replay_runs, self.commit_rows)
            if not self._write(chunk, from_memory=False):
                return True
            with self._cond:
                self._c["replayed"] += sum(len(r) for r in chunk)
            self._replay_runs = rest
            if not rest:
                self._spill.remove(self._replay_file)
                log.info("spill file replayed", extra={"file": str(self._replay_file)})
                self._replay_file = None
                with self._cond:
                    self._spill_files -= 1
                    self._cond.notify_all()
            return True
        if not self._retry:
            with self._cond:
                if not self._mem or not self._chunk_due_locked():
                    return False
                self._retry = self._take_locked(self.commit_rows)
        if self._write(self._retry, from_memory=True):
            self._retry = []
        return True

    def _chunk_due_locked(self) -> bool:
        """Write now: a full chunk waits, or someone flushes/stops, or rows lingered enough.

        Waiting up to ``linger_s`` for a full chunk keeps commits at ``commit_rows`` under
        load (commit size is what the database's rate depends on) while bounding the
        delay of a quiet stream.
        """
        return (
            self._mem_rows >= self.commit_rows
            or self._stopping
            or self._flushing > 0
            or self.clock.monotonic() - self._mem_since >= self.linger_s
        )

    def _take_locked(self, limit: int) -> list[Rows]:
        out: list[Rows] = []
        n = 0
        while self._mem and n < limit:
            r = self._mem.popleft()
            if n + len(r) > limit:
                head, tail = r.take(slice(0, limit - n)), r.take(slice(limit - n, None))
                self._mem.appendleft(tail)
                r = head
            out.append(r)
            n += len(r)
        self._mem_rows -= n
        self._mem_since = self.clock.monotonic()  # the rest is at most this old (approx.)
        self._cond.notify_all()
        return out

    def _write(self, chunk: list[Rows], *, from_memory: bool) -> bool:
        n = sum(len(r) for r in chunk)
        try:
            result = self._sink.write(chunk)
        except SinkUnavailableError as exc:
            self._went_down(exc)
            return False
        except Exception as exc:
            # The database refused these rows (not an outage): keep them on disk, move on.
            log.exception("chunk refused; quarantined to a spill file", extra={"rows": n})
            path = self._spill.write(chunk)
            self._spill.quarantine(path, repr(exc))
            with self._cond:
                self._c["quarantined"] += n
                self._last_error = f"refused: {exc!r}"
            self._after_write(chunk, n, from_memory=from_memory)
            return True
        with self._cond:
            self._c["written"] += result.inserted
            self._c["duplicates"] += result.duplicates
        self._after_write(chunk, n, from_memory=from_memory)
        if self._down:
            log.info("database back; writing resumed", extra={"writer": self.name})
        self._down = False
        self._backoff = self.retry_initial_s
        return True

    def _after_write(self, chunk: list[Rows], n: int, *, from_memory: bool) -> None:
        with self._cond:
            if from_memory:  # spilled rows left "outstanding" when they reached the disk
                self._c["outstanding"] -= n
            self._cond.notify_all()

    def _went_down(self, exc: Exception) -> None:
        if not self._down:
            log.warning(
                "database unavailable; buffering and spilling",
                extra={"writer": self.name, "error": str(exc)},
            )
            with self._cond:
                self._c["outages"] += 1
        self._down = True
        with self._cond:
            self._last_error = str(exc)
        self._retry_at = self.clock.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    def _spill_memory(self, *, force: bool = False) -> None:
        """Move the failed chunk and the memory FIFO to a new spill file (in that order)."""
        with self._cond:
            if not force and self._c["outstanding"] < self.max_memory_rows // 2:
                return
            if not self._mem and not self._retry:
                return
            if not force and self._spill.nbytes() >= self.max_spill_bytes:
                return  # disk bound reached: callers feel back-pressure instead
            runs = self._retry + list(self._mem)
            self._mem.clear()
            self._mem_rows = 0
        n = sum(len(r) for r in runs)
        self._spill.write(runs)
        self._retry = []
        with self._cond:
            self._c["spilled"] += n
            self._c["outstanding"] -= n
            self._spill_files += 1
            self._cond.notify_all()
        log.info("rows spilled to disk", extra={"writer": self.name, "rows": n})

    def _open_next_spill(self) -> bool:
        files = self._spill.files()
        if not files:
            with self._cond:
                self._spill_files = 0
                self._cond.notify_all()
            return False
        path = files[0]
        try:
            runs = self._spill.read(path)
        except StorageError as exc:
            self._spill.quarantine(path, str(exc))
            with self._cond:
                self._spill_files -= 1
                self._last_error = str(exc)
                self._cond.notify_all()
            return False
        self._replay_file, self._replay_runs = path, runs
        return True

    def _maybe_maintain(self) -> None:
        if self.maintenance_interval_s is None or self._down:
            return
        if self.clock.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = self.clock.monotonic() + self.maintenance_interval_s
        try:
            report = self._sink.maintain(self.clock.now_ms())
        except SinkUnavailableError as exc:
            self._next_maintenance = self.clock.monotonic()  # retry once the database is back
            self._went_down(exc)
            return
        except Exception:  # maintenance must never stop writes; the next pass retries
            log.exception("storage maintenance failed", extra={"writer": self.name})
            return
        log.info(
            "storage maintenance",
            extra={
                "writer": self.name,
                "partitions_created": report.get("created", []),
                "partitions_dropped": report.get("dropped", []),
                "rows_deleted": report.get("deleted_rows", 0),
            },
        )

    def _maybe_refresh_rollups(self, *, force: bool = False) -> None:
        if self.rollup_interval_s is None or self._down:
            return
        since = self.clock.monotonic() - self._last_rollup
        if not force and since < self.rollup_interval_s:
            return
        defer = self.rollup_defer
        if not force and defer is not None and since < self.rollup_max_defer_s and defer():
            return
        until = None if force else self.clock.now_ms() - self.rollup_grace_ms
        started = time.monotonic()
        try:
            total = self._sink.refresh_dirty(until)  # None: another writer is at it
            for _ in range(10 if force else 0):  # stopping: this turn may be the last
                if total is not None:
                    break
                time.sleep(0.5)
                total = self._sink.refresh_dirty(until)
        except SinkUnavailableError as exc:
            self._went_down(exc)  # the marks stay in the database for the next attempt
            return
        self._last_rollup = self.clock.monotonic()
        if total:
            # a minute of the district is ~3M readings -> 480k rollup rows: seconds of
            # database time, worth seeing next to the write rate
            log.info(
                "rollups refreshed",
                extra={
                    "writer": self.name,
                    "rows": total,
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
            with self._cond:
                self._c["rollup_rows"] += total


def _split(runs: list[Rows], limit: int) -> tuple[list[Rows], list[Rows]]:
    """The first ``limit`` rows of ``runs`` and the rest, splitting one run if needed."""
    out: list[Rows] = []
    n = 0
    for i, r in enumerate(runs):
        if n + len(r) > limit:
            k = limit - n
            if k > 0:
                out.append(r.take(slice(0, k)))
            return out, [r.take(slice(k, None)), *runs[i + 1 :]]
        out.append(r)
        n += len(r)
        if n == limit:
            return out, runs[i + 1 :]
    return out, []


def open_writer(storage: Storage, keys: npt.NDArray[np.int32], **opts: Any) -> ReadingWriter:
    """A started ``ReadingWriter`` (stop it, or use it as a context manager)."""
    return ReadingWriter(storage, keys, **opts).start()
