"""The ``gridwatch`` command: one sub-command group per module in this package.

Each module here exposes ``register(subparsers)``, which adds its sub-commands and sets
``func`` on them; adding a command never means editing this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from gridwatch.errors import GridwatchError
from gridwatch.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridwatch",
        description="IoT ingestion and graded smart alerts for a district's community grids.",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    parser.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="log line format"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except GridwatchError as exc:
        print(f"gridwatch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gridwatch: interrupted", file=sys.stderr)
        return 130
