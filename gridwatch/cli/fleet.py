"""``gridwatch fleet``: build and inspect a district registry file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from gridwatch.domain import DeviceKind
from gridwatch.registry import Registry


def register(sub: Any) -> None:
    p = sub.add_parser("fleet", help="build or inspect a device registry file")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    b = fsub.add_parser("build", help="write a simulated district registry (CSV)")
    b.add_argument("out", type=Path, help="output .csv path")
    b.add_argument("--devices", type=int, default=480_000, help="fleet size (default 480000)")
    b.add_argument("--seed", type=int, default=20261126, help="random seed")
    b.set_defaults(func=_build)
    s = fsub.add_parser("show", help="summarise a registry file")
    s.add_argument("path", type=Path)
    s.set_defaults(func=_show)


def _build(args: argparse.Namespace) -> int:
    from sim.fleet import FleetSpec, build_fleet

    reg = build_fleet(FleetSpec(n_devices=args.devices, seed=args.seed))
    reg.to_csv(args.out)
    print(f"wrote {reg!r} to {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    reg = Registry.load(args.path)
    print(repr(reg))
    print(
        f"streets={reg.street_ids.size} communities={reg.community_ids.size} "
        f"grids={reg.grid_ids.size} buildings={reg.building_ids.size}"
    )
    for k in DeviceKind:
        sel = reg.kind == k.code
        print(
            f"{k.value:9s} devices={int(sel.sum()):7d} "
            f"median interval_s={float(np.median(reg.interval_s[sel])) if sel.any() else 0:g}"
        )
    return 0
