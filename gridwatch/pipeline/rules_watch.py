"""Reload the rules file of a running pipeline when an engineer edits it.

A dispatch centre changes thresholds and silences without stopping the district's
pipeline: the detect thread (which owns the rules engine) calls ``check`` on its timer,
and a changed file is loaded and validated in full before it replaces the rules in
force. A file with any mistake is refused, logged with its precise error, counted, and
shown in ``gridwatch status``; the previous rules stay in force until a corrected file
is saved. Open alerts and pending conditions survive a reload (``RulesEngine.reload``).

The file's (mtime, size, inode) is polled rather than watched with inotify: it works on
every filesystem, including a ConfigMap or a network share, costs one ``stat`` every
``interval_s``, and an editor's save-by-rename is seen like an in-place write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)


class _Reloadable(Protocol):
    """What the watcher needs of ``rules.engine.RulesEngine``."""

    @property
    def ruleset(self) -> Any: ...

    def reload(self, path: str | Path, *, plan_names: Iterable[str] | None = None) -> Any: ...


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RulesWatcher:
    """Polls one rules file; reloads the engine when the file changed (detect thread only)."""

    def __init__(
        self,
        engine: _Reloadable,
        path: str | Path,
        *,
        plan_names: Iterable[str] | None = None,
        interval_s: float = 2.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.path = Path(path)
        self.plan_names = list(plan_names) if plan_names is not None else None
        self.interval_s = interval_s
        self.reloads = 0
        self.refused = 0
        self.error = ""
        self._seen = _signature(self.path)
        self._next = time.monotonic() + interval_s
        self._counter: Counter | None = None
        if registry is not None:
            self._counter = Counter(
                "gridwatch_pipeline_rules_reloads",
                "rules file reloads at run time, by result (ok, refused)",
                ["result"],
                registry=registry,
            )

    def check(self, *, force: bool = False) -> bool:
        """Reload if the file changed since it was last seen; True when new rules are in force."""
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + self.interval_s
        sig = _signature(self.path)
        if sig == self._seen and not force:
            return False
        if sig is None:  # moved away mid-save, or deleted: keep the rules in force
            if self._seen is not None:
                log.warning("rules file missing; rules in force unchanged", extra=self._where())
            self._seen = None
            return False
        self._seen = sig  # a refused file is not retried until it changes again
        try:
            self.engine.reload(self.path, plan_names=self.plan_names)
        except Exception as exc:
            self.refused += 1
            self.error = str(exc)
            if self._counter is not None:
                self._counter.labels("refused").inc()
            log.error(
                "rules file refused; previous rules stay in force",
                extra={**self._where(), "error": self.error},
            )
            return False
        self.reloads += 1
        self.error = ""
        if self._counter is not None:
            self._counter.labels("ok").inc()
        return True

    def status(self) -> dict[str, Any]:
        """For ``gridwatch status``: which rules are in force and the last refusal."""
        return {
            "path": str(self.path),
            "digest": self.engine.ruleset.digest,
            "reloads": self.reloads,
            "refused": self.refused,
            "error": self.error,
        }

    def _where(self) -> dict[str, Any]:
        return {"path": str(self.path), "digest": self.engine.ruleset.digest}
