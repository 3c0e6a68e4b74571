"""The running pipeline's state as a JSON file, rewritten every second.

``gridwatch status`` (another process, maybe another user) reads it without any
connection to the pipeline: ``<data_dir>/status.json`` for the top process (a single
pipeline or the supervisor), ``<data_dir>/status/worker-<k>.json`` per worker. A file not
rewritten for ``STALE_S`` belongs to a pipeline that is no longer running (or hung); the
supervisor uses the same freshness as its health check. Files are written to a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

STALE_S = 5.0


def status_path(data_dir: Path) -> Path:
    return Path(data_dir) / "status.json"


def worker_status_path(data_dir: Path, index: int) -> Path:
    return Path(data_dir) / "status" / f"worker-{index}.json"


def write_status(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(path)


def read_status(path: Path) -> dict[str, Any] | None:
    """The status in ``path``, with ``age_s`` and ``fresh`` added; None when absent."""
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:
        return None
    age = time.time() - data.get("updated_ms", 0) / 1000
    data["age_s"] = round(age, 1)
    data["fresh"] = age <= STALE_S and data.get("state") not in ("stopped", "failed")
    return data


class StatusReporter:
    """Calls ``snapshot`` every ``interval_s`` on an owned thread and writes the result."""

    def __init__(
        self,
        path: Path,
        snapshot: Callable[[], dict[str, Any]],
        *,
        interval_s: float = 1.0,
        name: str = "gridwatch-status",
    ) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name
        self.last: dict[str, Any] = {}

    def start(self) -> StatusReporter:
        self.write_once()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, final_state: str = "stopped") -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.write_once(state=final_state)

    def write_once(self, state: str | None = None) -> dict[str, Any]:
        try:
            data = self.snapshot()
        except Exception:  # a status bug must not stop the pipeline
            log.exception("status snapshot failed")
            data = dict(self.last)
        if state is not None:
            data["state"] = state
        data["updated_ms"] = time.time_ns() // 1_000_000
        data.setdefault("pid", os.getpid())
        self.last = data
        try:
            write_status(self.path, data)
        except OSError:
            log.exception("status file not written", extra={"path": str(self.path)})
        return data

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_once()
