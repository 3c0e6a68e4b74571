"""``gridwatch status``: the running pipeline's state, from its status file or endpoint.

Reads ``<data_dir>/status.json`` (rewritten every second by ``gridwatch run``), or
``--url http://host:port`` (the pipeline's metrics endpoint, ``/status``) for a pipeline
on another machine. Exit code 0 while the pipeline runs, 3 when it is stopped or its
status is stale (a crashed or hung process), 4 when there is no status at all; so
``gridwatch status -q`` works as a health check in scripts.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from gridwatch.config import load_settings
from gridwatch.errors import ConfigError

NOT_RUNNING = 3
NO_STATUS = 4


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show the running pipeline's state (readings/s, alerts, queues, workers)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML settings file (for data_dir)")
    p.add_argument("--data-dir", type=Path, help="the pipeline's data directory (default data)")
    p.add_argument("--url", help="read http://host:port/status instead of the local file")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing; exit code only")
    p.set_defaults(func=_status)


def _fetch(url: str) -> dict[str, Any]:
    target = url.rstrip("/")
    if not target.endswith("/status"):
        target += "/status"
    if not target.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r}: must start with http:// or https://")
    try:
        with urllib.request.urlopen(target, timeout=5) as resp:
            data: dict[str, Any] = orjson.loads(resp.read())
    except OSError as exc:
        raise ConfigError(f"cannot read {target}: {exc}") from exc
    data["age_s"] = round(time.time() - data.get("updated_ms", 0) / 1000, 1)
    data["fresh"] = data.get("state") == "running"
    return data


def _status(args: argparse.Namespace) -> int:
    from gridwatch.pipeline.status import read_status, status_path

    if args.url:
        data: dict[str, Any] | None = _fetch(args.url)
        where = args.url
    else:
        data_dir = args.data_dir or load_settings(args.config).data_dir
        path = status_path(Path(data_dir))
        data = read_status(path)
        where = str(path)
    if data is None:
        if not args.quiet:
            print(f"no pipeline status at {where}: gridwatch run has not run here", file=sys.stderr)
        return NO_STATUS
    running = bool(data.get("fresh"))
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not args.quiet:
        _print(data, running)
    return 0 if running else NOT_RUNNING


def _print(data: dict[str, Any], running: bool) -> None:
    from rich.console import Console

    from gridwatch.pipeline.summary import render

    console = Console()
    if not running:
        state = data.get("state")
        why = "stopped" if state in ("stopped", "failed") else "not updating (crashed or hung?)"
        console.print(
            f"[bold red]not running[/]: last status {data.get('age_s')} s ago, {why} "
            f"(pid {data.get('pid')})"
        )
    console.print(render(data))
