"""``gridwatch query``: what engineers ask the store, from the command line.

    gridwatch query device sw000123 --since 1h          # raw readings
    gridwatch query device sw000123 --since 7d          # 1-minute rollups (auto)
    gridwatch query last sewage --since 10m --device sw000123 --device sw000124
    gridwatch query deadletters --reason out_of_range --since 1d
    gridwatch query grids --since 1h

Times: ``--since``/``--until`` take a duration back from now (``90s``, ``15m``, ``2h``,
``7d``, ``1w``) or an ISO-8601 time (``2026-11-26T08:00:00Z``; no zone means UTC).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time
from typing import Any

import orjson

from gridwatch.cli.db import add_db_option, open_from_args
from gridwatch.domain import DeviceKind
from gridwatch.errors import ConfigError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms of ``text``: a duration back from ``now_ms`` or an ISO-8601 time.

    >>> parse_time("2h", 10_000_000)
    2800000
    >>> parse_time("1970-01-01T00:00:01Z", 0)
    1000
    """
    m = _DURATION.match(text.strip())
    if m:
        return now_ms - round(float(m.group(1)) * _UNIT_S[m.group(2)] * 1000)
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"time {text!r}: use a duration like 15m, 2h, 7d or an ISO time like "
            "2026-11-26T08:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return round(when.timestamp() * 1000)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")


def register(sub: Any) -> None:
    p = sub.add_parser("query", help="read readings, dead letters and counts from the store")
    qsub = p.add_subparsers(dest="query_command", metavar="WHAT", required=True)

    d = qsub.add_parser("device", help="one device's readings over a time range")
    add_db_option(d)
    d.add_argument("device_id")
    d.add_argument("--since", default="1h", help="start (default 1h ago)")
    d.add_argument("--until", default=None, help="end (default now)")
    d.add_argument(
        "--resolution",
        choices=("auto", "raw", "1m"),
        default="auto",
        help="raw rows, 1-minute rollups, or auto (rollups beyond 6 h)",
    )
    d.add_argument("--limit", type=int, default=10_000)
    d.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    d.set_defaults(func=_device)

    last = qsub.add_parser("last", help="the newest reading of each device of a kind")
    add_db_option(last)
    last.add_argument("kind", choices=[k.value for k in DeviceKind])
    last.add_argument("--device", action="append", default=None, help="repeatable")
    last.add_argument("--since", default="1d", help="look back this far (default 1d)")
    last.add_argument("--limit", type=int, default=50, help="rows to print")
    last.add_argument("--json", action="store_true")
    last.set_defaults(func=_last)

    dl = qsub.add_parser("deadletters", help="refused input, newest first")
    add_db_option(dl)
    dl.add_argument("--reason", default=None)
    dl.add_argument("--since", default=None, help="only those received since")
    dl.add_argument("--limit", type=int, default=50)
    dl.add_argument("--counts", action="store_true", help="counts per reason instead")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=_deadletters)

    g = qsub.add_parser("grids", help="devices and readings per grid")
    add_db_option(g)
    g.add_argument("--since", default="1h", help="count readings since (default 1h)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=_grids)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    if as_json:
        for r in rows:
            print(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"{title}: nothing found")
        return
    table = Table(*rows[0].keys(), title=title)
    for r in rows:
        table.add_row(
            *(
                "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
                for v in r.values()
            )
        )
    console.print(table)


def _with_iso(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for r in rows:
        r["time"] = _iso(r["ts_ms"])
    return [{"time": r.pop("time"), **r} for r in rows]


def _device(args: argparse.Namespace) -> int:
    from storage.queries import series

    now = time.time_ns() // 1_000_000
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now + 1
    with open_from_args(args) as storage:
        res = series(
            storage, args.device_id, since, until, resolution=args.resolution, limit=args.limit
        )
    rows = _with_iso(res.rows())
    for r in rows:
        r.pop("device_id")
    _print_rows(
        rows, args.json, f"{args.device_id} ({res.kind}, {res.resolution}), {len(rows)} rows"
    )
    return 0


def _last(args: argparse.Namespace) -> int:
    from storage.queries import last_readings

    now = time.time_ns() // 1_000_000
    with open_from_args(args) as storage:
        res = last_readings(
            storage,
            DeviceKind(args.kind),
            device_ids=args.device,
            since_ms=parse_time(args.since, now),
        )
    rows = _with_iso(res.rows())
    _print_rows(rows[: args.limit], args.json, f"last {args.kind} readings ({len(rows)} devices)")
    return 0


def _deadletters(args: argparse.Namespace) -> int:
    from storage.deadletters import dead_letter_counts, dead_letters

    now = time.time_ns() // 1_000_000
    since = parse_time(args.since, now) if args.since else None
    with open_from_args(args) as storage:
        if args.counts:
            counts = dead_letter_counts(storage, since_ms=since)
            rows = [{"reason": r, "records": c, "rows": n} for r, (c, n) in counts.items()]
            _print_rows(rows, args.json, "dead letters by reason")
            return 0
        letters = dead_letters(storage, reason=args.reason, since_ms=since, limit=args.limit)
    rows = [
        {
            "received": _iso(d.received_ms),
            "reason": d.reason,
            "topic": d.topic,
            "rows": d.rows,
            "detail": d.detail,
            "excerpt": d.excerpt_text()[:120],
        }
        for d in letters
    ]
    _print_rows(rows, args.json, f"dead letters ({len(rows)})")
    return 0


def _grids(args: argparse.Namespace) -> int:
    from storage.queries import grid_counts

    now = time.time_ns() // 1_000_000
    with open_from_args(args) as storage:
        counts = grid_counts(storage, since_ms=parse_time(args.since, now))
    rows = [
        {
            "grid": c.grid,
            "devices": c.devices,
            **{k.value: c.devices_by_kind.get(k.value, 0) for k in DeviceKind},
            "readings": c.readings,
            "reporting": c.reporting_devices,
        }
        for c in counts
    ]
    _print_rows(rows, args.json, f"grids since {args.since}")
    return 0
