"""Replay a simulated fleet into a sink: real time, accelerated, or as fast as possible.

Each step advances the simulation by ``step_s`` of simulated time, cuts the readings
into contract messages (``sim.publish.MessageEncoder``) and hands them to the sink: an
``MqttPublisher`` or any ``(topic, payload)`` callable such as an in-process transport.
With a ``speed`` each step first waits until the wall clock has reached the step's
end, so that at ``speed=1`` a reading leaves at or after its timestamp and no more than
``step_s`` later, and at ``speed=10`` ten simulated seconds pass per wall second.

Time comes from a ``Clock`` and waiting from a ``sleep`` callable, so tests drive a
replay with a ``ManualClock`` and never sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gridwatch.clock import Clock, SystemClock
from gridwatch.contract import DEFAULT_ROOT
from gridwatch.domain import DeviceKind
from sim.engine import FleetSim
from sim.publish import MessageEncoder, PayloadFormat, Sink

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """How to replay. ``speed`` None means as fast as the sink takes it.

    ``step_s`` (simulated seconds per step) defaults to one wall second's worth: 1 s at
    real time (readings leave within a second of their timestamp, one batch per grid and
    kind a second, like a gateway), 10 s at ``speed=10``; 10 s flat out. ``duration_s``
    None runs until stopped.
    """

    speed: float | None = 1.0
    duration_s: float | None = 600.0
    fmt: PayloadFormat = PayloadFormat.BINARY
    root: str = DEFAULT_ROOT
    max_batch: int = 500
    step_s: float | None = None
    count_only: bool = False

    def __post_init__(self) -> None:
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0 (or None for flat out), got {self.speed}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.step_s is not None and not 0.001 <= self.step_s <= 3600:
            raise ValueError(f"step_s must be 0.001..3600, got {self.step_s}")

    @property
    def step_ms(self) -> int:
        if self.step_s is not None:
            return max(1, round(self.step_s * 1000))
        if self.speed is None:
            return 10_000
        return max(1, round(self.speed * 1000))


@dataclass(slots=True)
class ReplayStats:
    """Running totals, read by the progress display and returned at the end."""

    readings: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in DeviceKind})
    messages: int = 0
    bytes: int = 0
    sim_ms: int = 0
    wall_s: float = 0.0
    faults: int = 0
    distractors: int = 0
    interrupted: bool = False
    behind_s: float = 0.0

    @property
    def total_readings(self) -> int:
        return sum(self.readings.values())

    @property
    def readings_per_s(self) -> float:
        return self.total_readings / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "readings": dict(self.readings),
            "total_readings": self.total_readings,
            "messages": self.messages,
            "bytes": self.bytes,
            "sim_s": self.sim_ms / 1000,
            "wall_s": round(self.wall_s, 3),
            "readings_per_s": round(self.readings_per_s, 1),
            "faults": self.faults,
            "distractors": self.distractors,
            "interrupted": self.interrupted,
        }


class Replay:
    """Drives one ``FleetSim`` into one sink; ``run`` until the duration or ``stop``."""

    def __init__(
        self,
        sim: FleetSim,
        sink: Sink | None,
        spec: ReplaySpec,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if sink is None and not spec.count_only:
            raise ValueError("a replay needs a sink unless it only counts")
        self.sim = sim
        self.sink = sink
        self.spec = spec
        self.clock = clock or SystemClock()
        self.sleep = sleep
        self.encoder = MessageEncoder(sim.registry, spec.fmt, spec.root, spec.max_batch)
        self.stats = ReplayStats()
        self._sim_start = sim.now_ms
        self._end = None if spec.duration_s is None else sim.now_ms + round(spec.duration_s * 1000)
        self._wall_start: float | None = None

    @property
    def done(self) -> bool:
        return self._end is not None and self.sim.now_ms >= self._end

    def step(self) -> int:
        """Wait until the next step is due, advance to it and publish; returns its readings.

        Waiting comes first, so that no reading ever leaves before the replay's clock
        has reached its timestamp.
        """
        if self._wall_start is None:
            self._wall_start = self.clock.monotonic()
        target = self.sim.now_ms + self.spec.step_ms
        if self._end is not None:
            target = min(target, self._end)
        self._wait_for(target - self._sim_start)
        n = 0
        sink = self.sink
        for batch in self.sim.advance(target):
            n += len(batch)
            self.stats.readings[batch.kind.value] += len(batch)
            if self.spec.count_only:
                self.stats.messages += self.encoder.count(batch)
                continue
            if sink is None:
                raise ValueError("a replay needs a sink unless it only counts")
            for msg in self.encoder.messages(batch):
                sink(msg.topic, msg.payload)
                self.stats.messages += 1
                self.stats.bytes += len(msg.payload)
        self.stats.sim_ms = self.sim.now_ms - self._sim_start
        self.stats.faults = self.sim.book.n_faults
        self.stats.distractors = self.sim.book.n_distractors
        self.stats.wall_s = self.clock.monotonic() - self._wall_start
        return n

    def _wait_for(self, sim_elapsed_ms: int) -> None:
        """Sleep until ``sim_elapsed_ms / speed`` of wall time has passed since the start."""
        start = self._wall_start if self._wall_start is not None else self.clock.monotonic()
        elapsed = self.clock.monotonic() - start
        if self.spec.speed is None:
            return
        due = sim_elapsed_ms / 1000 / self.spec.speed
        if due > elapsed:
            self.sleep(due - elapsed)
        else:
            self.stats.behind_s = elapsed - due

    def run(
        self,
        progress: Callable[[ReplayStats], None] | None = None,
        stop: threading.Event | None = None,
    ) -> ReplayStats:
        """Replay until the duration is over, ``stop`` is set, or Ctrl-C (then cleanly)."""
        try:
            while not self.done and not (stop is not None and stop.is_set()):
                self.step()
                if progress is not None:
                    progress(self.stats)
        except KeyboardInterrupt:
            self.stats.interrupted = True
            log.info("replay interrupted", extra={"sim_s": self.stats.sim_ms / 1000})
        if stop is not None and stop.is_set():
            self.stats.interrupted = True
        return self.stats
