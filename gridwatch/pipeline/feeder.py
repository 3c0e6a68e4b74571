"""The built-in simulated fleet as the embedded pipeline's data source.

``SimFeeder`` runs ``sim.replay.Replay`` on an owned thread into the in-process transport
(the same topics and payload bytes MQTT would carry). The simulator's random faults only
start after its 10-minute warm-up, so that detectors learn baselines first; a newcomer
should not wait that long to see what gridwatch does, so ``demo_events`` adds a first
fault of every alert-worthy kind in the first seconds: trapped passengers, overspeed and
door faults (armed for the car's next trip), displaced manhole covers and falling
objects. They are ordinary labelled faults (``sim.labels``), just scheduled early.

``ScaledClock`` is the wall clock of an accelerated world: with ``speed`` 10, ten
simulated seconds pass per wall second, for the simulator and for every stage that reads
the clock, so validation, for-durations and clears stay consistent.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from gridwatch.clock import Clock, SystemClock
from gridwatch.domain import DeviceKind
from sim.engine import FleetSim
from sim.faults import FaultKind
from sim.publish import PayloadFormat, Sink
from sim.replay import Replay, ReplaySpec
from sim.schedule import Event

log = logging.getLogger(__name__)

DEMO_FAULTS: tuple[tuple[DeviceKind, FaultKind, int], ...] = (
    (DeviceKind.ELEVATOR, FaultKind.ENTRAPMENT, 12),
    (DeviceKind.ELEVATOR, FaultKind.OVERSPEED, 12),
    (DeviceKind.ELEVATOR, FaultKind.DOOR_FAULT, 12),
    (DeviceKind.SEWAGE, FaultKind.COVER_DISPLACED, 3),
    (DeviceKind.HIGHFALL, FaultKind.FALLING_OBJECT, 4),
)
"""(device kind, fault, how many devices). Elevator faults wait for a trip (a hall call
every ~90 s per car), hence a dozen cars each: some start a trip within seconds."""


class ScaledClock:
    """Epoch time that starts at ``start_ms`` and runs ``speed`` times the wall clock."""

    def __init__(self, start_ms: int, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.start_ms = start_ms
        self.speed = speed
        self._mono0 = time.monotonic()

    def now_ms(self) -> int:
        return self.start_ms + round((time.monotonic() - self._mono0) * 1000 * self.speed)

    def monotonic(self) -> float:
        return time.monotonic()


def demo_events(sim: FleetSim, *, first_s: float = 3.0, spread_s: float = 12.0) -> list[Event]:
    """Early faults of every kind on devices drawn with the simulation's seed."""
    reg = sim.registry
    rng = np.random.default_rng([sim.spec.seed, 77])
    out: list[Event] = []
    order = 0
    for kind, fault, count in DEMO_FAULTS:
        pool = reg.devices_of_kind(kind)
        if pool.size == 0:
            continue
        devs = rng.choice(pool, size=min(count, pool.size), replace=False)
        starts = (
            sim.now_ms + round(first_s * 1000) + rng.integers(0, round(spread_s * 1000), devs.size)
        )
        for dev, start in zip(devs.tolist(), starts.tolist(), strict=True):
            out.append(Event(int(start), order, int(dev), kind, fault, int(rng.integers(0, 2**62))))
            order += 1
    return sorted(out)


class DemoInjector:
    """Activates ``events`` on ``sim`` just before the simulation reaches them.

    The simulator's own scheduler activates an event up to one tick ahead of its start;
    this does the same from outside, between replay steps: an event starting within the
    next ``lead_ms`` is handed to its device model now.
    """

    def __init__(self, sim: FleetSim, events: list[Event], lead_ms: int = 2000) -> None:
        self.sim = sim
        self.pending = sorted(events)
        self.lead_ms = lead_ms
        self.activated = 0
        self.dropped = 0
        self._models = {
            DeviceKind.ELEVATOR: sim.elevators.activate,
            DeviceKind.SEWAGE: sim.sewage.activate,
            DeviceKind.HIGHFALL: sim.cameras.activate,
        }

    def before_step(self) -> None:
        horizon = self.sim.now_ms + self.lead_ms
        while self.pending and self.pending[0].start_ms <= horizon:
            ev = self.pending.pop(0)
            if ev.start_ms <= self.sim.now_ms + 1000:  # late (a long step): keep it ahead
                ev = Event(
                    self.sim.now_ms + 1001, ev.order, ev.device, ev.dev_kind, ev.kind, ev.seed
                )
            if self._models[ev.dev_kind](ev):
                self.activated += 1
            else:
                self.dropped += 1


class SimFeeder:
    """Replays ``sim`` into ``sink`` on a named thread until ``stop`` (or ``duration_s``)."""

    def __init__(
        self,
        sim: FleetSim,
        sink: Sink,
        *,
        speed: float | None,
        root: str,
        duration_s: float | None = None,
        demo: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.sim = sim
        self._stop = threading.Event()
        # The pipeline took a moment to start since the simulation was built: skip those
        # readings (nobody has heard the fleet yet), so timestamps match the clock.
        now = (clock or SystemClock()).now_ms()
        if now > sim.now_ms:
            sim.advance(now)
        self.replay = Replay(
            sim,
            sink,
            ReplaySpec(
                speed=speed,
                duration_s=duration_s,
                fmt=PayloadFormat.BINARY,
                root=root,
                step_s=0.2 * speed if speed else None,  # readings leave within 0.2 s
            ),
            sleep=self._sleep,  # a stop interrupts the wait for the next step
        )
        self.injector = DemoInjector(sim, demo_events(sim)) if demo else None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def start(self) -> SimFeeder:
        self._thread = threading.Thread(target=self._run, name="gridwatch-sim-feeder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.replay.done

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self.replay.done:
                if self.injector is not None:
                    self.injector.before_step()
                self.replay.step()
        except BaseException as exc:  # surfaced by the worker's health check
            self.error = exc
            log.exception("simulator feeder failed")
