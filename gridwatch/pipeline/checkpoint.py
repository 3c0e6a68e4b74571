"""Detector state checkpoints: taken on the detect thread, written by an owned thread.

The state of the full district is ~120 MB of numpy arrays. Copying them is a few tens of
milliseconds; serialising and fsyncing them is not, so the detect thread only copies and
a named writer thread does the rest (one checkpoint at a time: if the previous one is
still being written, the next periodic one is skipped, never queued).

Files are ``<dir>/<name>.npz`` in ``DetectorSet``'s format (``DetectorSet.load`` reads
them) plus ``meta/watermark_ms`` (newest device timestamp the state has seen) and
``meta/saved_ms``; written to a temporary name, fsynced, then renamed, so a crash leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.detectorset import DetectorSet
from gridwatch.pipeline.metrics import PipelineMetrics

log = logging.getLogger(__name__)


class Checkpointer:
    """Periodic and final checkpoints of one worker's detectors."""

    def __init__(
        self,
        path: Path,
        *,
        interval_s: float,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.metrics = metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._next = time.monotonic() + interval_s
        self._thread: threading.Thread | None = None
        self.saved = 0
        self.last_saved_ms = 0
        self.last_error = ""

    def maybe_save(self, detectors: DetectorSet, watermark_ms: int) -> bool:
        """Start a background checkpoint when one is due and none is being written."""
        if time.monotonic() < self._next:
            return False
        if self._thread is not None and self._thread.is_alive():
            return False
        self._next = time.monotonic() + self.interval_s
        state = _snapshot(detectors, watermark_ms)
        self._thread = threading.Thread(
            target=self._write, args=(state,), name="gridwatch-checkpoint", daemon=True
        )
        self._thread.start()
        return True

    def save_now(self, detectors: DetectorSet, watermark_ms: int) -> None:
        """Wait for a running checkpoint, then write one synchronously (at stop)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._write(_snapshot(detectors, watermark_ms))

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self, state: dict[str, npt.NDArray[Any]]) -> None:
        t0 = time.perf_counter()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("wb") as fh:
                np.savez(fh, **state)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            self.last_error = str(exc)
            log.exception("detector checkpoint failed", extra={"path": str(self.path)})
            return
        took = time.perf_counter() - t0
        self.saved += 1
        self.last_saved_ms = int(state["meta/saved_ms"][0])
        if self.metrics is not None:
            self.metrics.checkpoints.inc()
            self.metrics.checkpoint_seconds.set(took)
        log.info(
            "detector checkpoint saved",
            extra={"path": str(self.path), "seconds": round(took, 3)},
        )

    def load_into(self, detectors: DetectorSet) -> int | None:
        """Restore ``detectors`` from the file; returns its watermark, None without one.

        A checkpoint of another registry (or unreadable) is refused with a warning and the
        detectors start cold: losing learned baselines is better than not starting.
        """
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
            detectors.load_state(state)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning(
                "detector checkpoint not used; starting cold",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return None
        wm = state.get("meta/watermark_ms")
        watermark = int(wm[0]) if wm is not None and wm.size else 0
        log.info(
            "detector checkpoint restored",
            extra={"path": str(self.path), "watermark_ms": watermark},
        )
        return watermark


def _snapshot(detectors: DetectorSet, watermark_ms: int) -> dict[str, npt.NDArray[Any]]:
    state = {k: np.array(v, copy=True) for k, v in detectors.state().items()}
    state["meta/watermark_ms"] = np.array([watermark_ms], dtype=np.int64)
    state["meta/saved_ms"] = np.array([time.time_ns() // 1_000_000], dtype=np.int64)
    return state
