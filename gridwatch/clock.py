"""Time as a dependency: every timer (for-duration, escalation, offline checks, flush
intervals) reads a ``Clock`` so tests can move time by hand instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time, epoch milliseconds."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to.

    >>> c = ManualClock(1_000)
    >>> c.advance(2.5); c.now_ms()
    3500
    """

    def __init__(self, start_ms: int = 1_780_000_000_000) -> None:
        self._ms = start_ms
        self._mono = 0.0

    def now_ms(self) -> int:
        return self._ms

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self._ms += round(seconds * 1000)
        self._mono += seconds

    def set_ms(self, ms: int) -> None:
        if ms < self._ms:
            raise ValueError(f"a clock cannot go back: {ms} < {self._ms}")
        self._mono += (ms - self._ms) / 1000
        self._ms = ms
