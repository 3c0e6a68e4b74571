"""``gridwatch sim``: replay a simulated district over MQTT, or count what it would send."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gridwatch import contract
from gridwatch.errors import ConfigError
from gridwatch.registry import Registry

log = logging.getLogger(__name__)


def _rate(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KIND.FAULT=RATE, e.g. sewage.overflow=0.01"
        )
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: rate {value!r} is not a number") from None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="replay a simulated fleet with labelled faults over MQTT",
        description=(
            "Simulate a district (elevators, manholes, facade cameras) with injected faults "
            "and publish its readings per the MQTT contract (docs/protocol.md). "
            "See docs/simulator.md."
        ),
    )
    p.add_argument("--devices", type=int, default=480_000, help="fleet size (default 480000)")
    p.add_argument("--registry", type=Path, help="use this registry file instead of building one")
    p.add_argument(
        "--seed", type=int, default=20261126, help="random seed (fleet, physics, faults)"
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per wall second (default 1 = real time; 0 = as fast as possible)",
    )
    p.add_argument(
        "--duration", type=float, default=600.0, help="simulated seconds to run (default 600)"
    )
    p.add_argument(
        "--start-ms",
        type=int,
        help="simulated start, epoch ms (default: now at real time, else now - duration, "
        "so no reading is ever in the future)",
    )
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument(
        "--format",
        choices=("binary", "json", "device"),
        default="binary",
        help="binary/json: one batch message per grid and kind; device: per-device JSON topics",
    )
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    p.add_argument("--root", default=contract.DEFAULT_ROOT, help="topic root (default gw)")
    p.add_argument("--max-batch", type=int, default=500, help="readings per batch message")
    p.add_argument(
        "--max-pending", type=int, default=10_000, help="QoS 1 messages unacknowledged at most"
    )
    p.add_argument("--truth", type=Path, help="write the ground truth here (JSON lines)")
    p.add_argument("--fault-scale", type=float, default=1.0, help="multiply every fault rate")
    p.add_argument(
        "--rate",
        type=_rate,
        action="append",
        default=[],
        metavar="KIND.FAULT=RATE",
        help="override one rate per device-hour, e.g. sewage.overflow=0.01 (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="simulate and count; publish nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=_run)


def _start_ms(args: argparse.Namespace) -> int:
    """Real time starts now; anything faster starts ``duration`` ago so it ends by now."""
    if args.start_ms is not None:
        return int(args.start_ms)
    now = time.time_ns() // 1_000_000
    if args.speed == 1.0 and not args.dry_run:
        return now
    return now - int(args.duration * 1000)


def _run(args: argparse.Namespace) -> int:
    from sim.engine import FleetSim, SimSpec
    from sim.fleet import FleetSpec, build_fleet
    from sim.progress import ReplayProgress
    from sim.publish import BrokerUrl, MqttPublisher, PayloadFormat
    from sim.replay import Replay, ReplaySpec

    if args.speed < 0:
        raise ConfigError(f"--speed must be >= 0, got {args.speed}")
    if args.duration <= 0:
        raise ConfigError(f"--duration must be > 0, got {args.duration}")
    if args.devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {args.devices}")
    try:
        spec = SimSpec(
            seed=args.seed,
            start_ms=_start_ms(args),
            rates=dict(args.rate),
            fault_scale=args.fault_scale,
        )
        rspec = ReplaySpec(
            speed=None if args.speed == 0 or args.dry_run else args.speed,
            duration_s=args.duration,
            fmt=PayloadFormat(args.format),
            root=args.root,
            max_batch=args.max_batch,
            count_only=args.dry_run,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not args.dry_run:
        BrokerUrl.parse(args.mqtt)  # a bad URL fails before the fleet is built
    if args.registry is not None:
        registry = Registry.load(args.registry)
    else:
        registry = build_fleet(FleetSpec(n_devices=args.devices, seed=args.seed))
    sim = FleetSim(registry, spec)
    publisher = None
    if not args.dry_run:
        publisher = MqttPublisher(args.mqtt, qos=args.qos, max_pending=args.max_pending)
    replay = Replay(sim, publisher, rspec)
    log.info(
        "sim starting",
        extra={
            "devices": len(registry),
            "speed": args.speed,
            "duration_s": args.duration,
            "format": args.format,
            "dry_run": args.dry_run,
        },
    )
    try:
        if args.no_progress or not sys.stderr.isatty():
            stats = replay.run()
        else:
            with ReplayProgress(args.duration) as progress:
                stats = replay.run(progress)
    finally:
        if publisher is not None:
            publisher.close()
        if args.truth is not None:
            n = sim.write_truth(args.truth)
            log.info("ground truth written", extra={"path": str(args.truth), "labels": n})
    out = stats.as_dict()
    out["labels"] = _label_counts(sim)
    if publisher is not None:
        out["unacked"] = publisher.unacked
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 130 if stats.interrupted else 0


def _label_counts(sim: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lb in sim.labels:
        counts[lb.kind] = counts.get(lb.kind, 0) + 1
    return dict(sorted(counts.items()))
