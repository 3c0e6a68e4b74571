"""``gridwatch config show``: the effective configuration, secrets masked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from gridwatch.config import load_settings


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="show or check the effective configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="print the effective configuration (secrets masked)")
    s.add_argument("--config", type=Path, default=None, help="TOML file (default ./gridwatch.toml)")
    s.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    print(orjson.dumps(settings.masked(), option=orjson.OPT_INDENT_2).decode())
    return 0
