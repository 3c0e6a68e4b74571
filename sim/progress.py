"""A rich progress line for a replay: simulated time, readings/s, messages, faults."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from sim.replay import ReplayStats


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ReplayProgress:
    """Context manager and ``progress`` callback for ``Replay.run``; draws on stderr.

    Readings/s is measured over the last few seconds of wall time, not since the start,
    so a stall shows at once.
    """

    def __init__(self, duration_s: float | None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]sim[/bold] {task.fields[sim]}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=4,
        )
        self._duration_s = duration_s
        self._task: TaskID | None = None
        self._window: list[tuple[float, int]] = []

    def __enter__(self) -> ReplayProgress:
        self._progress.start()
        self._task = self._progress.add_task("replay", total=self._duration_s, sim=_hms(0), info="")
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, stats: ReplayStats) -> None:
        if self._task is None:
            return
        now = time.monotonic()
        self._window.append((now, stats.total_readings))
        while len(self._window) > 2 and now - self._window[0][0] > 5:
            self._window.pop(0)
        t0, n0 = self._window[0]
        rate = (stats.total_readings - n0) / (now - t0) if now > t0 else 0.0
        info = (
            f"{rate:,.0f} readings/s  {stats.messages:,} msgs  "
            f"faults {stats.faults:,}  distractors {stats.distractors:,}"
        )
        if stats.behind_s > 1:
            info += f"  [yellow]{stats.behind_s:.0f} s behind[/yellow]"
        self._progress.update(
            self._task, completed=stats.sim_ms / 1000, sim=_hms(stats.sim_ms / 1000), info=info
        )
